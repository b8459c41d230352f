"""speechbrain_ext: BEST-RQ pretraining with linear-complexity sequence mixers for SpeechBrain."""

__version__ = "0.1.0"


def replace_attention(model, mixer, nhead=None, mixer_kwargs=None, **kwargs):
    """See :func:`speechbrain_ext.replace.replace_attention` (imported on first use)."""
    from speechbrain_ext.replace import replace_attention as replace

    return replace(model, mixer, nhead=nhead, mixer_kwargs=mixer_kwargs, **kwargs)


def replace_encoder(model, encoder):
    """See :func:`speechbrain_ext.replace.replace_encoder` (imported on first use)."""
    from speechbrain_ext.replace import replace_encoder as replace

    return replace(model, encoder)
