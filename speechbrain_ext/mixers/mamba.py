"""Bidirectional Mamba (Gu & Dao 2023, https://arxiv.org/abs/2312.00752) as a sequence mixer.

``MambaBlock`` has the parameters of ``mamba_ssm.Mamba`` under the same names, so one
state_dict loads in both. Its scan runs on mamba_ssm's CUDA kernels when that package
imports and the input is on a GPU, and on :func:`speechbrain_ext.mixers.scan.selective_scan`
otherwise. ``BidirectionalMamba`` runs one block over time and one over reversed time;
the reversal is per utterance, so the backward direction starts at each utterance's last
valid frame and never reads padding.

The BEST-RQ paper's code (whettenr/speechbrain-fork, branch alt-attention,
``speechbrain/nnet/attention.py``, ``MambaBlock`` / ``MambaWrapper``) wraps the two directions
in mamba_ssm's ``Block``: RMSNorm (eps 1e-5) before the pair and a residual around it,
``out = x + fwd(n) + bwd(n)`` with ``n = RMSNorm(x)``: ``prenorm_residual=True``, the default here. The fork
flips whole padded batches for the backward direction (its scan then starts on padding); the
per-utterance reversal here is a deliberate difference, not an option.
"""

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from speechbrain.utils.logger import get_logger
from torch import nn

from speechbrain_ext.mixers._common import SequenceMixer, check_padding_mask, check_sizes
from speechbrain_ext.mixers.depthwise import depthwise_conv_time_major
from speechbrain_ext.mixers.scan import selective_scan, selective_scan_stateful

logger = get_logger(__name__)

MERGES = ("add", "concat")


