"""Swap the self-attention of an existing SpeechBrain model for one of our mixers.

``replace_attention(model, "summarymixing")`` replaces the attention module of every encoder
layer of SpeechBrain's Conformer (``ConformerEncoderLayer.mha_layer``) and Transformer
(``TransformerEncoderLayer.self_att``) inside ``model`` (a ``TransformerASR``, an encoder, any
module holding them), and returns the model, so that a YAML can build and convert it at once::

    model: !apply:speechbrain_ext.replace.replace_attention
        model: !new:speechbrain.lobes.models.transformer.TransformerASR.TransformerASR
            ...
        mixer: summarymixing

Decoder layers are left alone (their cross-attention reads the encoder). Before swapping, the
model's positions are checked against what the mixer reads (``pos_embs_kind``) and its causality
against the mixer's: a causal model gets the mixer's causal form, and a mixer without one raises.
"""

from typing import Optional, Union

from speechbrain.lobes.models.transformer.Conformer import ConformerEncoderLayer
from speechbrain.lobes.models.transformer.Transformer import TransformerEncoderLayer
from torch import nn

from speechbrain_ext.mixers import build_mixer, causal_mixer_kwargs, resolve_mixer

# What SpeechBrain's TransformerASR feeds its encoder layers as pos_embs, per attention_type:
# RelPosMHAXL gets relative positions (1, 2T - 1, E); the others get none (absolute sinusoids,
# when positional_encoding="fixed_abs_sine", are added to the input instead).
FED_POSITIONS = {"RelPosMHAXL": "relative"}
ENCODER_LAYERS = {ConformerEncoderLayer: "mha_layer", TransformerEncoderLayer: "self_att"}


def _heads(attention: nn.Module) -> Optional[int]:
    """The head count of a SpeechBrain attention module (None where it has none)."""
    for owner in (attention, getattr(attention, "att", None)):
        if owner is not None:
            for name in ("num_heads", "nhead"):
                if isinstance(getattr(owner, name, None), int):
                    return getattr(owner, name)
    return None


def _width(layer: nn.Module) -> int:
    norm = layer.norm1
    norm = getattr(norm, "norm", norm)  # SpeechBrain's LayerNorm wraps torch's
    return int(norm.normalized_shape[0])


def _attention_type(model: nn.Module) -> Optional[str]:
    for module in model.modules():
        kind = getattr(module, "attention_type", None)
        if isinstance(kind, str):
            return kind
    return None


def _is_causal(model: nn.Module, layers: list[nn.Module]) -> bool:
    if any(getattr(module, "causal", False) is True for module in model.modules()
           if not isinstance(module, tuple(ENCODER_LAYERS)) and hasattr(module, "encoder")):
        return True
    return any(getattr(getattr(layer, "convolution_module", None), "causal", False) for layer in layers)


