"""Fastformer additive attention (Wu et al. 2021, https://arxiv.org/abs/2108.09084).

Per head, a global query is pooled from the frames by softmax attention, multiplied into
every key, a global key is pooled the same way, multiplied into every value, and a linear
transform plus the query gives the output: O(T) time and memory.
"""

from typing import Optional

import torch
from torch import nn

from speechbrain_ext.mixers._common import check_heads, check_padding_mask


class Fastformer(nn.Module):
    """Multi-head Fastformer with padding-aware global pooling.

    Arguments
    ---------
    d_model : int
        Width of the input and output, E.
    nhead : int
        Number of heads; must divide ``d_model``.
    share_query_value : bool
        Use the query projection as the value projection, as in the paper's final model
        (one E x E matrix fewer). With it the base model matches the paper's parameter budget.

    Example
    -------
    >>> x = torch.rand(2, 50, 64)
    >>> out, attn = Fastformer(64, nhead=4)(x, x, x)
    >>> out.shape, attn
    (torch.Size([2, 50, 64]), None)
    """

    pos_embs_kind = None

    def __init__(self, d_model: int, nhead: int, share_query_value: bool = True) -> None:
        super().__init__()
        check_heads("fastformer", d_model, nhead)
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = None if share_query_value else nn.Linear(d_model, d_model)
        # One scoring vector per head (w_q and w_k of the paper).
        self.query_score = nn.Parameter(torch.randn(nhead, self.head_dim) * self.head_dim**-0.5)
        self.key_score = nn.Parameter(torch.randn(nhead, self.head_dim) * self.head_dim**-0.5)
        self.transform = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        pos_embs: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, None]:
        """Mixes the frames of ``query`` (B, T, E); returns ((B, T, E), None).

        ``key``, ``value``, ``attn_mask`` and ``pos_embs`` are ignored (self-mixing only).
        """
        key_padding_mask = check_padding_mask(key_padding_mask, query)
        batch, length, d_model = query.shape
        heads = (batch, length, self.nhead, self.head_dim)
        q = self.query(query).view(heads)
        k = self.key(query).view(heads)
        v = q if self.value is None else self.value(query).view(heads)

        q_global = self._pool(q, self.query_score, key_padding_mask)  # (B, H, E/H)
        p = k * q_global.unsqueeze(1)
        k_global = self._pool(p, self.key_score, key_padding_mask)
        u = (v * k_global.unsqueeze(1)).reshape(batch, length, d_model)
        return self.transform(u) + q.reshape(batch, length, d_model), None

    def _pool(
        self, x: torch.Tensor, score: torch.Tensor, key_padding_mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Softmax-over-time weighted sum of x (B, T, H, E/H) -> (B, H, E/H), padding excluded."""
        logits = torch.einsum("bthe,he->bth", x, score).float() * self.head_dim**-0.5
        if key_padding_mask is not None:
            # finfo.min rather than -inf: a row with no valid frame gets finite weights, not NaN.
            logits = logits.masked_fill(key_padding_mask.unsqueeze(-1), torch.finfo(logits.dtype).min)
        weights = logits.softmax(dim=1).to(x.dtype)
        return torch.einsum("bth,bthe->bhe", weights, x)
