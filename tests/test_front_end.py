"""FastConvolutionFrontEnd computes SpeechBrain's ConvolutionFrontEnd: same parameters, outputs, gradients."""

import pytest
import torch
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd

from speechbrain_ext.models.dropout import FastDropout, cpu_dropout
from speechbrain_ext.models.front_end import FastConvolutionFrontEnd
from speechbrain_ext.models.speech_encoder import SpeechEncoder


def front_ends(n_mels=80, channels=(128, 32), dtype=torch.float64, **options):
    """SpeechBrain's front-end as SpeechEncoder builds it, and ours with the same weights."""
    settings = dict(input_shape=(None, None, n_mels), num_blocks=2, num_layers_per_block=1,
                    out_channels=channels, kernel_sizes=(3, 3), strides=(2, 2), residuals=(False, False),
                    **options)
    torch.manual_seed(0)
    reference = ConvolutionFrontEnd(**settings)
    for name, parameter in reference.named_parameters():  # LayerNorm's affine is 1, 0 at init: make it count
        if ".norm_" in name:
            parameter.data.add_(0.2 * torch.randn_like(parameter))
    fast = FastConvolutionFrontEnd(**settings)
    fast.load_state_dict(reference.state_dict())  # strict: same names and shapes
    return reference.eval().to(dtype), fast.eval().to(dtype)


def outputs_and_grads(module, x, weights):
    x = x.clone().requires_grad_(True)
    out = module(x)
    grads = torch.autograd.grad((out * weights).sum(), [x, *module.parameters()])
    return out, grads


@pytest.mark.parametrize("frames, n_mels", [(400, 80), (401, 80), (37, 80), (103, 41), (5, 80), (4, 80)])
def test_same_outputs_and_gradients_as_speechbrain(frames, n_mels):
    # Odd lengths reach the right-hand reflection; 4 frames is the shortest SpeechEncoder gives (and
    # the shortest SpeechBrain reflects: its second block needs 2 frames).
    reference, fast = front_ends(n_mels=n_mels)
    x = torch.randn(3, frames, n_mels, dtype=torch.float64)
    x[1, frames // 2 :] = 0.0  # padded frames, zeroed as SpeechEncoder.features leaves them
    expected, expected_grads = outputs_and_grads(reference, x, torch.ones(()))
    weights = torch.randn_like(expected)
    expected, expected_grads = outputs_and_grads(reference, x, weights)
    out, grads = outputs_and_grads(fast, x, weights)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    assert len(grads) == len(expected_grads) == 1 + 8  # the input and both blocks' conv and norm
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-9)


def test_float32_within_1e5_of_speechbrain_at_80_seconds_shape():
    reference, fast = front_ends(dtype=torch.float32)
    x = torch.randn(2, 2000, 80)
    weights = torch.randn(2, 500, 20, 32)
    expected, expected_grads = outputs_and_grads(reference, x, weights)
    out, grads = outputs_and_grads(fast, x, weights)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        # parameter gradients sum over 10^5-10^6 terms: relative to their size
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5 * expected_grad.abs().max().item())


def test_speechbrain_checkpoints_load_both_ways():
    reference, fast = front_ends()
    assert list(dict(fast.named_parameters())) == list(dict(reference.named_parameters()))
    assert "convblock_0.convs.conv_0.conv.weight" in dict(fast.named_parameters())
    round_trip = ConvolutionFrontEnd(input_shape=(None, None, 80), num_blocks=2, num_layers_per_block=1,
                                     out_channels=(128, 32), kernel_sizes=(3, 3), strides=(2, 2),
                                     residuals=(False, False)).double()
    round_trip.load_state_dict(fast.state_dict())
    x = torch.randn(1, 50, 80, dtype=torch.float64)
    torch.testing.assert_close(round_trip.eval()(x), reference(x))


def test_other_configurations_fall_back_to_speechbrain():
    settings = dict(input_shape=(None, None, 40), num_blocks=2, num_layers_per_block=2, out_channels=(8, 8),
                    kernel_sizes=(3, 3), strides=(1, 2), residuals=(True, False))
    torch.manual_seed(0)
    reference = ConvolutionFrontEnd(**settings).eval()
    fast = FastConvolutionFrontEnd(**settings).eval()
    fast.load_state_dict(reference.state_dict())
    assert not fast.fast_path
    x = torch.randn(2, 30, 40)
    torch.testing.assert_close(fast(x), reference(x))


def test_speech_encoder_front_ends_give_the_same_encoding():
    torch.manual_seed(0)
    ours = SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4).eval()
    stock = SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4,
                          implementation="speechbrain").eval()
    assert type(ours.front_end) is FastConvolutionFrontEnd and type(stock.front_end) is ConvolutionFrontEnd
    stock.load_state_dict(ours.state_dict())
    wavs, lens = torch.randn(2, 24000), torch.tensor([1.0, 0.6])
    torch.testing.assert_close(ours(wavs, lens).out, stock(wavs, lens).out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown implementation 'cudnn'"):
        SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4, implementation="cudnn")


