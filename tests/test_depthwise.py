"""The time-major depthwise convolution equals nn.Conv1d; the Conformer module using it equals SpeechBrain's."""

import pytest
import torch
from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule

from speechbrain_ext.mixers.depthwise import depthwise_conv_time_major
from speechbrain_ext.models.encoder import masked_convolution


@pytest.mark.parametrize("kernel, left", [(31, 15), (4, 3), (3, 0), (1, 0)])
def test_same_outputs_and_gradients_as_conv1d(kernel, left):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, kernel, groups=6).double()
    x = torch.randn(3, 40, 12, dtype=torch.float64)[..., :6]  # a strided view, as Mamba's in_proj gives
    weights = torch.randn(3, 40, 6, dtype=torch.float64)

    def run(function):
        inputs = x.clone().requires_grad_(True)
        out = function(inputs)
        return (out, *torch.autograd.grad((out * weights).sum(), [inputs, conv.weight, conv.bias]))

    def padded_conv1d(v):
        return conv(torch.nn.functional.pad(v.transpose(1, 2), (left, kernel - 1 - left))).transpose(1, 2)

    reference = run(padded_conv1d)
    ours = run(lambda v: depthwise_conv_time_major(v, conv, left))
    for got, expected in zip(ours, reference):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-11)


def test_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="depthwise"):
        depthwise_conv_time_major(torch.randn(1, 5, 4), torch.nn.Conv1d(4, 4, 3), 1)
    with pytest.raises(ValueError, match="dilation 1"):
        depthwise_conv_time_major(torch.randn(1, 5, 4), torch.nn.Conv1d(4, 4, 3, groups=4, dilation=2), 1)


@pytest.mark.parametrize("causal", [False, True])
def test_conformer_convolution_module_equals_speechbrains(causal):
    torch.manual_seed(0)
    module = ConvolutionModule(16, 7, bias=True, dropout=0.0, causal=causal).double().eval()
    x = torch.randn(2, 30, 16, dtype=torch.float64, requires_grad=True)
    expected = module(x)  # SpeechBrain's own forward, no padding mask
    grads_expected = torch.autograd.grad(expected.pow(2).sum(), [x, *module.parameters()])
    out = masked_convolution(module, x, None)
    grads = torch.autograd.grad(out.pow(2).sum(), [x, *module.parameters()])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-11)
    for got, want in zip(grads, grads_expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_under_autocast_it_uses_the_convolution_kernel():
    conv = torch.nn.Conv1d(8, 8, 5, groups=8)
    x = torch.randn(2, 20, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = depthwise_conv_time_major(x, conv, 2)
    assert out.dtype == torch.bfloat16
    expected = conv(torch.nn.functional.pad(x.transpose(1, 2), (2, 2))).transpose(1, 2)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
