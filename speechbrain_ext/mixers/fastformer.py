"""Fastformer additive attention (Wu et al. 2021, https://arxiv.org/abs/2108.09084).

Per head, a global query is pooled from the frames by softmax attention, multiplied into
every key, a global key is pooled the same way, multiplied into every value, and a linear
transform plus the query gives the output: O(T) time and memory.

The BEST-RQ paper's code (whettenr/speechbrain-fork, branch alt-attention,
``speechbrain/nnet/attention.py``, class ``Fastattention``) scores the frames with one
Linear(d_model -> nhead) with bias over the full width, scaled by 1/sqrt(d_model / nhead),
applies dropout to the pooled vectors and initialises its linear layers N(0, 0.02) with zero
biases: ``scoring="linear", dropout=0.1, init="normal"``, the defaults here.
``scoring="per_head"`` (one scoring vector per head on its own channels, as in the Fastformer
paper), ``dropout=0.0`` and ``init="default"`` (PyTorch's) are options.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_ext.mixers._common import (
    SequenceMixer,
    check_heads,
    check_padding_mask,
    spread_chunks,
)

SCORINGS = ("per_head", "linear")
INITS = ("default", "normal")


class Fastformer(nn.Module, SequenceMixer):
    """Multi-head Fastformer with padding-aware global pooling.

    Arguments
    ---------
    d_model : int
        Width of the input and output, E.
    nhead : int
        Number of heads; must divide ``d_model``.
    share_query_value : bool
        Use the query projection as the value projection, as in the paper's final model
        (one E x E matrix fewer), as the paper's code does.
    scoring : str
        ``"linear"``: one Linear(E -> nhead) with bias over all channels (the paper's code);
        ``"per_head"``: one scoring vector per head on that head's channels (no bias).
    dropout : float
        Dropout on the pooled global query and key (the paper's code: 0.1).
    init : str
        ``"normal"``: linear weights N(0, 0.02), zero biases (the paper's code); ``"default"``:
        PyTorch's.
    causal : bool
        Cumulative pooling: frame t uses the global query and key pooled over frames 0..t
        (a running softmax, computed in the log domain so that no later frame changes it).
        A SpeechBrain causal ``attn_mask`` turns this on for one call; a chunk mask runs in its chunks (below);
        any other mask raises.

    In chunks (``dynchunktrain_config=``, SpeechBrain's ``DynChunkTrainConfig`` with unlimited left context, or
    its chunk mask as ``attn_mask``),
    both poolings of frame t run over the valid frames of its chunk and of every earlier chunk, each frame's
    key read with the global query of its own chunk (as ``causal`` reads it with its own frame's).
    :meth:`forward_streaming` computes the same chunk by chunk from running log-domain sums, at a cost per
    chunk that does not grow with the stream. A limited left context is refused: the key pooling of chunk c
    reads keys multiplied by the global queries of chunks c - L .. c, which were pooled from chunks down to
    c - 2L, so a window of L chunks cannot be kept without recomputing those queries.

    Example
    -------
    >>> x = torch.rand(2, 50, 64)
    >>> out, attn = Fastformer(64, nhead=4)(x, x, x)
    >>> out.shape, attn
    (torch.Size([2, 50, 64]), None)
    >>> Fastformer(64, nhead=4, causal=True)(x, x, x)[0].shape
    torch.Size([2, 50, 64])
    >>> from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
    >>> Fastformer(64, nhead=4)(x, x, x, dynchunktrain_config=DynChunkTrainConfig(8, None))[0].shape
    torch.Size([2, 50, 64])
    """

    mixer_name = "fastformer"
    pos_embs_kind = None
    encoder_input_positions = "absolute"
    supported_masks = ("causal",)
    dynchunk_left_contexts = ("unlimited",)

    def __init__(
        self,
        d_model: int,
        nhead: int,
        share_query_value: bool = True,
        scoring: str = "linear",
        dropout: float = 0.1,
        init: str = "normal",
        causal: bool = False,
    ) -> None:
        super().__init__()
        check_heads("fastformer", d_model, nhead)
        if scoring not in SCORINGS:
            raise ValueError(f"fastformer: unknown scoring {scoring!r}; valid: {', '.join(SCORINGS)}")
        if init not in INITS:
            raise ValueError(f"fastformer: unknown init {init!r}; valid: {', '.join(INITS)}")
        self.nhead = nhead
        self.causal = causal
        self.head_dim = d_model // nhead
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = None if share_query_value else nn.Linear(d_model, d_model)
        if scoring == "per_head":
            # One scoring vector per head (w_q and w_k of the Fastformer paper).
            self.query_score = nn.Parameter(torch.randn(nhead, self.head_dim) * self.head_dim**-0.5)
            self.key_score = nn.Parameter(torch.randn(nhead, self.head_dim) * self.head_dim**-0.5)
        else:
            self.query_attn = nn.Linear(d_model, nhead)
            self.key_attn = nn.Linear(d_model, nhead)
        self.scoring = scoring
        self.transform = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        if init == "normal":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
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
        chunks, attn_mask = self.chunks_of_call(dynchunktrain_config, attn_mask, query.shape[1])
        if chunks is not None:
            self.check_chunks(chunks, attn_mask)
            key_padding_mask, causal = check_padding_mask(key_padding_mask, query), False
        else:
            key_padding_mask, causal_mask = self.check_call(query, attn_mask, key_padding_mask)
            causal = self.causal or causal_mask
        per_frame = causal or chunks is not None
        batch, length, d_model = query.shape
        heads = (batch, length, self.nhead, self.head_dim)
        q = self.query(query).view(heads)
        k = self.key(query).view(heads)
        v = q if self.value is None else self.value(query).view(heads)

        q_global = self._pool(q, "query", key_padding_mask, causal, chunks)  # (B, H, E/H), or (B, T, H, E/H)
        p = k * (q_global if per_frame else q_global.unsqueeze(1))
        k_global = self._pool(p, "key", key_padding_mask, causal, chunks)
        u = (v * (k_global if per_frame else k_global.unsqueeze(1))).reshape(batch, length, d_model)
        return self.transform(u) + q.reshape(batch, length, d_model), None

    def make_streaming_context(self, dynchunktrain_config) -> "FastformerStreamingContext":
        """A blank context for :meth:`forward_streaming` in chunks of ``dynchunktrain_config``."""
        self.check_chunks(dynchunktrain_config, None)
        return FastformerStreamingContext(PoolingState(), PoolingState())

    def forward_streaming(self, x: torch.Tensor, context: "FastformerStreamingContext") -> torch.Tensor:
        """Mixes one chunk (B, C, E) given the pooling states of the earlier chunks in ``context`` (updated):
        the chunk's frames of the chunked forward over the whole stream."""
        batch, length, d_model = x.shape
        heads = (batch, length, self.nhead, self.head_dim)
        q = self.query(x).view(heads)
        k = self.key(x).view(heads)
        v = q if self.value is None else self.value(x).view(heads)
        q_global = self.dropout(context.query.pool(self._logits(q, "query"), q))  # (B, 1, H, E/H)
        k_global = self.dropout(context.key.pool(self._logits(k * q_global, "key"), k * q_global))
        return self.transform((v * k_global).reshape(batch, length, d_model)) + q.reshape(batch, length, d_model)

    def _logits(self, x: torch.Tensor, which: str) -> torch.Tensor:
        """Pooling logits of x (B, T, H, E/H) in float32: (B, T, H)."""
        if self.scoring == "per_head":
            logits = torch.einsum("bthe,he->bth", x, getattr(self, f"{which}_score"))
        else:
            logits = getattr(self, f"{which}_attn")(x.flatten(2))
        return logits.float() * self.head_dim**-0.5

    def _pool(
        self, x: torch.Tensor, which: str, key_padding_mask: Optional[torch.Tensor], causal: bool = False,
        chunks=None,
    ) -> torch.Tensor:
        """Softmax-over-time weighted sum of x (B, T, H, E/H) -> (B, H, E/H), padding excluded;
        with ``causal``, the sum over frames 0..t for every t: (B, T, H, E/H); with ``chunks`` (a
        ``DynChunkTrainConfig``), the sum over each frame's chunk and allowed earlier chunks: (B, T, H, E/H).

        ``which`` ("query" or "key") picks the scoring parameters.
        """
        logits = self._logits(x, which)
        if chunks is not None:
            if key_padding_mask is not None:
                logits = logits.masked_fill(key_padding_mask.unsqueeze(-1), -torch.inf)
            pooled = chunked_softmax_pool(logits, x, chunks.chunk_size)
            return self.dropout(spread_chunks(pooled, chunks.chunk_size, x.shape[1]))
        if key_padding_mask is not None:
            # finfo.min rather than -inf: a row with no valid frame gets finite weights, not NaN.
            logits = logits.masked_fill(key_padding_mask.unsqueeze(-1), torch.finfo(logits.dtype).min)
        if causal:
            return self.dropout(_cumulative_softmax_pool(logits, x))
        weights = logits.softmax(dim=1).to(x.dtype)
        return self.dropout(torch.einsum("bth,bthe->bhe", weights, x))


def _cumulative_softmax_pool(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_{s<=t} softmax_{s<=t}(logits)_s x_s for every t: logits (B, T, H), x (B, T, H, E) -> (B, T, H, E).

    Exact and overflow-free for any logits: x is split into its positive and negative parts and
    each weighted sum is a ``logcumsumexp`` in the log domain, so frame t never reads a later frame
    (a global max subtracted for stability would).
    """
    logits = logits.float().unsqueeze(-1)  # (B, T, H, 1)
    x32 = x.float()
    tiny = torch.finfo(torch.float32).tiny
    log_norm = torch.logcumsumexp(logits, dim=1)
    positive = torch.exp(torch.logcumsumexp(logits + x32.clamp(min=tiny).log(), dim=1) - log_norm)
    negative = torch.exp(torch.logcumsumexp(logits + (-x32).clamp(min=tiny).log(), dim=1) - log_norm)
    return (positive - negative).to(x.dtype)


def chunk_log_sums(logits: torch.Tensor, x: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, ...]:
    """Softmax sums of each chunk of ``chunk_size`` frames in the log domain: logits (B, T, H) in float32, -inf
    at frames to leave out, and x (B, T, H, E). Returns log sum exp(logit) (B, C, H) and log sum exp(logit) x+
    and x- (B, C, H, E) (x split into its positive and negative parts), each shifted by the chunk's largest
    logit first: sums over any number of chunks then neither overflow nor underflow."""
    pad = -logits.shape[1] % chunk_size
    logits = F.pad(logits, (0, 0, 0, pad), value=-torch.inf).unflatten(1, (-1, chunk_size))  # (B, C, K, H)
    x = F.pad(x.float(), (0, 0, 0, 0, 0, pad)).unflatten(1, (-1, chunk_size))
    top = logits.amax(dim=2)
    top = torch.where(torch.isneginf(top), 0.0, top)  # a chunk with nothing to read: every weight is 0
    weights = torch.exp(logits - top.unsqueeze(2))
    weighted = torch.einsum("bckh,bckhe->bche", weights, x)
    tiny = torch.finfo(torch.float32).tiny
    return (
        weights.sum(dim=2).log() + top,
        weighted.clamp(min=tiny).log() + top.unsqueeze(-1),
        (-weighted).clamp(min=tiny).log() + top.unsqueeze(-1),
    )


def pooled_from_log_sums(log_z: torch.Tensor, log_positive: torch.Tensor, log_negative: torch.Tensor) -> torch.Tensor:
    """The softmax pooling from log-domain sums (:func:`chunk_log_sums`); 0 where nothing was read."""
    log_z = torch.where(torch.isneginf(log_z), 0.0, log_z).unsqueeze(-1)
    return torch.exp(log_positive - log_z) - torch.exp(log_negative - log_z)


def chunked_softmax_pool(logits: torch.Tensor, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Softmax pooling of x (B, T, H, E) by logits (B, T, H) (-inf at frames to leave out) over each chunk of
    ``chunk_size`` frames and every earlier one: (B, ceil(T / chunk_size), H, E) in x's dtype."""
    sums = [torch.logcumsumexp(part, dim=1) for part in chunk_log_sums(logits, x, chunk_size)]
    return pooled_from_log_sums(*sums).to(x.dtype)


@dataclass
class PoolingState:
    """One pooling's running log-domain sums over the chunks streamed so far."""

    log_sums: Optional[tuple] = None

    def pool(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Pools one chunk (logits (B, K, H), x (B, K, H, E)) with the earlier ones, then adds it to the sums:
        (B, 1, H, E) in x's dtype."""
        sums = chunk_log_sums(logits, x, x.shape[1])
        if self.log_sums is not None:
            sums = tuple(torch.logaddexp(old, new) for old, new in zip(self.log_sums, sums))
        self.log_sums = sums
        return pooled_from_log_sums(*sums).to(x.dtype)


@dataclass
class FastformerStreamingContext:
    """What :meth:`Fastformer.forward_streaming` carries from chunk to chunk: both poolings' states."""

    query: PoolingState
    key: PoolingState
