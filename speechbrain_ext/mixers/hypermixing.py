"""Multi-head HyperMixing (HyperMixer, Mai et al. 2023, https://arxiv.org/abs/2203.03691;
HyperConformer, Mai et al. 2023, https://arxiv.org/abs/2305.18281).

A hypernetwork turns every frame into a column of the weights of a token-mixing MLP, so
mixing costs O(T) time and memory. Same parameters and outputs as SpeechBrain's
``speechbrain.nnet.hypermixing.HyperMixing``, without its (B, T, T) tensor of dummy
attention weights and without its 3000-frame limit on positions.
"""

from typing import Optional

import torch
from speechbrain.nnet.hypermixing import HyperNetwork
from torch import nn

from speechbrain_ext.mixers._common import (
    SequenceMixer,
    absolute_sinusoids,
    check_heads,
    check_sizes,
    valid_frames,
)


class HyperMixing(nn.Module, SequenceMixer):
    """Multi-head HyperMixing token mixer.

    For each head h with frames X_h (T, E/H), the hypernetwork makes W1, W2 (T, K) from the
    frames plus absolute positions, and the output is ``LayerNorm(W2 GELU(W1ᵀ X_h))``.

    Arguments
    ---------
    d_model : int
        Width of the input and output, E.
    nhead : int
        Number of parallel token-mixing MLPs; must divide ``d_model`` and ``hypernet_size``.
    hypernet_size : int
        Hidden width of the token-mixing MLP over all heads (SpeechBrain passes d_ffn).
    tied : bool
        Use the same generated matrix for both layers of the token-mixing MLP.
    fix_tm_hidden_size : bool
        Give every head ``hypernet_size`` hidden units instead of ``hypernet_size / nhead``.

    Example
    -------
    >>> x = torch.rand(2, 50, 64)
    >>> out, attn = HyperMixing(64, nhead=4, hypernet_size=128)(x, x, x)
    >>> out.shape, attn
    (torch.Size([2, 50, 64]), None)
    """

    mixer_name = "hypermixing"
    pos_embs_kind = "absolute"
    encoder_input_positions = None

    def __init__(
        self,
        d_model: int,
        nhead: int,
        hypernet_size: int = 2048,
        tied: bool = False,
        fix_tm_hidden_size: bool = False,
    ) -> None:
        super().__init__()
        check_sizes("hypermixing", d_model=d_model, hypernet_size=hypernet_size)
        check_heads("hypermixing", d_model, nhead)
        check_heads("hypermixing", hypernet_size, nhead, what="hypernet_size")
        self.d_model = d_model
        self.num_heads = nhead
        self.hyper = HyperNetwork(
            d_model,
            hypernet_size,
            tied=tied,
            num_heads=nhead,
            keep_output_size=fix_tm_hidden_size,
        )
        self.activation = nn.GELU()
        self.layer_norm = nn.LayerNorm(d_model)
        # SpeechBrain's module stores a 3000-row position table; we compute positions instead.
        self._register_load_state_dict_pre_hook(_drop_position_table)

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
        """Mixes the frames of ``query`` (B, T, E); returns ((B, T, E), None).

        ``key`` and ``value`` are ignored (self-mixing only); an ``attn_mask`` that masks
        anything, or a ``dynchunktrain_config``, raises (HyperMixing mixes the whole utterance: the token-mixing
        MLP's hidden units sum over every frame, and its weights are made from absolute positions, so it has no
        causal or chunked form). ``pos_embs`` is (1, T, E) from ``absolute_sinusoids``; computed here when None.
        """
        dynchunktrain_config, attn_mask = self.chunks_of_call(dynchunktrain_config, attn_mask, query.shape[1])
        if dynchunktrain_config is not None:
            self.check_chunks(dynchunktrain_config, attn_mask)
        key_padding_mask, _ = self.check_call(query, attn_mask, key_padding_mask)
        batch, length, _ = query.shape
        x = query
        valid = valid_frames(key_padding_mask, x)
        if valid is not None:
            x = x * valid
        if pos_embs is None:
            pos_embs = absolute_sinusoids(length, self.d_model, x.device, x.dtype)
        elif pos_embs.shape[-2:] != (length, self.d_model):
            raise ValueError(
                f"hypermixing reads absolute positions of shape (1, T, E) = (1, {length}, "
                f"{self.d_model}), got {tuple(pos_embs.shape)}"
            )
        w1, w2 = self.hyper(x + pos_embs)  # (B, H, T, K) each
        heads = x.reshape(batch, length, self.num_heads, self.d_model // self.num_heads)
        # SpeechBrain zeroes the generated weights of padded frames. The same outputs, for less
        # work: x is already zero there, so w1's rows never reach the hidden units, and zeroing
        # the (B, T, E) output of padded frames is what zeroing w2's rows does.
        hidden = self.activation(torch.einsum("bthe,bhtk->bhek", heads, w1))
        out = torch.einsum("bhek,bhtk->bthe", hidden, w2).reshape(batch, length, self.d_model)
        if valid is not None:
            out = out * valid
        return self.layer_norm(out), None


def _drop_position_table(state_dict, prefix, *args) -> None:
    """Lets a state_dict of SpeechBrain's HyperMixing load: its position table is not needed."""
    state_dict.pop(prefix + "positional_encoding.pe", None)
