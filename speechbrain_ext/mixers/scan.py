"""Selective scan without CUDA: the maths of Mamba's ``selective_scan_fn`` on the CPU (or any device).

Mamba (Gu & Dao 2023, https://arxiv.org/abs/2312.00752) runs, per channel d and state n,

    delta = softplus(delta + delta_bias)
    h_t   = exp(delta_t A) * h_{t-1} + delta_t B_t u_t
    y_t   = <h_t, C_t> + D u_t,   then   y_t *= silu(z_t)

``selective_scan`` is the fast CPU/fallback path. Like mamba_ssm's kernel, it never holds the
(L, B, D, N) states: one custom autograd function walks time in chunks of ``chunk_size`` steps,
builds the decays and drives of one chunk at a time (cache-sized), runs the recurrence with one
fused multiply-add per step, contracts the chunk with C, and keeps only the state at each chunk
boundary. Its backward walks the chunks in reverse, recomputes each chunk's states from its
boundary state and runs the reverse recurrence, so memory is O(B D L + B D N (L / K + K)) and
time is linear in L. On the CPU, where numba is installed, the same algorithm runs on the fused
kernels of :mod:`speechbrain_ext.mixers.scan_numba` instead (one pass each way: a Mamba
Conformer's training step at 80 s about 1.5x faster; ``fused=False`` forces the PyTorch ops).
``selective_scan_ref`` is the step-by-step reference used by the tests. All take the arguments of
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (real A, time-varying B and C).
"""

import functools
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

LOG2_E = math.log2(math.e)


def _chunk_decays(delta, A_log2, out):
    """exp(delta_t A) for one chunk: (K, B, D) and (N, D) -> (K, B, N, D), as exp2(delta_t log2(e) A).

    exp2 is about twice as fast as exp on CPU; mamba_ssm's kernel scales A by log2(e) too.
    """
    return torch.mul(delta.unsqueeze(2), A_log2, out=out).exp2_()


def _chunk_states(decay_steps, drive_steps, start):
    """h_t = decays_t * h_{t-1} + drives_t with h_{-1} = start (or 0), in place of the drives.

    Takes per-step views (``unbind(0)`` of the chunk), one fused multiply-add per step.
    """
    if start is not None:
        drive_steps[0].addcmul_(decay_steps[0], start)
    for t in range(1, len(drive_steps)):
        drive_steps[t].addcmul_(decay_steps[t], drive_steps[t - 1])


