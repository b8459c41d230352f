"""Depthwise 1-D convolution over time on (B, T, D) frames, as ``nn.Conv1d(groups=D)`` computes it.

The Conformer's convolution module and Mamba's short causal convolution are depthwise: each
channel is convolved with its own kernel. PyTorch runs them on (B, D, T) tensors, so a
(B, T, D) model transposes (copies) around every one, and on the CPU oneDNN's depthwise backward
was the largest single cost of a Mamba training step at 80 s (and it slows down badly when
another process shares the cores). Here, on the CPU, the convolution is K fused multiply-adds
of shifted (B, T, D) views, forward and backward, with no transposed copy; the parameters are
the ``nn.Conv1d``'s own, so checkpoints and SpeechBrain's modules are unchanged. Other devices use
``F.conv1d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _DepthwiseTimeMajor(torch.autograd.Function):
    """out[:, t] = bias + sum_k weight[:, k] * x[:, t - left + k] (zero outside 0..T-1), x (B, T, D)."""

    @staticmethod
    def forward(ctx, x, weight, bias, left):
        kernel, length = weight.shape[-1], x.shape[1]
        padded = F.pad(x, (0, 0, left, kernel - 1 - left))
        taps = weight[:, 0, :].t().contiguous()  # (K, D)
        out = torch.mul(padded[:, :length], taps[0])
        if bias is not None:
            out += bias
        for k in range(1, kernel):
            out.addcmul_(padded[:, k : k + length], taps[k])
        ctx.save_for_backward(padded, taps)
        ctx.left, ctx.has_bias = left, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        padded, taps = ctx.saved_tensors
        kernel, length = taps.shape[0], grad.shape[1]
        grad = grad.contiguous()
        grad_padded = grad.new_zeros(padded.shape)
        for k in range(kernel):
            grad_padded[:, k : k + length].addcmul_(grad, taps[k])
        grad_taps = torch.stack([(padded[:, k : k + length] * grad).sum(dim=(0, 1)) for k in range(kernel)])
        grad_bias = grad.sum(dim=(0, 1)) if ctx.has_bias else None
        return grad_padded[:, ctx.left : ctx.left + length], grad_taps.t().unsqueeze(1), grad_bias, None


def depthwise_conv_time_major(x: torch.Tensor, conv: torch.nn.Conv1d, left: int) -> torch.Tensor:
    """``conv`` (a depthwise ``nn.Conv1d``, stride 1, dilation 1) on (B, T, D) frames, ``left`` frames
    of zero padding before and ``K - 1 - left`` after: (B, T, D), the same values as
    ``conv`` on ``x.transpose(1, 2)`` with that padding.

    Example
    -------
    >>> conv = torch.nn.Conv1d(8, 8, 3, groups=8, padding=1)
    >>> x = torch.randn(2, 10, 8)
    >>> torch.allclose(depthwise_conv_time_major(x, conv, 1), conv(x.transpose(1, 2)).transpose(1, 2), atol=1e-6)
    True
    """
    kernel = conv.kernel_size[0]
    if conv.groups != conv.in_channels or conv.in_channels != conv.out_channels:
        raise ValueError(f"depthwise_conv_time_major needs a depthwise convolution, got {conv}")
    if conv.stride != (1,) or conv.dilation != (1,) or not 0 <= left < kernel:
        raise ValueError(f"depthwise_conv_time_major needs stride 1, dilation 1 and 0 <= left < {kernel}: {conv}")
    if x.device.type != "cpu" or torch.is_autocast_enabled(x.device.type):
        padded = F.pad(x.transpose(1, 2), (left, kernel - 1 - left))
        return F.conv1d(padded, conv.weight, conv.bias, groups=conv.groups).transpose(1, 2)
    dtype = torch.promote_types(x.dtype, conv.weight.dtype)
    bias = None if conv.bias is None else conv.bias.to(dtype)
    return _DepthwiseTimeMajor.apply(x.to(dtype), conv.weight.to(dtype), bias, left)
