"""Pure-PyTorch selective scan: the maths of Mamba's ``selective_scan_fn`` without CUDA.

Mamba (Gu & Dao 2023, https://arxiv.org/abs/2312.00752) runs, per channel d and state n,

    delta = softplus(delta + delta_bias)
    h_t   = exp(delta_t A) * h_{t-1} + delta_t B_t u_t
    y_t   = <h_t, C_t> + D u_t,   then   y_t *= silu(z_t)

``selective_scan`` is the fast CPU/fallback path: everything but the recurrence is computed
in parallel over time, and the recurrence itself is one fused multiply-add per step inside a
custom autograd function whose backward is the reverse recurrence (linear in T; an autograd
graph of per-step slices would make the backward quadratic). ``selective_scan_ref`` is the
step-by-step reference used by the tests. Both take the arguments of
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (real A, time-varying B and C).
"""

from typing import Optional

import torch
import torch.nn.functional as F


class _LinearRecurrence(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t with h_{-1} = 0, over the first dimension of (T, ...) tensors."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        states = torch.empty_like(b)
        out_steps = states.unbind(0)
        previous = None
        for a_t, b_t, out_t in zip(a.unbind(0), b.unbind(0), out_steps):
            if previous is None:
                out_t.copy_(b_t)
            else:
                torch.addcmul(b_t, a_t, previous, out=out_t)
            previous = out_t
        ctx.save_for_backward(a, states)
        return states

    @staticmethod
    def backward(ctx, grad_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, states = ctx.saved_tensors
        grad_b = torch.empty_like(grad_states)
        grad_steps = grad_b.unbind(0)
        a_steps = a.unbind(0)
        incoming = grad_states.unbind(0)
        last = len(grad_steps) - 1
        grad_steps[last].copy_(incoming[last])
        # Reverse recurrence: g_t = dL/dh_t (direct) + a_{t+1} * g_{t+1}.
        for t in range(last - 1, -1, -1):
            torch.addcmul(incoming[t], a_steps[t + 1], grad_steps[t + 1], out=grad_steps[t])
        grad_a = torch.zeros_like(a)
        grad_a[1:] = grad_b[1:] * states[:-1]
        return grad_a, grad_b


def linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All states of h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) along dim 0 of (T, ...) tensors."""
    if a.shape != b.shape:
        raise ValueError(f"linear_recurrence: a {tuple(a.shape)} and b {tuple(b.shape)} differ")
    return _LinearRecurrence.apply(a.contiguous(), b.contiguous())


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
) -> torch.Tensor:
    """Selective scan in float32 on any device, differentiable in every input.

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
    out_dtype = u.dtype
    with torch.autocast(device_type=u.device.type, enabled=False):
        compute_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        u, delta, A, B, C = (t.to(compute_dtype) for t in (u, delta, A, B, C))
        delta = _discretize(delta, None if delta_bias is None else delta_bias.to(compute_dtype), delta_softplus)
        # Time first, so that each step of the recurrence reads contiguous memory: (L, B, D, N).
        delta_t = delta.permute(2, 0, 1).unsqueeze(-1)
        decay = torch.exp(delta_t * A)
        drive = (delta_t * u.permute(2, 0, 1).unsqueeze(-1)) * B.permute(2, 0, 1).unsqueeze(2)
        states = linear_recurrence(decay, drive)
        y = torch.einsum("lbdn,lbn->bdl", states, C.permute(2, 0, 1))
        y = _finish(
            y,
            u,
            None if D is None else D.to(compute_dtype),
            None if z is None else z.to(compute_dtype),
        )
    return y.to(out_dtype)


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
