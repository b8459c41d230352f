"""Sequence mixers: drop-in replacements for SpeechBrain's self-attention layers.

Every mixer is called like SpeechBrain's attention,
``out, attn = mixer(query, key, value, attn_mask=None, key_padding_mask=None, pos_embs=None)``,
mixes the frames of ``query`` (B, T, E), returns ``(out, None)`` and declares the positional
signal it reads in ``pos_embs_kind`` ("relative", "absolute" or None).
"""

import inspect
from typing import Union

from torch import nn

from speechbrain_ext.mixers import fastformer, hypermixing, mamba, mhsa, mhsa_flash, summary_mixing

# Each class has one import path, its module's (e.g. ``speechbrain_ext.mixers.fastformer.Fastformer``).
MIXERS: dict[str, type] = {
    "mhsa": mhsa.RelPosMHSA,
    "mhsa_flash": mhsa_flash.FlashMHSA,
    "hypermixing": hypermixing.HyperMixing,
    "fastformer": fastformer.Fastformer,
    "summarymixing": summary_mixing.SummaryMixing,
    "mamba": mamba.BidirectionalMamba,
}


def resolve_mixer(mixer: Union[str, type]) -> type:
    """The mixer class for a registered name, or the class itself when one is given."""
    if isinstance(mixer, type):
        return mixer
    try:
        return MIXERS[mixer]
    except KeyError:
        raise ValueError(
            f"unknown mixer {mixer!r}; valid mixers: {', '.join(sorted(MIXERS))}"
        ) from None


def causal_mixer_kwargs(mixer: Union[str, type]) -> dict:
    """The keyword arguments that make a mixer causal, or a ValueError naming the mixers that can be.

    A mixer with a ``causal`` option gets ``{"causal": True}``; one that honours SpeechBrain's causal
    ``attn_mask`` by itself (``honours_attn_mask``, e.g. ``mhsa``) needs nothing; the others have no
    causal form.

    Example
    -------
    >>> causal_mixer_kwargs("fastformer")
    {'causal': True}
    >>> causal_mixer_kwargs("hypermixing")
    Traceback (most recent call last):
    ...
    ValueError: HyperMixing has no causal form; causal mixers: fastformer, mamba, mhsa, summarymixing
    """
    cls = resolve_mixer(mixer)
    if "causal" in inspect.signature(cls.__init__).parameters:
        return {"causal": True}
    if getattr(cls, "honours_attn_mask", False):
        return {}
    capable = sorted(
        name for name, other in MIXERS.items()
        if "causal" in inspect.signature(other.__init__).parameters or getattr(other, "honours_attn_mask", False)
    )
    raise ValueError(f"{cls.__name__} has no causal form; causal mixers: {', '.join(capable)}")


def build_mixer(mixer: Union[str, type], d_model: int, nhead: int, **kwargs) -> nn.Module:
    """Builds a mixer by registered name (or class) for width ``d_model`` and ``nhead`` heads.

    Example
    -------
    >>> import torch
    >>> layer = build_mixer("fastformer", d_model=64, nhead=4)
    >>> x = torch.rand(2, 10, 64)
    >>> layer(x, x, x)[0].shape
    torch.Size([2, 10, 64])
    """
    return resolve_mixer(mixer)(d_model=d_model, nhead=nhead, **kwargs)


__all__ = ["MIXERS", "build_mixer", "causal_mixer_kwargs", "resolve_mixer"]