class _ChunkedSelectiveScan(torch.autograd.Function):
    """y_t = <h_t, C_t>, h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, in time-first layouts.

    u, delta: (L, B, D); A: (N, D), transposed; B, C: (L, B, N); returns y (L, B, D).
    Per chunk of K steps it holds (K, B, N, D) tensors, N before D so that every contraction
    with B or C is a batched vector-matrix product over contiguous rows of D. It saves its
    inputs and the state at the end of every chunk but the last, (ceil(L / K) - 1, B, N, D).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk_size):
        length, batch, channels = u.shape
        states = A.shape[0]
        A_log2 = A * LOG2_E
        drive_scale = delta * u
        y = u.new_empty(length, batch, channels)
        starts = range(0, length, chunk_size)
        boundaries = u.new_empty(max(len(starts) - 1, 0), batch, states, channels)
        buffers = _ChunkBuffers(u, chunk_size, states, count=2)
        previous = None
        for index, start in enumerate(starts):
            stop = min(start + chunk_size, length)
            rows = (stop - start) * batch
            (decays, decay_steps), (h, h_steps) = buffers.take(stop - start)
            _chunk_decays(delta[start:stop], A_log2, decays)
            torch.mul(B[start:stop].unsqueeze(3), drive_scale[start:stop].unsqueeze(2), out=h)
            _chunk_states(decay_steps, h_steps, previous)
            torch.bmm(
                C[start:stop].view(rows, 1, states),
                h.view(rows, states, channels),
                out=y[start:stop].view(rows, 1, channels),
            )
            if stop < length:
                previous = boundaries[index].copy_(h[-1])
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(u, delta, A, B, C, boundaries)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, boundaries = ctx.saved_tensors
        length, batch, channels = u.shape
        states = A.shape[0]
        grad_y = grad_y.contiguous()
        A_log2 = A * LOG2_E
        drive_scale = delta * u
        grad_drive_scale = torch.empty_like(u)  # sum_n g_h * B, the gradient of delta * u
        grad_delta_decay = torch.empty_like(u)  # sum_n (dL/d decay) * decay * A
        grad_A = torch.zeros_like(A)
        grad_B = torch.empty_like(B)
        grad_C = torch.empty_like(C)
        buffers = _ChunkBuffers(u, ctx.chunk_size, states, count=3)
        carry = None  # decay_{t+1} * g_h_{t+1} for the first step t + 1 of the chunk after this one
        starts = range(0, length, ctx.chunk_size)
        for index in range(len(starts) - 1, -1, -1):
            start = starts[index]
            stop = min(start + ctx.chunk_size, length)
            rows = (stop - start) * batch
            (decays, decay_steps), (h, h_steps), (grad_h, grad_steps) = buffers.take(stop - start)
            previous = boundaries[index - 1] if index > 0 else None
            _chunk_decays(delta[start:stop], A_log2, decays)
            torch.mul(B[start:stop].unsqueeze(3), drive_scale[start:stop].unsqueeze(2), out=h)
            _chunk_states(decay_steps, h_steps, previous)
            h_rows = h.view(rows, states, channels)
            torch.bmm(
                grad_y[start:stop].view(rows, 1, channels),
                h_rows.transpose(1, 2),
                out=grad_C[start:stop].view(rows, 1, states),
            )

            # Reverse recurrence: g_h_t = C_t g_y_t + decay_{t+1} g_h_{t+1}.
            torch.mul(C[start:stop].unsqueeze(3), grad_y[start:stop].unsqueeze(2), out=grad_h)
            if carry is not None:
                grad_steps[-1].add_(carry)
            for t in range(len(grad_steps) - 2, -1, -1):
                grad_steps[t].addcmul_(decay_steps[t + 1], grad_steps[t + 1])
            grad_h_rows = grad_h.view(rows, states, channels)
            torch.bmm(
                drive_scale[start:stop].view(rows, 1, channels),
                grad_h_rows.transpose(1, 2),
                out=grad_B[start:stop].view(rows, 1, states),
            )
            torch.bmm(
                B[start:stop].view(rows, 1, states),
                grad_h_rows,
                out=grad_drive_scale[start:stop].view(rows, 1, channels),
            )

            # (dL/d decay_t) * decay_t = g_h_t * decay_t * h_{t-1}, built in place of the decays.
            scaled = decays.mul_(grad_h)
            if previous is None:
                scaled[0].zero_()
            else:
                carry = scaled[0].clone()
                scaled[0].mul_(previous)
            scaled[1:].mul_(h[:-1])
            # h is spent: its buffer takes scaled * A, summed over the states.
            torch.sum(torch.mul(scaled, A, out=h), dim=2, out=grad_delta_decay[start:stop])
            grad_A += scaled.mul_(delta[start:stop].unsqueeze(2)).sum(dim=(0, 1))
        grad_u = grad_drive_scale * delta
        grad_delta = torch.addcmul(grad_delta_decay, grad_drive_scale, u)
        return grad_u, grad_delta, grad_A, grad_B, grad_C, None


class _FusedSelectiveScan(torch.autograd.Function):
    """:class:`_ChunkedSelectiveScan` on the fused numba kernels of
    :mod:`speechbrain_ext.mixers.scan_numba`, one pass forward and one backward, in batch-first
    layouts: u, delta (B, L, D); A (N, D); B, C (B, L, N); returns y (B, L, D). It saves the same."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk_size):
        kernels = numba_kernels()
        batch, length, channels = u.shape
        states = A.shape[0]
        A_log2 = A * LOG2_E
        drive_scale = delta * u
        y = torch.empty_like(u)
        boundaries = u.new_empty(max(-(-length // chunk_size) - 1, 0), batch, states, channels)
        constants = kernels.coefficients(_numpy_dtype(u))
        kernels.forward(*_arrays(delta, drive_scale, A_log2, B, C), constants, chunk_size, *_arrays(y, boundaries))
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(u, delta, A, B, C, boundaries)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        kernels = numba_kernels()
        u, delta, A, B, C, boundaries = ctx.saved_tensors
        batch, length, channels = u.shape
        states = A.shape[0]
        chunk_size = min(ctx.chunk_size, length)
        blocks = kernels.blocks(channels)
        width = min(kernels.BLOCK, channels)
        drive_scale = delta * u
        # Per block of channels: the sums over channels (blocks, B, L, N) and dL/dA per utterance.
        grad_B_parts = B.new_empty(blocks, *B.shape)
        grad_C_parts = B.new_empty(blocks, *B.shape)
        grad_A_parts = u.new_empty(batch, states, channels)
        grad_drive_scale = torch.empty_like(u)  # sum_n g_h * B, the gradient of delta * u
        grad_delta_decay = torch.empty_like(u)  # sum_n (dL/d decay) * decay * A
        state_scratch = u.new_empty(batch * blocks, chunk_size + 1, states, width)
        decay_scratch = u.new_empty(batch * blocks, chunk_size, states, width)
        kernels.backward(
            *_arrays(delta, drive_scale, A * LOG2_E, A, B, C), kernels.coefficients(_numpy_dtype(u)), ctx.chunk_size,
            *_arrays(boundaries, grad_y.contiguous(), grad_B_parts, grad_C_parts, grad_drive_scale, grad_delta_decay,
                     grad_A_parts, state_scratch, decay_scratch),
        )
        grad_u = grad_drive_scale * delta
        grad_delta = torch.addcmul(grad_delta_decay, grad_drive_scale, u)
        return grad_u, grad_delta, grad_A_parts.sum(0), grad_B_parts.sum(0), grad_C_parts.sum(0), None


def _arrays(*tensors):
    """NumPy views of contiguous CPU tensors' memory, for the numba kernels."""
    return [tensor.detach().numpy() for tensor in tensors]


def _numpy_dtype(tensor):
    return np.float64 if tensor.dtype == torch.float64 else np.float32


@functools.lru_cache(maxsize=1)
def numba_kernels():
    """:mod:`speechbrain_ext.mixers.scan_numba`, compiled and checked, or None where numba is
    missing or fails (the scan then runs on PyTorch ops)."""
    try:
        from speechbrain_ext.mixers import scan_numba

        scan_numba.self_check()
    except ImportError:
        logger.debug("numba is not installed: the selective scan runs on PyTorch ops")
        return None
    except Exception as error:  # noqa: BLE001 - a failing compiler falls back to PyTorch, loudly
        logger.warning("the numba scan kernels failed (%s): the selective scan runs on PyTorch ops", error)
        return None
    return scan_numba


class _ChunkBuffers:
    """``count`` reusable (K, B, N, D) buffers for the chunks of a (L, B, D) sequence.

    ``take(k)`` gives, per buffer, a contiguous (k, B, N, D) view and its k per-step views.
    """

    def __init__(self, like, chunk_size, states, count):
        length, batch, channels = like.shape
        self.shape = (batch, states, channels)
        self.flat = like.new_empty(count, min(chunk_size, length) * batch * states * channels)

    def take(self, steps):
        size = steps * math.prod(self.shape)
        chunks = [flat[:size].view(steps, *self.shape) for flat in self.flat]
        return [(chunk, chunk.unbind(0)) for chunk in chunks]


def _discretize(delta, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias.unsqueeze(-1)
    return F.softplus(delta) if delta_softplus else delta


def _finish(y, u, D, z):
    if D is not None:
        y = y + u * D.unsqueeze(-1)
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    *,
    chunk_size: int = 32,
    fused: Optional[bool] = None,
) -> torch.Tensor:
    """Selective scan in float32 (float64 for float64 ``u``) on any device, differentiable in every input.

    Arguments
    ---------
    u, delta, z : torch.Tensor
        (B, D, L) input, step sizes and gate.
    A : torch.Tensor
        (D, N) real state matrix (negative for stability).
    B, C : torch.Tensor
        (B, N, L) input and output projections of the state, per time step.
    D : torch.Tensor, optional
        (D,) skip connection.
    delta_bias : torch.Tensor, optional
        (D,) added to ``delta`` before the softplus.
    delta_softplus : bool
        Apply softplus to ``delta``.
    chunk_size : int
        Time steps per chunk, K: the scan holds (K, B, D, N) tensors and one (B, D, N) state per
        chunk, never the (L, B, D, N) states; the result does not depend on it.
    fused : bool, optional
        Run the scan on the fused numba kernels of :mod:`speechbrain_ext.mixers.scan_numba`
        (CPU, decays at most 1: ``A <= 0`` and a non-negative ``delta``). None: wherever they
        apply and numba is installed; False: PyTorch ops; True: the kernels, or an error.

    Returns
    -------
    torch.Tensor
        (B, D, L), in the dtype of ``u``.

    Example
    -------
    >>> u = torch.randn(2, 8, 30)
    >>> A = -torch.rand(8, 4)
    >>> y = selective_scan(u, torch.rand(2, 8, 30), A, torch.randn(2, 4, 30), torch.randn(2, 4, 30))
    >>> y.shape
    torch.Size([2, 8, 30])
    """
    if chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be positive, got {chunk_size}")
    out_dtype = u.dtype
    with torch.autocast(device_type=u.device.type, enabled=False):
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        A = A.to(dtype).t().contiguous()
        if torch.compiler.is_exporting():
            # torch.export (and ONNX through it): the chunked scans loop in Python over a length that is
            # dynamic there, so the recurrence becomes one traced step repeated by torch's scan operator.
            scan, layout, inverse = _traced_scan, (2, 0, 1), (1, 2, 0)
        elif _use_fused(fused, u, delta, A, delta_bias, delta_softplus):
            # Batch first, (B, L, D): MambaBlock's (B, T, D) activations seen as (B, D, L) are then
            # used as they are, without a transposed copy in or out.
            scan, layout, inverse = _FusedSelectiveScan.apply, (0, 2, 1), (0, 2, 1)
        else:
            # Time first, (L, B, D): each step of the PyTorch scan is then one contiguous block.
            scan, layout, inverse = _ChunkedSelectiveScan.apply, (2, 0, 1), (1, 2, 0)
        # All the elementwise work stays in the scan's layout, so autograd never mixes transposed operands.
        u, delta, B, C = (t.to(dtype).permute(*layout).contiguous() for t in (u, delta, B, C))
        if delta_bias is not None:
            delta = delta + delta_bias.to(dtype)
        if delta_softplus:
            delta = F.softplus(delta)
        y = scan(u, delta, A, B, C, chunk_size)
        if D is not None:
            y = torch.addcmul(y, u, D.to(dtype))
        if z is not None:
            y = y * F.silu(z.to(dtype).permute(*layout).contiguous())
    return y.permute(*inverse).to(out_dtype)


def _traced_scan(u, delta, A, B, C, chunk_size):
    """The recurrence of :class:`_ChunkedSelectiveScan` (same layouts) as ``torch.ops.higher_order.scan``
    over time: one step per frame, exported as a loop (ONNX's ``Scan``) for any length; inference only.

    ``chunk_size`` is unused: the step holds one (B, N, D) state.
    """
    from torch._higher_order_ops.scan import scan  # torch's scan operator (not public in torch 2.11)

    def step(state, frame):
        delta_t, drive_t, B_t, C_t = frame  # (B, D), (B, D), (B, N), (B, N)
        state = torch.exp(delta_t.unsqueeze(1) * A) * state + B_t.unsqueeze(2) * drive_t.unsqueeze(1)
        return state, torch.bmm(C_t.unsqueeze(1), state).squeeze(1)

    start = u.new_zeros(u.shape[1], A.shape[0], u.shape[2])
    return scan(step, start, (delta, delta * u, B, C))[1]


def _use_fused(fused: Optional[bool], u, delta, A, delta_bias, delta_softplus: bool) -> bool:
    if fused is False:
        return False
    # The kernels' exp2 takes arguments <= 0. softplus makes delta >= 0; else it is checked,
    # bias included.
    if not delta_softplus and delta_bias is not None:
        delta = delta + delta_bias.unsqueeze(-1)
    problem = ("it runs on the CPU only" if u.device.type != "cpu"
               else "it needs A <= 0" if bool((A > 0).any())
               else "it needs delta >= 0" if not delta_softplus and bool((delta < 0).any()) else None)
    if problem is None and numba_kernels() is None:
        problem = "numba is not installed (pip install speechbrain_ext[cpu]) or failed to compile"
    if problem is not None and fused:
        raise ValueError(f"selective_scan: fused=True cannot run: {problem}")
    if problem is None:
        numba_kernels().set_threads(torch.get_num_threads())  # follow torch.set_num_threads when it changes
    return problem is None


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Step-by-step reference of :func:`selective_scan` (same arguments), in the input dtype.

    Slow and plain on purpose: the tests compare the fast path against it in float64.
    """
    delta = _discretize(delta, delta_bias, delta_softplus)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    outputs = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)
        state = decay * state + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        outputs.append((state * C[:, None, :, t]).sum(-1))
    return _finish(torch.stack(outputs, dim=-1), u, D, z)


def selective_scan_stateful(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    state: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`selective_scan` (same arguments) of a stretch of a longer sequence, from the state the stretch before
    it ended with (``state`` (B, D, N), zeros when None): returns y (B, D, L) and the state after the stretch,
    in float32 (float64 for float64 ``u``). For streaming, where a stretch is a few frames: one step at a time.

    Example
    -------
    >>> u, delta, B, C = torch.randn(1, 4, 9), torch.rand(1, 4, 9), torch.randn(1, 2, 9), torch.randn(1, 2, 9)
    >>> A = -torch.rand(4, 2)
    >>> y1, h = selective_scan_stateful(u[..., :5], delta[..., :5], A, B[..., :5], C[..., :5])
    >>> y2, _ = selective_scan_stateful(u[..., 5:], delta[..., 5:], A, B[..., 5:], C[..., 5:], state=h)
    >>> torch.allclose(torch.cat([y1, y2], -1), selective_scan(u, delta, A, B, C), atol=1e-5)
    True
    """
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    delta = _discretize(delta, None if delta_bias is None else delta_bias.to(dtype), delta_softplus)
    decays = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # (B, D, L, N)
    drives = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (B, D, L, N)
    if state is None:
        state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    outputs = []
    for t in range(u.shape[2]):
        state = decays[:, :, t] * state + drives[:, :, t]
        outputs.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    y = torch.stack(outputs, dim=-1)
    return _finish(y, u, None if D is None else D.to(dtype), None if z is None else z.to(dtype)), state