def replace_attention(
    model: nn.Module,
    mixer: Union[str, type],
    nhead: Optional[int] = None,
    mixer_kwargs: Optional[dict] = None,
    **kwargs,
) -> nn.Module:
    """Replaces the self-attention of every SpeechBrain Conformer/Transformer encoder layer in
    ``model`` with a new ``mixer`` (a name of ``speechbrain_ext.mixers.MIXERS`` or a class).

    Arguments
    ---------
    model : nn.Module
        A SpeechBrain model, e.g. ``TransformerASR`` or ``ConformerEncoder``; changed in place.
    mixer : str or type
        The mixer, built with each layer's width and the old attention's head count.
    nhead : int, optional
        Head count of the new mixers, when the old attention has none to copy.
    mixer_kwargs : dict, optional
        Extra arguments of the mixer as one dict (handy in a YAML), merged with ``**kwargs``.
    **kwargs
        Extra arguments of the mixer (e.g. the paper form of ``speechbrain_ext.sizes``).

    Returns
    -------
    The same model, for ``!apply:`` in a YAML.

    Raises
    ------
    ValueError
        No encoder layer found; the model feeds positions the mixer cannot read (``mhsa`` needs
        ``attention_type="RelPosMHAXL"``; ``hypermixing`` makes its own absolute positions and
        cannot take relative ones); the model is causal and the mixer has no causal form.

    Example
    -------
    >>> import torch
    >>> from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
    >>> asr = TransformerASR(tgt_vocab=10, input_size=20, d_model=32, nhead=4, num_encoder_layers=2,
    ...     num_decoder_layers=1, d_ffn=64, encoder_module="conformer", attention_type="RelPosMHAXL",
    ...     normalize_before=True, causal=False)
    >>> asr = replace_attention(asr, "summarymixing", local_out=32, summary_out=32)
    >>> type(asr.encoder.layers[0].mha_layer).__name__
    'SummaryMixing'
    >>> asr.encode(torch.rand(2, 15, 20), torch.ones(2)).shape
    torch.Size([2, 15, 32])
    """
    cls = resolve_mixer(mixer)
    mixer_kwargs = {**(mixer_kwargs or {}), **kwargs}
    targets = [(module, attr) for module in model.modules() for kind, attr in ENCODER_LAYERS.items()
               if isinstance(module, kind)]
    if not targets:
        raise ValueError(
            f"replace_attention: no SpeechBrain ConformerEncoderLayer or TransformerEncoderLayer in "
            f"{type(model).__name__}"
        )
    attention_type = _attention_type(model)
    fed = FED_POSITIONS.get(attention_type)
    wants = getattr(cls, "pos_embs_kind", None)
    if wants == "relative" and fed != "relative":
        raise ValueError(
            f"replace_attention: {cls.__name__} reads relative positions, but this model "
            f"(attention_type={attention_type!r}) feeds none; build the model with attention_type='RelPosMHAXL'"
        )
    if wants is not None and fed is not None and wants != fed:
        raise ValueError(
            f"replace_attention: {cls.__name__} reads {wants} positions, but this model "
            f"(attention_type={attention_type!r}) feeds {fed} ones; build the model with another "
            f"attention_type (e.g. 'regularMHA') or choose a mixer that reads {fed} or no positions"
        )
    if _is_causal(model, [layer for layer, _ in targets]):
        try:
            mixer_kwargs.update(causal_mixer_kwargs(cls))
        except ValueError as error:
            raise ValueError(f"replace_attention: the model is causal, and {error}") from None
    for layer, attr in targets:
        old = getattr(layer, attr)
        heads = nhead or _heads(old)
        if heads is None:
            raise ValueError(f"replace_attention: cannot read the head count of {type(old).__name__}; pass nhead=")
        new = build_mixer(cls, _width(layer), heads, **mixer_kwargs)
        parameter = next(old.parameters(), None)
        if parameter is not None:
            new = new.to(device=parameter.device, dtype=parameter.dtype)
        setattr(layer, attr, new)
    return model


def replace_encoder(model: nn.Module, encoder: nn.Module) -> nn.Module:
    """Puts ``encoder`` (e.g. a :class:`~speechbrain_ext.models.encoder.MixerConformerEncoder`) in place of
    ``model.encoder`` (SpeechBrain's ``TransformerASR``), checking width and causality; returns ``model``.

    ``TransformerASR.encode`` calls its encoder as SpeechBrain's ``ConformerEncoder``
    (``src, src_mask, src_key_padding_mask, pos_embs, dynchunktrain_config``), which
    ``MixerConformerEncoder`` accepts; a causal model (``causal=True``) needs a causal encoder.
    """
    old = getattr(model, "encoder", None)
    if not isinstance(old, nn.Module):
        raise ValueError(f"replace_encoder: {type(model).__name__} has no encoder module to replace")
    def width(enc: nn.Module) -> Optional[int]:
        layers = getattr(enc, "layers", None)
        return _width(layers[0]) if layers and hasattr(layers[0], "norm1") else None

    d_model, new_width = width(old), width(encoder)
    if d_model and new_width and d_model != new_width:
        raise ValueError(f"replace_encoder: the model's d_model is {d_model}, the encoder's {new_width}")
    if getattr(model, "causal", False) and not getattr(encoder, "causal", False):
        raise ValueError("replace_encoder: the model is causal (causal=True): build the encoder with causal=True")
    wants = getattr(encoder, "pos_embs_kind", None)
    fed = FED_POSITIONS.get(getattr(model, "attention_type", None))
    if wants is not None and fed is not None and wants != fed:
        raise ValueError(
            f"replace_encoder: the encoder's mixer reads {wants} positions, the model feeds {fed} ones "
            f"(attention_type={model.attention_type!r})"
        )
    model.encoder = encoder
    return model
