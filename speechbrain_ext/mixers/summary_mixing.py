"""SummaryMixing (Parcollet et al. 2023, https://arxiv.org/abs/2307.07421), written from the paper.

Each frame goes through a local transformation f; a summary function s is applied to every
frame and averaged over the valid frames of the utterance into one vector; a combiner c
merges each frame's local vector with that summary: ``y_t = c(f(x_t), mean_t s(x_t))``.
Time and memory are O(T). The ``lite`` mode keeps only the summary (no f, no c): every frame
receives the same global vector, and local processing is left to the rest of the block.

The BEST-RQ paper's code (whettenr/speechbrain-fork, branch summary-mixing,
``speechbrain/nnet/summary_mixing.py`` and its use in ``Conformer.py`` / ``Transformer.py``) runs
the full mode with f: d -> 512 -> 512 and s: d -> 1024 -> d_model (its ``ConformerEncoder``'s own
defaults: ``Transformer.py`` does not pass the YAML's widths on), every layer block-diagonal in
``nhead`` groups, a LayerNorm on f's output and one on the averaged summary, and
c = activation(Linear(512 + d_model -> d_model)) on the concatenation, dense biases zeroed. Those
are the defaults here (``local_hidden=512, summary_hidden=1024, summary_out=d_model,
block_diagonal=True, norm=True, combine="concat"``). ``local_hidden=None`` / ``summary_hidden=None``
make f and s single layers, and ``combine="add"`` has c read ``f(x_t) + s̄``.
"""

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from speechbrain_ext.mixers._common import (
    LEFT_CONTEXTS,
    SequenceMixer,
    causal_mean,
    check_heads,
    check_padding_mask,
    chunk_sums,
    resolve_activation,
    spread_chunks,
    valid_frames,
    window_sums,
)

MODES = ("full", "lite")
COMBINES = ("add", "concat")