@functools.lru_cache(maxsize=1)
def cuda_selective_scan():
    """mamba_ssm's fused ``selective_scan_fn``, or None where it cannot be imported.

    Asked for on the first GPU input; why it is None is logged once: not installed (an
    info line with the install command), or installed but failing to import (a warning with the
    error: a broken CUDA build would otherwise train on the slower PyTorch scan unnoticed).
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] == "mamba_ssm":
            logger.info("mamba_ssm is not installed: MambaBlock runs the PyTorch selective scan on the GPU "
                        "(pip install -e '.[mamba]' adds the fused CUDA kernels)")
        else:
            logger.warning("mamba_ssm is installed but its kernels do not import (%s): MambaBlock runs the "
                           "slower PyTorch selective scan", error)
        return None
    except Exception as error:  # e.g. its CUDA extension built for another torch or GPU
        logger.warning("mamba_ssm is installed but its kernels do not import (%s: %s): MambaBlock runs the "
                       "slower PyTorch selective scan", type(error).__name__, error)
        return None
    return selective_scan_fn


class MambaBlock(nn.Module):
    """One selective state-space block (Mamba), causal over time.

    Arguments
    ---------
    d_model : int
        Width of the input and output, E.
    d_state : int
        State size N per channel.
    d_conv : int
        Kernel size of the causal depthwise convolution.
    expand : int
        Inner width is ``expand * d_model``.
    dt_rank : int or "auto"
        Rank of the step-size projection; "auto" is ceil(d_model / 16).
    dt_min, dt_max, dt_init_floor : float
        Range of the initial step sizes.
    use_cuda_kernels : bool
        Use mamba_ssm's kernels when they import and the input is on a GPU.

    Example
    -------
    >>> block = MambaBlock(32)
    >>> block(torch.rand(2, 20, 32)).shape
    torch.Size([2, 20, 32])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank="auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        use_cuda_kernels: bool = True,
    ) -> None:
        super().__init__()
        check_sizes("mamba", d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_cuda_kernels = use_cuda_kernels
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1
        )
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # Initialisation of the Mamba paper: step sizes log-uniform in [dt_min, dt_max],
        # stored through the inverse softplus; A = -(1..N) per channel (S4D-real).
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        states = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(states))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        # Read by optimisers that follow mamba_ssm's convention of no weight decay here.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, E) -> (B, T, E); frame t only sees frames 0..t."""
        inner, gate = self.in_proj(x).chunk(2, dim=-1)  # (B, T, D) each
        # Causal: d_conv - 1 frames of padding before, none after (the nn.Conv1d's padding, truncated).
        inner = self.act(depthwise_conv_time_major(inner, self.conv1d, left=self.conv1d.kernel_size[0] - 1))
        delta, B, C = self._scan_inputs(inner)
        inner, gate = inner.transpose(1, 2), gate.transpose(1, 2)  # (B, D, T), as the scans take them
        scan = selective_scan
        # mamba_ssm's kernels do not export: torch.export traces the PyTorch scan.
        if self.use_cuda_kernels and x.is_cuda and not torch.compiler.is_exporting():
            scan = cuda_selective_scan() or selective_scan
        y = scan(
            inner,
            delta,
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            self.D.float(),
            z=gate,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2))

    def _scan_inputs(self, inner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step sizes (B, D, T) before their bias, and B, C (B, T, N) of the convolved input (B, T, D)."""
        dt, B, C = self.x_proj(inner).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return (dt @ self.dt_proj.weight.t()).transpose(1, 2), B, C

    def forward_streaming(
        self, x: torch.Tensor, state: Optional["MambaState"] = None
    ) -> tuple[torch.Tensor, "MambaState"]:
        """:meth:`forward` of the next frames (B, K, E) of a stream, from the ``state`` the frames before them
        left (None at the start): returns (B, K, E) and the state after them."""
        inner, gate = self.in_proj(x).chunk(2, dim=-1)
        keep = self.conv1d.kernel_size[0] - 1  # the causal convolution reads this many earlier frames
        earlier = inner.new_zeros(x.shape[0], keep, inner.shape[-1]) if state is None else state.conv
        window = torch.cat([earlier, inner], dim=1)
        conv = F.conv1d(window.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=self.conv1d.groups)
        inner = self.act(conv.transpose(1, 2))
        delta, B, C = self._scan_inputs(inner)
        y, ssm = selective_scan_stateful(
            inner.transpose(1, 2), delta, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2),
            self.D.float(), z=gate.transpose(1, 2), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            state=None if state is None else state.ssm,
        )
        out = self.out_proj(y.transpose(1, 2).to(x.dtype))
        return out, MambaState(conv=window[:, window.shape[1] - keep:], ssm=ssm)


@dataclass
class MambaState:
    """What a :class:`MambaBlock` carries from frames to the next: the last ``d_conv - 1`` inputs of its causal
    convolution (B, d_conv - 1, D) and the scan's state (B, D, N)."""

    conv: torch.Tensor
    ssm: torch.Tensor


@dataclass
class BidirectionalMambaStreamingContext:
    """What :meth:`BidirectionalMamba.forward_streaming` carries from chunk to chunk: the forward direction's
    state (the backward direction runs within each chunk and carries nothing)."""

    forward_state: Optional[MambaState] = None


def reverse_valid_frames(x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Reverses each utterance of x (B, T, E) within its valid length; padding stays in place.

    The permutation is its own inverse, so applying it twice gives x back.
    """
    length = x.shape[1]
    if key_padding_mask is None:
        return x.flip(1)
    lengths = (~key_padding_mask).sum(dim=1, keepdim=True)  # (B, 1)
    positions = torch.arange(length, device=x.device).unsqueeze(0)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class BidirectionalMamba(nn.Module, SequenceMixer):
    """Two Mamba blocks, one over time and one over reversed time, as a sequence mixer.

    Arguments
    ---------
    d_model : int
        Width of the input and output, E.
    nhead : int
        Accepted for the common mixer signature; Mamba has no heads.
    merge : str
        ``"add"`` sums the two directions; ``"concat"`` concatenates them and projects to E.
    prenorm_residual : bool
        mamba_ssm's ``Block`` around the pair: RMSNorm on the input of both directions and the
        input added to their merged output (the paper's code; False: the merged output alone).
    norm_eps : float
        Epsilon of that RMSNorm.
    causal : bool
        Forward direction only (no ``backward_block``; ``merge`` must be "add"): frame t reads
        frames 0..t, and a SpeechBrain causal ``attn_mask`` is accepted. A bidirectional
        instance raises on any attn_mask that masks something but SpeechBrain's chunk mask.

    In chunks (``dynchunktrain_config=``, SpeechBrain's ``DynChunkTrainConfig`` with unlimited left context, or
    its chunk mask as ``attn_mask``; the forward scan's state holds the whole past), the forward direction runs
    over the whole
    sequence and the backward direction within each chunk, from the chunk's last valid frame.
    :meth:`forward_streaming` carries the forward direction's state (scan and convolution) from chunk to
    chunk, at a cost per chunk that does not grow with the stream.
    **block_kwargs
        Passed to both :class:`MambaBlock` (d_state, d_conv, expand, ...).

    Example
    -------
    >>> x = torch.rand(2, 20, 32)
    >>> out, attn = BidirectionalMamba(32, nhead=1)(x, x, x)
    >>> out.shape, attn
    (torch.Size([2, 20, 32]), None)
    >>> BidirectionalMamba(32, causal=True)(x, x, x)[0].shape
    torch.Size([2, 20, 32])
    >>> from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
    >>> BidirectionalMamba(32)(x, x, x, dynchunktrain_config=DynChunkTrainConfig(8, None))[0].shape
    torch.Size([2, 20, 32])
    """

    pos_embs_kind = None
    encoder_input_positions = "absolute"
    dynchunk_left_contexts = ("unlimited",)  # a causal instance: none (set in __init__)

    def __init__(
        self,
        d_model: int,
        nhead: int = 1,
        merge: str = "add",
        prenorm_residual: bool = True,
        norm_eps: float = 1e-5,
        causal: bool = False,
        **block_kwargs,
    ) -> None:
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"mamba: unknown merge {merge!r}; valid merges: {', '.join(MERGES)}")
        if causal and merge != "add":
            raise ValueError(f"mamba: causal=True has one direction, so merge must be 'add', got {merge!r}")
        self.causal = causal
        self.mixer_name = "mamba (causal=True)" if causal else "mamba (bidirectional; causal=True for a causal mask)"
        self.supported_masks = ("causal",) if causal else ()
        self.dynchunk_left_contexts = () if causal else ("unlimited",)
        self.norm = nn.RMSNorm(d_model, eps=norm_eps) if prenorm_residual else None
        self.forward_block = MambaBlock(d_model, **block_kwargs)
        self.backward_block = None if causal else MambaBlock(d_model, **block_kwargs)
        self.merge_proj = nn.Linear(2 * d_model, d_model) if merge == "concat" else None

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
        None, or causal when built with ``causal=True``; ``dynchunktrain_config`` mixes in chunks.
        """
        dynchunktrain_config, attn_mask = self.chunks_of_call(dynchunktrain_config, attn_mask, query.shape[1])
        if dynchunktrain_config is not None:
            self.check_chunks(dynchunktrain_config, attn_mask)
            key_padding_mask = check_padding_mask(key_padding_mask, query)
        else:
            key_padding_mask, _ = self.check_call(query, attn_mask, key_padding_mask)
        x = query
        if key_padding_mask is not None:
            x = x.masked_fill(key_padding_mask.unsqueeze(-1), 0.0)
        inner = x if self.norm is None else self.norm(x)
        out = self.forward_block(inner)
        if self.backward_block is not None:
            if dynchunktrain_config is None:
                backward_out = reverse_valid_frames(
                    self.backward_block(reverse_valid_frames(inner, key_padding_mask)), key_padding_mask
                )
            else:
                backward_out = self._backward_in_chunks(inner, key_padding_mask, dynchunktrain_config.chunk_size)
            out = self._merge(out, backward_out)
        if self.norm is not None:
            out = out + x
        if key_padding_mask is not None:
            out = out.masked_fill(key_padding_mask.unsqueeze(-1), 0.0)
        return out, None

    def make_streaming_context(self, dynchunktrain_config) -> BidirectionalMambaStreamingContext:
        """A blank context for :meth:`forward_streaming` in chunks of ``dynchunktrain_config``."""
        self.check_chunks(dynchunktrain_config, None)
        return BidirectionalMambaStreamingContext()

    def forward_streaming(self, x: torch.Tensor, context: BidirectionalMambaStreamingContext) -> torch.Tensor:
        """Mixes one chunk (B, K, E) from the forward state of the earlier chunks in ``context`` (updated): the
        chunk's frames of the chunked forward over the whole stream."""
        inner = x if self.norm is None else self.norm(x)
        out, context.forward_state = self.forward_block.forward_streaming(inner, context.forward_state)
        out = self._merge(out, self.backward_block(inner.flip(1)).flip(1))
        return out + x if self.norm is not None else out

    def _merge(self, forward_out: torch.Tensor, backward_out: torch.Tensor) -> torch.Tensor:
        if self.merge_proj is None:
            return forward_out + backward_out
        return self.merge_proj(torch.cat([forward_out, backward_out], dim=-1))

    def _backward_in_chunks(
        self, inner: torch.Tensor, key_padding_mask: Optional[torch.Tensor], chunk_size: int
    ) -> torch.Tensor:
        """The backward direction run within each chunk of ``chunk_size`` frames (the chunks as a batch),
        from each chunk's last valid frame: (B, T, E)."""
        batch, length, width = inner.shape
        pad = -length % chunk_size
        padding = torch.zeros(batch, length, dtype=torch.bool, device=inner.device)
        if key_padding_mask is not None:
            padding = key_padding_mask
        padding = F.pad(padding, (0, pad), value=True).reshape(-1, chunk_size)
        chunks = F.pad(inner, (0, 0, 0, pad)).reshape(-1, chunk_size, width)
        out = reverse_valid_frames(self.backward_block(reverse_valid_frames(chunks, padding)), padding)
        return out.reshape(batch, -1, width)[:, :length]
