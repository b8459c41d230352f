"""Fused CPU kernels of the selective scan, compiled by numba when it is installed.

The PyTorch scan of :mod:`speechbrain_ext.mixers.scan` is one eager op per pass over its
(K, B, N, D) chunks: about six passes in the forward, twenty in the backward, and a per-step
recurrence on one core. These kernels compute the same thing in one pass each way. Every
(utterance, block of 128 channels) is one parallel job that walks the whole sequence with its
(N, 128) state in L1; the decays exp(delta A), the contractions with B and C and every gradient
are computed in the same loop, nothing of size (L, B, N, D) is ever written. Memory is that of the
PyTorch scan: the forward keeps the state at every ``chunk``-th step, the backward recomputes each
chunk's states from it.

The decays use their own exp2 (a degree-13 polynomial after range reduction in float64, relative
error below 1e-16, degree 7 in float32; numba's ``exp`` is a scalar libm call without Intel's
SVML), so the kernels require decays of at most 1 (``A <= 0`` and ``delta >= 0``, as in Mamba).
Decays below 2**-126 (about 1e-38) are taken as 2**-126.

Importing this module needs numba (``pip install speechbrain_ext[cpu]``); numba compiles the
kernels on first use (about 30 s) and caches them on disk. :func:`speechbrain_ext.mixers.scan.numba_kernels`
loads them, or returns None so that the scan falls back to PyTorch.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import njit, prange

# Channels per parallel job: a (N=16, 128) float32 state is 8 KiB, inside L1. 64 was slower
# (more loop entries per element), 256 no faster.
BLOCK = 128
# Reassociation lets LLVM vectorise the sums over channels; no NaN/Inf assumptions, so a
# non-finite input gives a non-finite output as in PyTorch.
FASTMATH = {"contract", "reassoc", "nsz"}
# exp2(v) = 2**k * exp(r ln 2), k = round(v), |r| <= 1/2: Taylor coefficients of exp up to
# degree 13 (remainder below 4e-18 relative for |r ln 2| <= 0.347; float32 stops at degree 7,
# below 6e-9); then ln 2, the smallest k (2**k stays a normal float32 for k >= -126), 1/2, and
# 1 for float64's degree. One array, in the kernels' dtype, so float32 kernels compute in float32.
EXP2_CONSTANTS = np.array([1.0 / math.factorial(k) for k in range(14)] + [math.log(2.0), -126.0, 0.5])


def blocks(channels: int) -> int:
    """Number of channel blocks of one utterance."""
    return (channels + BLOCK - 1) // BLOCK


@njit(fastmath=FASTMATH, inline="always", cache=True)
def decay_row(delta, a2, coefficients, out, bits, powers, width):  # pragma: no cover - compiled
    """out[j] = exp2(delta[j] * a2[j]) for j < width, for arguments <= 0.

    ``bits`` (int32) and ``powers`` (its float32 view) build 2**k from its exponent bits.
    """
    # Constants into registers first: LLVM cannot hoist their loads past the stores to ``out``.
    c0, c1, c2, c3, c4, c5, c6 = (coefficients[0], coefficients[1], coefficients[2], coefficients[3],
                                  coefficients[4], coefficients[5], coefficients[6])
    c7, c8, c9, c10, c11, c12, c13 = (coefficients[7], coefficients[8], coefficients[9], coefficients[10],
                                      coefficients[11], coefficients[12], coefficients[13])
    ln2, lowest, half, double = coefficients[14], coefficients[15], coefficients[16], coefficients[17]
    if double:  # degree 13: float64's precision
        for j in range(width):
            v = delta[j] * a2[j]
            v = v if v > lowest else lowest
            k = np.floor(v + half)
            r = (v - k) * ln2
            p = c13 * r + c12
            p = p * r + c11
            p = p * r + c10
            p = p * r + c9
            p = p * r + c8
            p = p * r + c7
            p = p * r + c6
            p = p * r + c5
            p = p * r + c4
            p = p * r + c3
            p = p * r + c2
            p = p * r + c1
            out[j] = p * r + c0
            bits[j] = (np.int32(k) + np.int32(127)) << 23
    else:  # degree 7, remainder below 6e-9: float32's precision at half the work
        for j in range(width):
            v = delta[j] * a2[j]
            v = v if v > lowest else lowest
            k = np.floor(v + half)
            r = (v - k) * ln2
            p = c7 * r + c6
            p = p * r + c5
            p = p * r + c4
            p = p * r + c3
            p = p * r + c2
            p = p * r + c1
            out[j] = p * r + c0
            bits[j] = (np.int32(k) + np.int32(127)) << 23
    for j in range(width):
        out[j] *= powers[j]

jit = functools.partial(njit, parallel=True, fastmath=FASTMATH, cache=True, nogil=True)

@jit
def forward(delta, drive_scale, A2, B, C, coefficients, chunk, y, boundaries):  # pragma: no cover - compiled
    """y_t = <h_t, C_t>, h_t = exp2(delta_t A2) h_{t-1} + B_t drive_scale_t, h_{-1} = 0.

    Batch first: delta, drive_scale (B, L, D); A2 (N, D), A log2(e); B, C (B, L, N); y (B, L, D) out;
    boundaries (ceil(L / chunk) - 1, B, N, D) out: the state after every chunk but the last.
    """
    batch, length, channels = delta.shape
    states = A2.shape[0]
    count = (channels + BLOCK - 1) // BLOCK
    for job in prange(batch * count):
        b = job // count
        d0 = (job % count) * BLOCK
        width = min(BLOCK, channels - d0)
        h = np.zeros((states, width), dtype=delta.dtype)
        out = np.empty(width, dtype=delta.dtype)
        decay = np.empty(width, dtype=delta.dtype)
        bits = np.empty(width, dtype=np.int32)
        powers = bits.view(np.float32)
        for t in range(length):
            x = drive_scale[b, t, d0:d0 + width]
            dt = delta[b, t, d0:d0 + width]
            out[:] = 0.0
            for n in range(states):
                decay_row(dt, A2[n, d0:d0 + width], coefficients, decay, bits, powers, width)
                bn = B[b, t, n]
                cn = C[b, t, n]
                hn = h[n]
                for j in range(width):
                    value = decay[j] * hn[j] + bn * x[j]
                    hn[j] = value
                    out[j] += cn * value
            y[b, t, d0:d0 + width] = out
            if (t + 1) % chunk == 0 and t + 1 < length:
                boundaries[(t + 1) // chunk - 1, b, :, d0:d0 + width] = h

@jit
def backward(delta, drive_scale, A2, A, B, C, coefficients, chunk, boundaries, grad_y,
             grad_B_parts, grad_C_parts, grad_drive_scale, grad_delta_decay, grad_A_parts,
             state_scratch, decay_scratch):  # pragma: no cover - compiled
    """The gradients of :func:`forward`, chunk by chunk from the last.

    Each chunk's states are recomputed from its boundary, then the walk goes back:
    g_h_t = C_t g_y_t + decay_{t+1} g_h_{t+1}. Sums over channels are per block of
    channels, in ``grad_B_parts`` / ``grad_C_parts`` (blocks, B, L, N); ``grad_A_parts``
    (B, N, D) is per utterance. Scratch (B * blocks, chunk + 1 / chunk, N, <= BLOCK).
    """
    batch, length, channels = delta.shape
    states = A2.shape[0]
    count = (channels + BLOCK - 1) // BLOCK
    chunks = (length + chunk - 1) // chunk
    for job in prange(batch * count):
        b = job // count
        block = job % count
        d0 = block * BLOCK
        width = min(BLOCK, channels - d0)
        hs = state_scratch[job]  # hs[s + 1]: the state after step s of the chunk; hs[0] its start
        decays = decay_scratch[job]
        g = np.zeros((states, width), dtype=delta.dtype)  # decay_{t+1} * g_h_{t+1}
        grad_a = np.zeros((states, width), dtype=delta.dtype)
        grad_x = np.empty(width, dtype=delta.dtype)
        grad_dd = np.empty(width, dtype=delta.dtype)
        bits = np.empty(width, dtype=np.int32)
        powers = bits.view(np.float32)
        zero = delta.dtype.type(0)  # sums in the input's precision, as PyTorch's
        for c in range(chunks - 1, -1, -1):
            start = c * chunk
            steps = min(chunk, length - start)
            if c == 0:
                hs[0, :, :width] = 0.0
            else:
                hs[0, :, :width] = boundaries[c - 1, b, :, d0:d0 + width]
            for s in range(steps):
                t = start + s
                x = drive_scale[b, t, d0:d0 + width]
                gy = grad_y[b, t, d0:d0 + width]
                dt = delta[b, t, d0:d0 + width]
                for n in range(states):
                    decay = decays[s, n]
                    decay_row(dt, A2[n, d0:d0 + width], coefficients, decay, bits, powers, width)
                    bn = B[b, t, n]
                    previous = hs[s, n]
                    current = hs[s + 1, n]
                    total = zero
                    for j in range(width):
                        value = decay[j] * previous[j] + bn * x[j]
                        current[j] = value
                        total += gy[j] * value
                    grad_C_parts[block, b, t, n] = total
            for s in range(steps - 1, -1, -1):
                t = start + s
                x = drive_scale[b, t, d0:d0 + width]
                gy = grad_y[b, t, d0:d0 + width]
                dt = delta[b, t, d0:d0 + width]
                grad_x[:] = 0.0
                grad_dd[:] = 0.0
                for n in range(states):
                    bn = B[b, t, n]
                    cn = C[b, t, n]
                    decay = decays[s, n]
                    previous = hs[s, n]
                    gn = g[n]
                    # Rows of the full arrays keep a contiguous type (a 2-D slice's rows
                    # would not, and LLVM would not vectorise them).
                    an = A[n, d0:d0 + width]
                    grad_an = grad_a[n]
                    total = zero
                    for j in range(width):
                        grad_h = gn[j] + cn * gy[j]
                        total += x[j] * grad_h
                        grad_x[j] += bn * grad_h
                        # dL/d(decay_t) * decay_t, the gradient of delta_t * A.
                        scaled = grad_h * decay[j] * previous[j]
                        grad_dd[j] += an[j] * scaled
                        grad_an[j] += dt[j] * scaled
                        gn[j] = grad_h * decay[j]
                    grad_B_parts[block, b, t, n] = total
                grad_drive_scale[b, t, d0:d0 + width] = grad_x
                grad_delta_decay[b, t, d0:d0 + width] = grad_dd
        grad_A_parts[b, :, d0:d0 + width] = grad_a


def coefficients(dtype) -> np.ndarray:
    """The exp2 constants in ``dtype`` (the kernels compute in their input's dtype)."""
    return np.append(EXP2_CONSTANTS, 1.0 if dtype == np.float64 else 0.0).astype(dtype)


def self_check() -> None:
    """Compiles both kernels for float32 and float64 on a tiny input and checks one forward."""
    for dtype in (np.float32, np.float64):
        length, batch, states, channels, chunk = 3, 1, 2, 3, 2
        delta = np.full((batch, length, channels), 1.0, dtype)
        drive = np.ones((batch, length, channels), dtype)
        proj = np.ones((batch, length, states), dtype)
        A2 = np.full((states, channels), -1.0, dtype)  # decays of 1/2
        y = np.empty_like(drive)
        boundaries = np.empty((1, batch, states, channels), dtype)
        forward(delta, drive, A2, proj, proj, coefficients(dtype), chunk, y, boundaries)
        if not np.allclose(y[0, :, 0], [2.0, 3.0, 3.5]):  # h = 1, 1.5, 1.75 per state, two states
            raise RuntimeError(f"numba scan kernel self-check failed: {y[0, :, 0]}")
        parts = np.empty((1, batch, length, states), dtype)
        backward(delta, drive, A2, A2, proj, proj, coefficients(dtype), chunk, boundaries, drive,
                 parts, parts.copy(), np.empty_like(drive), np.empty_like(drive),
                 np.empty((batch, states, channels), dtype), np.empty((1, chunk + 1, states, channels), dtype),
                 np.empty((1, chunk, states, channels), dtype))


def set_threads(count: int) -> None:
    """Runs the kernels on ``count`` threads (at most the threads numba started with).

    numba's thread count is changed only when it differs from ``count``, so a scan call with
    the same torch thread count as the last one changes no global state.
    """
    count = max(1, min(count, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != count:
        numba.set_num_threads(count)
