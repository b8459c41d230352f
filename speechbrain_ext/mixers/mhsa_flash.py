"""Multi-head self-attention through fused kernels: quadratic time, memory linear in length.

The strongest quadratic-time baseline for the linear mixers. Rotary positions (RoPE, Su et al.
2021, https://arxiv.org/abs/2104.09864) are relative, computed for any length and applied to
queries and keys before ``torch.nn.functional.scaled_dot_product_attention``, which picks
FlashAttention or the memory-efficient kernel on GPUs and a blocked kernel on CPUs: no
(T, T) score matrix is stored.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from speechbrain.nnet.attention import RoPEMHA, _rope_rotate

from speechbrain_ext.mixers._common import SequenceMixer, check_heads


class FlashMHSA(RoPEMHA, SequenceMixer):
    """RoPE multi-head self-attention that never builds a (T, T) tensor, padded batches included.

    The parameters are those of SpeechBrain's ``RoPEMHA`` (its state_dict loads as is) and the
    outputs on valid frames are the same, its 1/sqrt(d_model) score scale included. SpeechBrain's
    class turns a padding mask into a (B, H, T, T) boolean mask, which both costs quadratic memory
    and keeps SDPA off the FlashAttention kernel; here a padded batch is attended in groups of
    equal length, each over its valid frames only and without a mask (padded frames attend to nothing:
    their output is the output projection's bias).

    Arguments
    ---------
    d_model : int
        Width of the input and output, E.
    nhead : int
        Number of heads; ``d_model / nhead`` must be even (rotations act on pairs of channels).
    dropout : float
        Dropout on the attention weights, in training.
    value_bias : bool
        Add a learnt bias to the values (SpeechBrain's ``vbias``).

    Example
    -------
    >>> x = torch.rand(2, 50, 64)
    >>> out, attn = FlashMHSA(64, nhead=4)(x, x, x)
    >>> out.shape, attn
    (torch.Size([2, 50, 64]), None)
    """

    mixer_name = "mhsa_flash"
    pos_embs_kind = None  # rotations are applied inside, from the frame index
    encoder_input_positions = None

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, value_bias: bool = False) -> None:
        check_heads("mhsa_flash", d_model, nhead)
        if (d_model // nhead) % 2 != 0:
            raise ValueError(
                f"mhsa_flash: head width d_model / nhead = {d_model} / {nhead} = {d_model // nhead} must be even "
                "for rotary positions"
            )
        super().__init__(embed_dim=d_model, num_heads=nhead, dropout=dropout, vbias=value_bias)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        pos_embs: Optional[torch.Tensor] = None,
        return_attn_weights: bool = True,
        dynchunktrain_config=None,
    ) -> tuple[torch.Tensor, None]:
        if dynchunktrain_config is not None:  # no chunked form here: a chunk mask would keep SDPA off its kernels
            self.check_chunks(dynchunktrain_config, attn_mask)
        padding, _ = self.check_call(query, attn_mask, key_padding_mask)
        batch, length, _ = query.shape
        # Self-attention over ``query``, like every mixer: (B, T, H, 3 * head_dim) -> q, k, v.
        q, k, v = F.linear(query, self.in_proj_weight).view(batch, length, self.num_heads, -1).chunk(3, dim=-1)
        if self.vbias is not None:
            v = v + self.value_bias_weight.view(1, 1, self.num_heads, self.vhead_dim)
        q, k, v = (t.transpose(1, 2) for t in (_rope_rotate(q), _rope_rotate(k), v))  # (B, H, T, head_dim)

        if padding is None or not padding.any():
            heads = self._attend(q, k, v)
        else:
            lengths = (~padding).sum(dim=1)
            heads = q.new_zeros(batch, self.num_heads, length, self.vhead_dim)
            for frames in lengths.unique().tolist():
                if frames == 0:
                    continue
                rows = (lengths == frames).nonzero().squeeze(1)
                heads[rows, :, :frames] = self._attend(*(t[rows, :, :frames] for t in (q, k, v)))
        out = self.out_proj(heads.transpose(1, 2).reshape(batch, length, -1))
        return out, None

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
