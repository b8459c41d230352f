"""Helpers shared by the mixers: argument checks, padding masks and sinusoidal positions.

Positions are computed on the fly for any length: no table with a maximum length.
"""

import math
from typing import Optional, Union

import torch
from speechbrain.nnet.activations import Swish
from torch import nn

# Activations by name, so that settings saved as JSON with an encoder can name them.
# "swish" is SpeechBrain's Swish (x * sigmoid(x)), the Conformer activation of the paper's code.
ACTIVATIONS: dict[str, type] = {"gelu": nn.GELU, "swish": Swish, "silu": nn.SiLU, "relu": nn.ReLU}


def resolve_activation(activation: Union[str, type]) -> type:
    """The activation class for a name of ``ACTIVATIONS``, or the class itself when one is given."""
    if isinstance(activation, type):
        return activation
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(
            f"unknown activation {activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def check_heads(mixer: str, d_model: int, nhead: int, what: str = "d_model") -> None:
    """Raises a ValueError naming both numbers when ``d_model`` cannot be split into ``nhead`` heads."""
    if nhead < 1:
        raise ValueError(f"{mixer}: nhead must be >= 1, got {nhead}")
    if d_model % nhead != 0:
        raise ValueError(
            f"{mixer}: {what}={d_model} is not divisible by nhead={nhead}; "
            f"choose a width that is a multiple of {nhead}"
        )


def check_sizes(owner: str, **sizes) -> None:
    """Raises a ValueError naming the first size that is not a positive integer (bools are not sizes).

    Example
    -------
    >>> check_sizes("mamba", d_state=0)
    Traceback (most recent call last):
    ...
    ValueError: mamba: d_state must be a positive integer, got 0
    """
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


def check_padding_mask(
    key_padding_mask: Optional[torch.Tensor], x: torch.Tensor
) -> Optional[torch.Tensor]:
    """Validates a SpeechBrain key padding mask against ``x`` and returns it as bool.

    Arguments
    ---------
    key_padding_mask : torch.Tensor or None
        (B, T), True (or non-zero) at padded frames.
    x : torch.Tensor
        (B, T, D) input the mask describes.

    Returns
    -------
    The mask as a bool tensor on ``x.device``, or None.
    """
    if key_padding_mask is None:
        return None
    expected = (x.shape[0], x.shape[1])
    if key_padding_mask.dim() != 2 or tuple(key_padding_mask.shape) != expected:
        raise ValueError(
            f"key_padding_mask must have shape (batch, time) = {expected} to match the "
            f"input {tuple(x.shape)}, got {tuple(key_padding_mask.shape)}"
        )
    return key_padding_mask.to(device=x.device, dtype=torch.bool)


def valid_frames(key_padding_mask: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    """(B, T, 1) multiplier in ``x.dtype``: 1 on valid frames, 0 on padding (None without a mask)."""
    if key_padding_mask is None:
        return None
    return (~key_padding_mask).unsqueeze(-1).to(x.dtype)


def _inverse_frequencies(dim: int, device: torch.device) -> torch.Tensor:
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal positions need an even width, got {dim}")
    return torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device)
        * -(math.log(10000.0) / dim)
    )


def absolute_sinusoids(
    length: int, dim: int, device: torch.device, dtype: torch.dtype = torch.float32, start: int = 0
) -> torch.Tensor:
    """Absolute sinusoidal positions (Vaswani et al. 2017), same values as
    SpeechBrain's ``PositionalEncoding`` but for any length; ``start`` is the first position
    (a streamed chunk's offset in its stream).

    Returns
    -------
    torch.Tensor
        (1, length, dim): ``sin`` on even channels, ``cos`` on odd ones.
    """
    positions = torch.arange(start, start + length, dtype=torch.float32, device=device).unsqueeze(-1)
    angles = positions * _inverse_frequencies(dim, device)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).unsqueeze(0).to(dtype)