def test_an_encoder_exported_with_speechbrains_modules_loads_into_the_fast_one(tmp_path):
    encoder = SpeechEncoder("mamba", num_layers=1, d_model=32, d_ffn=64, nhead=1, implementation="speechbrain")
    folder = encoder.save_pretrained(tmp_path / "enc")
    config = SpeechEncoder.read_config(folder)
    assert config["implementation"] == "speechbrain"
    fast = SpeechEncoder(**{**config, "implementation": "fast"})
    assert type(fast.front_end) is FastConvolutionFrontEnd
    fast.load_state_dict(torch.load(folder / "encoder.ckpt", weights_only=True), strict=True)
    wavs, lens = torch.randn(1, 16000), torch.tensor([1.0])
    torch.testing.assert_close(fast.eval()(wavs, lens).out, encoder.eval()(wavs, lens).out, rtol=1e-5, atol=1e-5)


def test_cpu_dropout_is_dropout():
    torch.manual_seed(3)
    x = torch.randn(400, 1000, requires_grad=True)
    state = torch.get_rng_state()
    out = cpu_dropout(x, 0.1, training=True)
    dropped = out == 0
    # 4e5 independent Bernoulli(0.1): the share is within 5 standard deviations (0.0024) of 0.1
    assert abs(dropped.float().mean().item() - 0.1) < 5 * (0.1 * 0.9 / x.numel()) ** 0.5
    torch.testing.assert_close(out[~dropped], x[~dropped] / 0.9)
    out.backward(torch.full_like(out, 2.0))
    torch.testing.assert_close(x.grad, torch.where(dropped, 0.0, 2.0 / 0.9))
    # neighbouring elements are independent (the two halves of each 64-bit draw)
    pairs = dropped.flatten()[: 2 * (x.numel() // 2)].view(-1, 2).float()
    assert abs((pairs[:, 0] * pairs[:, 1]).mean().item() - 0.01) < 5 * (0.01 * 0.99 / pairs.shape[0]) ** 0.5
    # torch's generator decides the mask: same seed, same mask; evaluation is the identity
    torch.set_rng_state(state)
    torch.testing.assert_close(cpu_dropout(x.detach(), 0.1, training=True), out.detach())
    assert cpu_dropout(x, 0.1, training=False) is x
    assert cpu_dropout(x, 0.0, training=True) is x


def test_bf16_autocast_runs_close_to_float32():
    reference, fast = front_ends(dtype=torch.float32)
    x = torch.randn(2, 200, 80)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    expected = reference(x)
    assert out.shape == expected.shape and torch.isfinite(out).all()
    assert (out.float() - expected).abs().mean() < 0.05 * expected.abs().mean()


def test_fast_implementation_swaps_every_dropout_and_trains_alike():
    torch.manual_seed(0)
    # dropout alone: no LayerDrop, and small initial weights so that 40 draws average the masks out
    settings = {"num_layers": 2, "d_model": 32, "d_ffn": 64, "nhead": 4, "layerdrop_prob": 0.0, "init": "default"}
    ours = SpeechEncoder("mhsa", **settings)
    stock = SpeechEncoder("mhsa", implementation="speechbrain", **settings)
    ours_dropouts = [m for m in ours.modules() if isinstance(m, torch.nn.Dropout)]
    stock_dropouts = [m for m in stock.modules() if isinstance(m, torch.nn.Dropout)]
    # every dropout of the encoder (SpeechBrain's feed-forward, convolution module and attention
    # included) draws fast masks, at its own rate; the stock encoder keeps PyTorch's
    assert len(ours_dropouts) == len(stock_dropouts) > 10
    assert all(type(m) is FastDropout for m in ours_dropouts)
    assert not any(isinstance(m, FastDropout) for m in stock.modules())
    assert [m.p for m in ours_dropouts] == [m.p for m in stock_dropouts]
    # in training, the two differ only by their random masks: the mean output over many draws agrees
    stock.load_state_dict(ours.state_dict())
    wavs, lens = torch.randn(1, 8000), torch.tensor([1.0])
    with torch.no_grad():
        mean_ours = torch.stack([ours.train()(wavs, lens).out for _ in range(40)]).mean(0)
        mean_stock = torch.stack([stock.train()(wavs, lens).out for _ in range(40)]).mean(0)
        evaluated = ours.eval()(wavs, lens).out
    assert (mean_ours - mean_stock).abs().mean() < 0.25 * (mean_stock - evaluated).abs().mean() + 0.05