class GroupedLinear(nn.Module):
    """Block-diagonal linear layer: the input and the output are cut into ``groups`` equal
    slices and slice g of the output reads slice g of the input only.

    The parameters have the shapes of the paper's code's ``ParallelLinear`` (whettenr/speechbrain-fork,
    ``lobes/models/VanillaNN.py``): weight (groups, in / groups, out / groups) and bias
    (groups, out / groups), both drawn by ``kaiming_uniform_(a=sqrt(5))``. Being 2-D, the bias is
    redrawn by an encoder's Xavier initialisation, as it is in that code.

    Arguments
    ---------
    in_features, out_features : int
        Widths; both must be divisible by ``groups``.
    groups : int
        Number of diagonal blocks.

    Example
    -------
    >>> layer = GroupedLinear(64, 32, groups=4)
    >>> layer(torch.rand(2, 5, 64)).shape
    torch.Size([2, 5, 32])
    >>> sum(p.numel() for p in layer.parameters())  # 4 blocks of 16 x 8, and 4 x 8 biases
    544
    """

    def __init__(self, in_features: int, out_features: int, groups: int) -> None:
        super().__init__()
        check_heads("summarymixing", in_features, groups, what="input width")
        check_heads("summarymixing", out_features, groups, what="output width")
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, in_features // groups, out_features // groups))
        self.bias = nn.Parameter(torch.empty(groups, out_features // groups))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.bias, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        grouped = x.unflatten(-1, (self.groups, -1))
        return (torch.einsum("...gi,gio->...go", grouped, self.weight) + self.bias).flatten(-2)


def _mlp(d_in: int, hidden: Optional[int], d_out: int, groups: int, activation: type) -> nn.Sequential:
    """Linear(+activation) layers d_in -> [hidden ->] d_out, each block-diagonal when groups > 1."""
    widths = [d_in] + ([hidden] if hidden else []) + [d_out]
    layers = []
    for d_a, d_b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(d_a, d_b) if groups == 1 else GroupedLinear(d_a, d_b, groups), activation()]
    return nn.Sequential(*layers)


class SummaryMixing(nn.Module, SequenceMixer):
    """SummaryMixing token mixer.

    f and s are MLPs with an activation after every layer; c is a dense layer with an
    activation. With ``combine="concat"`` (default, the paper's code) c reads the concatenation
    ``[f(x_t); s̄]``; ``combine="add"`` reads ``f(x_t) + s̄`` (the two halves share weights).

    Arguments
    ---------
    d_model : int
        Width of the input and output, E.
    nhead : int
        Number of diagonal blocks of f and s with ``block_diagonal``; otherwise unused.
    local_out : int
        Output width of the local transformation f.
    summary_out : int, optional
        Output width of the summary function s; None: d_model (the paper's code).
    mode : str
        ``"full"`` (f, s and c) or ``"lite"`` (s only, then projected to E).
    combine : str
        How c reads f(x_t) and the summary: ``"add"`` or ``"concat"``.
    activation : str or type
        Non-linearity used in f, s and c (a name of ``ACTIVATIONS`` or a class).
    local_hidden, summary_hidden : int, optional
        Hidden width of f and s; None makes them a single layer. The paper's code: 512 and 1024
        (the defaults of its ``ConformerEncoder``, which its ``TransformerASR`` builds without
        passing the YAML's ``summary_hid_dim``).
    block_diagonal : bool
        Every layer of f and s block-diagonal in ``nhead`` groups (the paper's code).
    norm : bool
        LayerNorm on f's output and on the averaged summary (the paper's code).
    causal : bool
        Frame t reads the running mean of s over the valid frames 0..t instead of the whole
        utterance (streaming). A SpeechBrain causal ``attn_mask`` (``get_lookahead_mask``) turns
        this on for one call; a chunk mask runs in its chunks (below); any other mask raises.

    In chunks (``dynchunktrain_config=``, SpeechBrain's ``DynChunkTrainConfig``, or its chunk mask as
    ``attn_mask``), frame t reads the mean
    of s over the valid frames of its chunk and of the allowed earlier chunks (all of them with
    ``left_context_size=None``); :meth:`forward_streaming` computes the same chunk by chunk from running
    sums and counts, at a cost per chunk that does not grow with the stream.

    Example
    -------
    >>> x = torch.rand(2, 50, 64)
    >>> out, attn = SummaryMixing(64, nhead=4)(x, x, x)
    >>> out.shape, attn
    (torch.Size([2, 50, 64]), None)
    >>> small = SummaryMixing(64, nhead=1, local_out=32, summary_out=32, local_hidden=None,
    ...     summary_hidden=None, combine="add", block_diagonal=False, norm=False)
    >>> small(x, x, x)[0].shape
    torch.Size([2, 50, 64])
    >>> SummaryMixing(64, nhead=4, causal=True)(x, x, x)[0].shape
    torch.Size([2, 50, 64])
    >>> from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
    >>> SummaryMixing(64, nhead=4)(x, x, x, dynchunktrain_config=DynChunkTrainConfig(8, 2))[0].shape
    torch.Size([2, 50, 64])
    """

    mixer_name = "summarymixing"
    pos_embs_kind = None
    encoder_input_positions = "absolute"
    supported_masks = ("causal",)
    dynchunk_left_contexts = LEFT_CONTEXTS

    def __init__(
        self,
        d_model: int,
        nhead: int = 1,
        local_out: int = 512,
        summary_out: Optional[int] = None,
        mode: str = "full",
        combine: str = "concat",
        activation: Union[str, type] = "swish",
        local_hidden: Optional[int] = 512,
        summary_hidden: Optional[int] = 1024,
        block_diagonal: bool = True,
        norm: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        summary_out = d_model if summary_out is None else summary_out
        if mode not in MODES:
            raise ValueError(f"summarymixing: unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        if combine not in COMBINES:
            raise ValueError(f"summarymixing: unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
        if mode == "full" and combine == "add" and local_out != summary_out:
            raise ValueError(
                f"summarymixing: combine='add' needs local_out == summary_out, got "
                f"local_out={local_out} and summary_out={summary_out}"
            )
        activation = resolve_activation(activation)
        groups = nhead if block_diagonal else 1
        self.mode = mode
        self.combine = combine
        self.causal = causal
        self.summary = _mlp(d_model, summary_hidden, summary_out, groups, activation)
        self.summary_norm = nn.LayerNorm(summary_out) if norm else None
        if mode == "full":
            self.local = _mlp(d_model, local_hidden, local_out, groups, activation)
            self.local_norm = nn.LayerNorm(local_out) if norm else None
            combined = local_out if combine == "add" else local_out + summary_out
            self.combiner = nn.Sequential(nn.Linear(combined, d_model), activation())
        else:
            self.combiner = nn.Linear(summary_out, d_model)
        for module in self.modules():  # the paper's code zeroes the bias of every dense layer
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

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

        ``key``, ``value`` and ``pos_embs`` are ignored (self-mixing only); ``attn_mask`` may be
        None or causal (see ``causal``); ``dynchunktrain_config`` mixes in chunks.
        """
        dynchunktrain_config, attn_mask = self.chunks_of_call(dynchunktrain_config, attn_mask, query.shape[1])
        if dynchunktrain_config is not None:
            self.check_chunks(dynchunktrain_config, attn_mask)
            key_padding_mask = check_padding_mask(key_padding_mask, query)
            return self._combine(query, self._chunk_summary(query, key_padding_mask, dynchunktrain_config)), None
        key_padding_mask, causal_mask = self.check_call(query, attn_mask, key_padding_mask)
        causal = self.causal or causal_mask
        summary = self._summarize(query, key_padding_mask, causal)  # (B, 1 or T, S)
        return self._combine(query, summary), None

    def make_streaming_context(self, dynchunktrain_config) -> "SummaryMixingStreamingContext":
        """A blank context for :meth:`forward_streaming` in chunks of ``dynchunktrain_config``."""
        self.check_chunks(dynchunktrain_config, None)
        return SummaryMixingStreamingContext(dynchunktrain_config.left_context_size)

    def forward_streaming(self, x: torch.Tensor, context: "SummaryMixingStreamingContext") -> torch.Tensor:
        """Mixes one chunk (B, C, E) given the sums of the earlier chunks in ``context`` (updated): the
        chunk's frames of the chunked forward over the whole stream."""
        per_frame = self.summary(x)
        chunk_sum = per_frame.sum(dim=1, keepdim=True).double()
        chunk_count = float(x.shape[1])
        total = sum(context.sums, chunk_sum)
        count = sum(context.counts, chunk_count)
        if context.left_context_size is None:
            context.sums, context.counts = [total], [count]
        elif context.left_context_size > 0:
            context.sums = [*context.sums, chunk_sum][-context.left_context_size:]
            context.counts = [*context.counts, chunk_count][-context.left_context_size:]
        return self._combine(x, (total / count).to(per_frame.dtype))

    def _combine(self, query: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """c(f(x_t), summary_t) for summaries (B, 1 or T, S) not yet normalised: (B, T, E)."""
        if self.summary_norm is not None:
            summary = self.summary_norm(summary)
        if self.mode == "lite":
            return self.combiner(summary).expand_as(query)
        local = self.local(query)
        if self.local_norm is not None:
            local = self.local_norm(local)
        if self.combine == "add":
            return self.combiner(local + summary)
        return self.combiner(torch.cat([local, summary.expand(-1, query.shape[1], -1)], dim=-1))

    def _chunk_summary(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor], config) -> torch.Tensor:
        """Mean of s(x) over the valid frames of each frame's chunk and its allowed earlier chunks: (B, T, S)."""
        per_frame = self.summary(x)
        valid = torch.ones_like(per_frame[..., :1])
        if key_padding_mask is not None:
            per_frame = per_frame.masked_fill(key_padding_mask.unsqueeze(-1), 0.0)
            valid = valid.masked_fill(key_padding_mask.unsqueeze(-1), 0.0)
        sums = window_sums(chunk_sums(per_frame, config.chunk_size), config.left_context_size)
        counts = window_sums(chunk_sums(valid, config.chunk_size), config.left_context_size)
        means = (sums / counts.clamp(min=1.0)).to(per_frame.dtype)
        return spread_chunks(means, config.chunk_size, x.shape[1])

    def _summarize(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor], causal: bool) -> torch.Tensor:
        """Mean of s(x_t) over the valid frames: (B, T, E) -> (B, 1, S), or its running
        mean over frames 0..t when ``causal``: (B, T, S)."""
        per_frame = self.summary(x)
        valid = valid_frames(key_padding_mask, per_frame)
        if causal:
            return causal_mean(per_frame, valid)
        if valid is None:
            return per_frame.mean(dim=1, keepdim=True)
        count = valid.sum(dim=1, keepdim=True).clamp(min=1.0)
        return (per_frame * valid).sum(dim=1, keepdim=True) / count


@dataclass
class SummaryMixingStreamingContext:
    """What :meth:`SummaryMixing.forward_streaming` carries from chunk to chunk: the float64 sums of s and
    the frame counts of the earlier chunks it may read (one running total with unlimited left context)."""

    left_context_size: Optional[int]
    sums: list = field(default_factory=list)
    counts: list = field(default_factory=list)