def relative_sinusoids(
    length: int, dim: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Relative sinusoidal positions for Transformer-XL attention, same values as
    SpeechBrain's ``RelPosEncXL``: rows for offsets ``length - 1`` down to ``-(length - 1)``.

    Like ``RelPosEncXL``, the embedding of offset ``-k`` equals that of ``+k`` (it does not
    negate the sine for future offsets); kept so that SpeechBrain checkpoints behave the same.

    Returns
    -------
    torch.Tensor
        (1, 2 * length - 1, dim)
    """
    offsets = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device).abs()
    angles = offsets.unsqueeze(-1) * _inverse_frequencies(dim, device)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).unsqueeze(0).to(dtype)


def attention_mask_kind(
    mixer: str, attn_mask: Optional[torch.Tensor], length: int, supported: tuple[str, ...] = ()
) -> Optional[str]:
    """What an ``attn_mask`` asks of a mixer: None (it masks nothing) or "causal"; raises otherwise.

    SpeechBrain passes (T, T) masks (or (N, T, T) copies), bool with True where a query may not
    see a key, or float with -inf there (``get_lookahead_mask``). A mixer can honour only the
    kinds in ``supported``; any other mask (dynamic-chunk, lookahead, soft biases) raises a
    ValueError naming the mixer and what it supports, instead of being ignored.

    Example
    -------
    >>> from speechbrain.lobes.models.transformer.Transformer import get_lookahead_mask
    >>> causal = get_lookahead_mask(torch.zeros(1, 4))
    >>> attention_mask_kind("summarymixing", causal, 4, supported=("causal",))
    'causal'
    >>> attention_mask_kind("hypermixing", causal, 4)
    Traceback (most recent call last):
    ...
    ValueError: hypermixing cannot honour this attn_mask (a causal mask); it supports no attn_mask (full context only)
    """
    if attn_mask is None:
        return None
    if attn_mask.shape[-2:] != (length, length):
        raise ValueError(
            f"{mixer}: attn_mask must end in (T, T) = ({length}, {length}), got {tuple(attn_mask.shape)}"
        )
    if attn_mask.dtype == torch.bool:
        blocked = attn_mask
    else:
        if not bool(((attn_mask == 0) | torch.isneginf(attn_mask)).all()):
            what = "an additive mask with finite non-zero values"
            blocked = None
        else:
            blocked = torch.isneginf(attn_mask)
    kind = None
    if blocked is not None:
        future = torch.ones(length, length, dtype=torch.bool, device=blocked.device).triu(1)
        if not bool(blocked.any()):
            return None
        if bool((blocked == future).all()):
            kind, what = "causal", "a causal mask"
        else:
            what = "a mask that is neither empty nor causal (e.g. dynamic chunks or lookahead)"
    if kind is not None and kind in supported:
        return kind
    can = ", ".join(supported) + " attn_mask" if supported else "no attn_mask (full context only)"
    raise ValueError(f"{mixer} cannot honour this attn_mask ({what}); it supports {can}")


def causal_mean(x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Running mean over time of x (B, T, S) over the valid frames up to each frame (padding excluded)."""
    if valid is None:
        valid = torch.ones_like(x[..., :1])
    count = valid.cumsum(dim=1).clamp(min=1.0)
    return (x * valid).cumsum(dim=1) / count


class SequenceMixer:
    """What every mixer shares (a mixin beside ``nn.Module`` or a SpeechBrain attention class): the
    checks of SpeechBrain's attention call ``(query, key, value, attn_mask, key_padding_mask, pos_embs)``.

    A mixer sets ``mixer_name`` (used in errors), ``pos_embs_kind`` (the positions it reads),
    ``encoder_input_positions`` (the positions the paper's encoder adds to its input for this mixer:
    ``TransformerASR.encode`` adds a sinusoid for every attention type but RelPosMHAXL and
    hypermixing) and ``supported_masks`` (the ``attn_mask`` kinds it can honour: ``("causal",)`` or
    none); ``honours_attn_mask`` means it applies any mask itself (SpeechBrain's attention).
    ``dynchunk_left_contexts`` holds the left contexts of SpeechBrain's ``DynChunkTrainConfig`` it honours
    (of ``LEFT_CONTEXTS``: "limited", "unlimited"); a mixer that honours any takes
    ``dynchunktrain_config=`` in its call and streams with ``make_streaming_context`` and
    ``forward_streaming``.
    """

    mixer_name = "mixer"
    pos_embs_kind: Optional[str] = None
    encoder_input_positions: Optional[str] = None
    supported_masks: tuple[str, ...] = ()
    honours_attn_mask = False
    dynchunk_left_contexts: tuple[str, ...] = ()

    def chunks_of_call(self, config, attn_mask: Optional[torch.Tensor], length: int) -> tuple:
        """``(dynchunktrain_config, attn_mask)`` of one call: an ``attn_mask`` that is SpeechBrain's chunk mask
        (what ``TransformerASR.encode`` passes with a ``dynchunktrain_config``) becomes its configuration, so that
        a mixer in SpeechBrain's own Conformer runs in chunks as in ``MixerConformerEncoder``."""
        if config is None and attn_mask is not None and not self.honours_attn_mask:
            found = chunk_config_of_mask(attn_mask, length)
            if found is not None:
                return found, None
        return config, attn_mask

    def check_chunks(self, config, attn_mask: Optional[torch.Tensor]) -> None:
        """Raises a ValueError naming the mixer for a ``DynChunkTrainConfig`` it cannot honour, or one given
        beside an ``attn_mask`` or to a causal instance (chunks and causality are two streaming forms)."""
        check_chunk_config(self.mixer_name, config, self.dynchunk_left_contexts)
        if attn_mask is not None:
            raise ValueError(f"{self.mixer_name}: give either an attn_mask or a dynchunktrain_config, not both")
        if getattr(self, "causal", False):
            raise ValueError(f"{self.mixer_name}: causal=True reads frames 0..t only; build it with causal=False "
                             "to run in chunks")

    def check_call(
        self, query: torch.Tensor, attn_mask: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor]
    ) -> tuple[Optional[torch.Tensor], bool]:
        """Validates one call: returns the padding mask as bool (or None) and whether ``attn_mask`` is
        causal; raises a ValueError naming the mixer for a mask it cannot honour or a badly shaped one."""
        padding = check_padding_mask(key_padding_mask, query)
        if self.honours_attn_mask:
            return padding, False
        kind = attention_mask_kind(self.mixer_name, attn_mask, query.shape[1], supported=self.supported_masks)
        return padding, kind == "causal"


