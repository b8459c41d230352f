"""SummaryMixing (Parcollet et al. 2023, https://arxiv.org/abs/2307.07421), written from the paper.

Each frame goes through a local transformation f; a summary function s is applied to every
frame and averaged over the valid frames of the utterance into one vector; a combiner c
merges each frame's local vector with that summary: ``y_t = c(f(x_t), mean_t s(x_t))``.
Time and memory are O(T). The ``lite`` mode keeps only the summary (no f, no c): every frame
receives the same global vector, and local processing is left to the rest of the block.
"""

from typing import Optional

import torch
from torch import nn

from speechbrain_ext.mixers._common import check_padding_mask, valid_frames

MODES = ("full", "lite")
COMBINES = ("add", "concat")


class SummaryMixing(nn.Module):
    """SummaryMixing token mixer.

    f and s are dense layers with an activation; c is a dense layer with an activation. With
    ``combine="add"`` (default) c reads ``f(x_t) + s̄``: a dense layer on the concatenation
    ``[f(x_t); s̄]`` whose two halves share weights. This gives the parameter budget the BEST-RQ
    paper equalised at its base width (about 1.0M per block at E=632); ``combine="concat"``
    (separate halves, 1.3M) makes that encoder 4% larger than the MHSA one.

    Arguments
    ---------
    d_model : int
        Width of the input and output, E.
    nhead : int
        Accepted for the common mixer signature; SummaryMixing has no heads.
    local_out : int
        Output width of the local transformation f.
    summary_out : int
        Output width of the summary function s.
    mode : str
        ``"full"`` (f, s and c) or ``"lite"`` (s only, then projected to E).
    combine : str
        How c reads f(x_t) and the summary: ``"add"`` or ``"concat"``.
    activation : type
        Non-linearity class used in f, s and c.

    Example
    -------
    >>> x = torch.rand(2, 50, 64)
    >>> out, attn = SummaryMixing(64, nhead=1, local_out=32, summary_out=32)(x, x, x)
    >>> out.shape, attn
    (torch.Size([2, 50, 64]), None)
    """

    pos_embs_kind = None

    def __init__(
        self,
        d_model: int,
        nhead: int = 1,
        local_out: int = 512,
        summary_out: int = 512,
        mode: str = "full",
        combine: str = "add",
        activation: type = nn.GELU,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"summarymixing: unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        if combine not in COMBINES:
            raise ValueError(f"summarymixing: unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
        if mode == "full" and combine == "add" and local_out != summary_out:
            raise ValueError(
                f"summarymixing: combine='add' needs local_out == summary_out, got "
                f"local_out={local_out} and summary_out={summary_out}"
            )
        self.mode = mode
        self.combine = combine
        self.summary = nn.Sequential(nn.Linear(d_model, summary_out), activation())
        if mode == "full":
            self.local = nn.Sequential(nn.Linear(d_model, local_out), activation())
            combined = local_out if combine == "add" else local_out + summary_out
            self.combiner = nn.Sequential(nn.Linear(combined, d_model), activation())
        else:
            self.combiner = nn.Linear(summary_out, d_model)

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
        summary = self._summarize(query, key_padding_mask)  # (B, 1, S)
        if self.mode == "lite":
            return self.combiner(summary).expand_as(query), None
        local = self.local(query)
        if self.combine == "add":
            return self.combiner(local + summary), None
        return self.combiner(torch.cat([local, summary.expand(-1, query.shape[1], -1)], dim=-1)), None

    def _summarize(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Mean of s(x_t) over the valid frames: (B, T, E) -> (B, 1, S)."""
        per_frame = self.summary(x)
        valid = valid_frames(key_padding_mask, per_frame)
        if valid is None:
            return per_frame.mean(dim=1, keepdim=True)
        count = valid.sum(dim=1, keepdim=True).clamp(min=1.0)
        return (per_frame * valid).sum(dim=1, keepdim=True) / count
