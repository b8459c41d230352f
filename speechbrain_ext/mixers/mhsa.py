"""Relative-position multi-head self-attention: the paper's quadratic baseline.

SpeechBrain's ``RelPosMHAXL`` (Transformer-XL attention, Dai et al. 2019,
https://arxiv.org/abs/1901.02860) behind the mixer interface: positions are computed
when the caller gives none, and attention weights are not returned.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
from speechbrain.nnet.attention import RelPosMHAXL

from speechbrain_ext.mixers._common import LEFT_CONTEXTS, SequenceMixer, check_heads, relative_sinusoids


class RelPosMHSA(RelPosMHAXL, SequenceMixer):
    """Multi-head self-attention with Transformer-XL relative positions.

    Same parameters and outputs as SpeechBrain's ``RelPosMHAXL`` (its state_dict loads
    as is); time and memory grow with T².

    Arguments
    ---------
    d_model : int
        Width of the input and output, E.
    nhead : int
        Number of attention heads; must divide ``d_model``.
    dropout : float
        Dropout on the attention weights (the paper's code: 0.1).

    In chunks (``dynchunktrain_config=``, SpeechBrain's ``DynChunkTrainConfig``) it attends through
    SpeechBrain's chunk mask (``make_transformer_src_mask``); :meth:`forward_streaming` keeps the inputs of
    the allowed earlier chunks, as SpeechBrain's ``ConformerEncoderLayer.forward_streaming`` does: its cost per
    chunk grows with the left context, without bound when the left context is unlimited.

    Example
    -------
    >>> x = torch.rand(2, 50, 64)
    >>> out, attn = RelPosMHSA(64, nhead=4)(x, x, x)
    >>> out.shape, attn
    (torch.Size([2, 50, 64]), None)
    """

    mixer_name = "mhsa"
    pos_embs_kind = "relative"
    encoder_input_positions = None
    honours_attn_mask = True  # SpeechBrain's RelPosMHAXL applies any attn_mask, causal ones included
    dynchunk_left_contexts = LEFT_CONTEXTS

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.1) -> None:
        check_heads("mhsa", d_model, nhead)
        super().__init__(embed_dim=d_model, num_heads=nhead, dropout=dropout)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        pos_embs: Optional[torch.Tensor] = None,
        dynchunktrain_config=None,
    ) -> tuple[torch.Tensor, None]:
        """Self-attention over ``query`` (B, T, E); returns ((B, T, E), None).

        ``pos_embs`` is (1, 2T - 1, E) from ``relative_sinusoids``; computed here when None.
        ``dynchunktrain_config`` attends in chunks (SpeechBrain's chunk mask).
        """
        if dynchunktrain_config is not None:
            self.check_chunks(dynchunktrain_config, attn_mask)
            attn_mask = make_transformer_src_mask(query, dynchunktrain_config=dynchunktrain_config)
        key_padding_mask, _ = self.check_call(query, attn_mask, key_padding_mask)
        if pos_embs is None:
            pos_embs = relative_sinusoids(query.shape[1], self.embed_dim, query.device, query.dtype)
        kwargs = {"pos_embs": pos_embs, "key_padding_mask": key_padding_mask, "attn_mask": attn_mask,
                  "return_attn_weights": False}
        if query.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(query.device.type):
            # A module cast with .to(bfloat16): RelPosMHAXL takes its softmax in float32 and multiplies it with
            # the values as they are, which only autocast reconciles.
            with torch.autocast(query.device.type, dtype=query.dtype):
                return super().forward(query, key, value, **kwargs).to(query.dtype), None
        return super().forward(query, key, value, **kwargs), None

    def make_streaming_context(self, dynchunktrain_config) -> "MHSAStreamingContext":
        """A blank context for :meth:`forward_streaming` in chunks of ``dynchunktrain_config``."""
        self.check_chunks(dynchunktrain_config, None)
        return MHSAStreamingContext(dynchunktrain_config.left_context_size_frames())

    def forward_streaming(self, x: torch.Tensor, context: "MHSAStreamingContext") -> torch.Tensor:
        """Attends one chunk (B, K, E) over itself and the earlier inputs kept in ``context`` (updated)."""
        window = x if context.left_context is None else torch.cat([context.left_context, x], dim=1)
        out, _ = self.forward(window, window, window)
        keep = context.left_context_size
        if keep is None:
            context.left_context = window
        elif keep > 0:
            context.left_context = window[:, max(window.shape[1] - keep, 0):]
        return out[:, window.shape[1] - x.shape[1]:]


@dataclass
class MHSAStreamingContext:
    """What :meth:`RelPosMHSA.forward_streaming` carries from chunk to chunk: the inputs of the last
    ``left_context_size`` frames (every earlier frame when None), SpeechBrain's ``mha_left_context``."""

    left_context_size: Optional[int]
    left_context: Optional[torch.Tensor] = None