# Left contexts of SpeechBrain's DynChunkTrainConfig a mixer may honour: a number of chunks, or all the past (None).
LEFT_CONTEXTS = ("limited", "unlimited")


def describe_chunks(config) -> str:
    """``DynChunkTrainConfig(chunk_size=8, left_context_size=None)`` as "chunks of 8 frames, unlimited left context"."""
    left = ("unlimited left context" if config.left_context_size is None
            else f"a left context of {config.left_context_size} chunks")
    return f"chunks of {config.chunk_size} frames, {left}"


def check_chunk_config(owner: str, config, supported: tuple[str, ...]) -> None:
    """Raises a ValueError naming ``owner`` when it cannot honour a SpeechBrain ``DynChunkTrainConfig``.

    ``supported`` holds the left contexts it can honour (of ``LEFT_CONTEXTS``; empty: no chunked form).

    Example
    -------
    >>> from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
    >>> check_chunk_config("hypermixing", DynChunkTrainConfig(8, 2), ())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: hypermixing cannot run in chunks (...): it has no chunked form; chunked mixers: fastformer, mamba, ...
    """
    check_sizes(owner, chunk_size=config.chunk_size)
    left = config.left_context_size
    if left is not None and (isinstance(left, bool) or not isinstance(left, int) or left < 0):
        raise ValueError(f"{owner}: left_context_size must be None or an integer >= 0, got {left!r}")
    kind = "unlimited" if left is None else "limited"
    if kind in supported:
        return
    what = f"{owner} cannot run in chunks (dynchunktrain_config: {describe_chunks(config)})"
    if not supported:
        from speechbrain_ext.mixers import MIXERS  # the registry imports this module

        capable = sorted(name for name, cls in MIXERS.items() if getattr(cls, "dynchunk_left_contexts", ()))
        raise ValueError(f"{what}: it has no chunked form; chunked mixers: {', '.join(capable)}")
    raise ValueError(f"{what}: it honours only {' and '.join(supported)} left context "
                     "(left_context_size=None is unlimited)")


