"""SpeechBrain's CNN front-end, computed without its layout copies.

SpeechBrain's ``ConvolutionFrontEnd`` keeps its maps as (batch, time, freq, channels) and, for
every ``Conv2d``, transposes them to (batch, channels, freq, time), pads them with ``F.pad`` and
transposes the result back: three full copies of the largest tensors of the model per
convolution, forward and backward (at 80 s the first block's map is (B, 4000, 40, 128)). A
(batch, time, freq, channels) tensor is already a channels-last (batch, channels, time, freq)
one, so here every convolution runs on that memory as it lies (oneDNN's channels-last kernels),
padded in that layout (SpeechBrain pads by reflection), and the LayerNorm over (freq, channels), the LeakyReLU
and the dropout run on contiguous memory. The first convolution has one input channel: it is a
9-tap matrix product on the unfolded fbank, which writes its output channels-last directly.

The module *is* a ``ConvolutionFrontEnd`` (same submodules, parameter names and shapes, so
SpeechBrain checkpoints load either way) and computes the same function: outputs and gradients
equal SpeechBrain's within float rounding (``tests/test_front_end.py``). Only the configuration
the paper's encoder uses has the fast path (1 layer per block, no residual, "same" padding,
LayerNorm, LeakyReLU); any other falls back to SpeechBrain's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.nnet.CNN import get_padding_elem
from speechbrain.nnet.normalization import LayerNorm

from speechbrain_ext.models.dropout import cpu_dropout


class FastConvolutionFrontEnd(ConvolutionFrontEnd):
    """``ConvolutionFrontEnd`` with a channels-last forward: same parameters, same outputs, faster.

    Takes SpeechBrain's arguments; see the module docstring for what changes (only the memory
    layout of the computation).

    Example
    -------
    >>> front_end = FastConvolutionFrontEnd(input_shape=(None, None, 80), num_blocks=2,
    ...     num_layers_per_block=1, out_channels=(128, 32), kernel_sizes=(3, 3), strides=(2, 2),
    ...     residuals=(False, False))
    >>> front_end(torch.randn(2, 100, 80)).shape
    torch.Size([2, 25, 20, 32])
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fast_path = all(self._block_is_plain(block) for block in self.children())

    @staticmethod
    def _block_is_plain(block: torch.nn.Module) -> bool:
        """One conv, LayerNorm, LeakyReLU, Dropout; no residual; "same" zero padding; odd kernel."""
        layers = list(block.convs.children())
        if block.reduce_conv is not None or len(layers) != 4:
            return False
        conv, norm, act, drop = layers
        inner = getattr(conv, "conv", None)
        return (
            isinstance(inner, torch.nn.Conv2d)
            and getattr(conv, "padding", None) == "same"
            and getattr(conv, "padding_mode", None) in _PAD_MODES
            and not getattr(conv, "swap", False)
            and getattr(conv, "max_norm", None) is None
            and inner.dilation == (1, 1)
            and inner.groups == 1
            and all(k % 2 == 1 for k in inner.kernel_size)
            and isinstance(norm, LayerNorm)
            and isinstance(act, torch.nn.LeakyReLU)
            and isinstance(drop, torch.nn.Dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) fbank (or (B, T, F, C) maps) to (B, T', F', C') maps, as SpeechBrain's."""
        if not getattr(self, "fast_path", False):  # SpeechBrain calls forward while building
            return super().forward(x)
        x = x if x.dim() == 4 else x.unsqueeze(-1)  # (B, T, F, C): a channels-last (B, C, T, F)
        for block in self.children():
            conv, norm, act, drop = block.convs.children()
            x = _conv_channels_last(x, conv)
            x = F.layer_norm(x, norm.norm.normalized_shape, norm.norm.weight, norm.norm.bias, norm.norm.eps)
            x = F.leaky_relu(x, act.negative_slope, inplace=True)  # its backward reads the output
            x = cpu_dropout(x, drop.p, self.training)
        return x


def _padding_same(conv: torch.nn.Module) -> tuple[int, int, int, int]:
    """SpeechBrain's "same" padding of (time, freq), (left, right) each, as its ``Conv2d`` pads."""
    time = get_padding_elem(conv.in_channels, conv.stride[-1], conv.kernel_size[-1], conv.dilation[-1])
    freq = get_padding_elem(conv.in_channels, conv.stride[-2], conv.kernel_size[-2], conv.dilation[-2])
    return (*time, *freq)


def _conv_channels_last(x: torch.Tensor, conv: torch.nn.Module) -> torch.Tensor:
    """SpeechBrain's ``Conv2d`` on (B, T, F, C) maps, returning (B, T', F', C') without layout copies.

    SpeechBrain's weight is (out, in, k_freq, k_time) for its (B, C, F, T) layout; on
    (B, C, T, F) it is the same weight with the kernel axes swapped.
    """
    inner = conv.conv
    time_left, time_right, freq_left, freq_right = _padding_same(conv)
    weight = inner.weight.transpose(2, 3)  # (out, in, k_time, k_freq)
    stride = (inner.stride[1], inner.stride[0])
    pads = (freq_left, freq_right, time_left, time_right)
    if x.shape[-1] == 1:
        return _single_channel_conv(x[..., 0], weight, inner.bias, stride, pads, conv.padding_mode)
    x = x.permute(0, 3, 1, 2)  # (B, C, T, F) with channels-last strides: a view
    if conv.padding_mode == "zeros" and time_left == time_right and freq_left == freq_right:
        padding = (time_left, freq_left)  # inside the convolution: no padded copy
    else:
        x, padding = F.pad(x, pads, mode=_PAD_MODES[conv.padding_mode]), (0, 0)  # stays channels-last
    out = F.conv2d(x, weight.contiguous(memory_format=torch.channels_last), inner.bias, stride, padding)
    return out.permute(0, 2, 3, 1)  # (B, T', F', C'): a view, the kernel wrote channels-last


# nn.Conv2d's padding_mode names (SpeechBrain passes them to F.pad, which calls zeros "constant").
_PAD_MODES = {"zeros": "constant", "constant": "constant", "reflect": "reflect", "replicate": "replicate",
              "circular": "circular"}


def _single_channel_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
    pads: tuple[int, int, int, int], padding_mode: str,
) -> torch.Tensor:
    """A one-input-channel convolution of (B, T, F) as unfolded taps @ weight: (B, T', F', C')."""
    k_time, k_freq = weight.shape[-2:]
    padded = F.pad(x.unsqueeze(1), pads, mode=_PAD_MODES[padding_mode]).squeeze(1)
    # (B, T', F', k_time, k_freq): strided windows, a view; the product reads each tap once.
    windows = padded.unfold(1, k_time, stride[0]).unfold(2, k_freq, stride[1])
    taps = windows.reshape(-1, k_time * k_freq)
    kernel = weight.reshape(weight.shape[0], k_time * k_freq).t()
    out = taps @ kernel if bias is None else torch.addmm(bias, taps, kernel)
    return out.view(*windows.shape[:3], weight.shape[0])