def chunk_config_of_mask(attn_mask: torch.Tensor, length: int):
    """The ``DynChunkTrainConfig`` whose chunk mask (SpeechBrain's ``make_transformer_src_mask``) ``attn_mask`` is,
    or None: for any other mask, and for the causal one (chunks of one frame, all the past), which the mixers
    honour as causal.

    Example
    -------
    >>> from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
    >>> from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
    >>> mask = make_transformer_src_mask(torch.zeros(1, 10, 1), dynchunktrain_config=DynChunkTrainConfig(3, 1))
    >>> chunk_config_of_mask(mask, 10)
    DynChunkTrainConfig(chunk_size=3, left_context_size=1)
    """
    from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
    from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

    if attn_mask.shape[-2:] != (length, length):
        return None
    if attn_mask.dtype == torch.bool:
        blocked = attn_mask
    elif bool(((attn_mask == 0) | torch.isneginf(attn_mask)).all()):
        blocked = torch.isneginf(attn_mask)
    else:
        return None
    blocked = blocked.reshape(-1, length, length)
    if not bool((blocked == blocked[0]).all()):
        return None
    blocked = blocked[0]
    future = blocked[0].nonzero()
    if len(future) == 0 or int(future[0]) == 0:
        return None
    chunk_size = int(future[0])  # frame 0 reads its chunk, frames 0 .. chunk_size - 1
    first_read = int((~blocked[-1]).nonzero()[0]) if bool((~blocked[-1]).any()) else 0
    left = None if first_read == 0 else (length - 1) // chunk_size - first_read // chunk_size
    if chunk_size == 1 and left is None:
        return None  # the causal mask
    config = DynChunkTrainConfig(chunk_size, left)
    expected = make_transformer_src_mask(attn_mask.new_empty(1, length, 1), dynchunktrain_config=config)
    return config if torch.equal(blocked, expected) else None


def chunk_sums(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Sums of x (B, T, ...) over consecutive chunks of ``chunk_size`` frames from frame 0 (the last one
    may be partial): (B, ceil(T / chunk_size), ...)."""
    pad = -x.shape[1] % chunk_size
    if pad:
        x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
    return x.unflatten(1, (-1, chunk_size)).sum(dim=2)


def spread_chunks(per_chunk: torch.Tensor, chunk_size: int, length: int) -> torch.Tensor:
    """Each chunk's value (B, C, ...) on each of its frames: (B, length, ...)."""
    return per_chunk.repeat_interleave(chunk_size, dim=1)[:, :length]


def window_sums(per_chunk: torch.Tensor, left_chunks: Optional[int]) -> torch.Tensor:
    """For every chunk c, the sum of ``per_chunk`` (B, C, ...) over chunks c - left_chunks .. c (0 .. c when
    None), in float64, so that differences of running sums lose nothing that matters."""
    total = per_chunk.double().cumsum(dim=1)
    shift = None if left_chunks is None else left_chunks + 1
    if shift is None or shift >= total.shape[1]:
        return total
    return torch.cat([total[:, :shift], total[:, shift:] - total[:, :-shift]], dim=1)
