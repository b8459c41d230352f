"""The mixer contract (DESIGN.md), checked for every mixer through the registry."""

import pytest
import torch
from conftest import LINEAR_MEMORY_MIXERS, SMALL_MIXER_KWARGS, LargestTensor, small_mixer
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoderLayer

from speechbrain_ext.mixers import MIXERS, build_mixer
from speechbrain_ext.models.encoder import positional_embeddings

ALL_MIXERS = list(MIXERS)


def lengths_to_mask(lengths, max_len):
    return torch.arange(max_len).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


@pytest.mark.parametrize("name", ALL_MIXERS)
@pytest.mark.parametrize("length", [1, 2, 7, 333])
def test_shape_in_equals_shape_out(name, length):
    mixer = small_mixer(name)
    x = torch.randn(2, length, 32)
    out, attn = mixer(x, x, x)
    assert out.shape == x.shape
    assert attn is None
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", LINEAR_MEMORY_MIXERS)
def test_linear_memory_mixers_take_very_long_inputs(name):
    # 15000 frames = 10 minutes at the encoder's 40 ms frame rate.
    mixer = build_mixer(name, 16, 4, **SMALL_MIXER_KWARGS[name]).eval()
    x = torch.randn(1, 15000, 16)
    with torch.no_grad():
        out, _ = mixer(x, x, x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_mhsa_takes_inputs_past_stock_position_tables():
    mixer = small_mixer("mhsa")
    x = torch.randn(1, 3200, 32)  # SpeechBrain's absolute table stops at 2500, HyperMixing's at 3000
    with torch.no_grad():
        out, _ = mixer(x, x, x)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_padding_invariance(name):
    """Valid frames encode the same alone and beside longer utterances, whatever the padding holds."""
    mixer = small_mixer(name)
    lengths, max_len = [23, 41, 50], 50
    utterances = [torch.randn(1, n, 32) for n in lengths]
    batch = torch.randn(len(lengths), max_len, 32) * 100  # padding content is garbage
    for row, utt in enumerate(utterances):
        batch[row, : utt.shape[1]] = utt[0]
    mask = lengths_to_mask(lengths, max_len)
    with torch.no_grad():
        batched, _ = mixer(batch, batch, batch, key_padding_mask=mask)
        for row, utt in enumerate(utterances):
            alone, _ = mixer(utt, utt, utt)
            torch.testing.assert_close(batched[row, : utt.shape[1]], alone[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", LINEAR_MEMORY_MIXERS)
def test_linear_memory_mixers_allocate_no_time_by_time_tensor(name):
    mixer = small_mixer(name).train()
    # Large enough that T x T dwarfs the linear intermediates (Mamba's T x 2E x N states).
    length = 4096
    x = torch.randn(1, length, 32, requires_grad=True)
    mask = lengths_to_mask([4000], length)
    with LargestTensor() as largest:
        out, _ = mixer(x, x, x, key_padding_mask=mask)
        out.sum().backward()
    assert largest.numel < length * length // 2, f"{largest.op} made {largest.numel} elements"


def test_time_by_time_detector_catches_attention():
    mixer = small_mixer("mhsa")
    length = 256
    x = torch.randn(1, length, 32)
    with LargestTensor() as largest:
        mixer(x, x, x)
    assert largest.numel >= length * length


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_gradients_reach_every_parameter(name):
    mixer = small_mixer(name).train()
    x = torch.randn(2, 19, 32, requires_grad=True)
    mask = lengths_to_mask([19, 11], 19)
    out, _ = mixer(x, x, x, key_padding_mask=mask)
    (out * torch.randn_like(out)).sum().backward()
    for param_name, param in mixer.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, param_name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_bf16_autocast(name):
    mixer = small_mixer(name)
    x = torch.randn(2, 40, 32)
    mask = lengths_to_mask([40, 25], 40)
    with torch.no_grad():
        reference, _ = mixer(x, x, x, key_padding_mask=mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = mixer(x, x, x, key_padding_mask=mask)
    assert torch.isfinite(out).all()
    valid = ~mask
    error = (out.float() - reference)[valid].norm() / reference[valid].norm()
    assert error < 0.05


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_speechbrain_conformer_layer_runs_our_mixer(name):
    layer = ConformerEncoderLayer(d_model=32, d_ffn=64, nhead=4, kernel_size=3)
    layer.mha_layer = small_mixer(name)
    layer.eval()
    x = torch.randn(2, 30, 32)
    mask = lengths_to_mask([30, 17], 30)
    pos_embs = positional_embeddings(layer.mha_layer.pos_embs_kind, x)
    out, attn = layer(x, src_key_padding_mask=mask, pos_embs=pos_embs)
    assert out.shape == x.shape and attn is None and torch.isfinite(out).all()


def test_unknown_mixer_lists_valid_names():
    with pytest.raises(ValueError, match="unknown mixer 'flash'.*fastformer.*hypermixing.*mamba.*mhsa.*summarymixing"):
        build_mixer("flash", 32, 4)


@pytest.mark.parametrize(
    "name,kwargs,numbers",
    [
        ("mhsa", {}, ("30", "4")),
        ("mhsa_flash", {}, ("30", "4")),
        ("fastformer", {}, ("30", "4")),
        ("hypermixing", {"hypernet_size": 64}, ("30", "4")),
        ("hypermixing", {"hypernet_size": 66}, ("66", "4")),
    ],
)
def test_width_not_divisible_by_heads_names_both_numbers(name, kwargs, numbers):
    d_model = 30 if numbers[0] == "30" else 32
    with pytest.raises(ValueError) as error:
        build_mixer(name, d_model, 4, **kwargs)
    assert all(number in str(error.value) for number in numbers)


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_padding_mask_of_wrong_shape_is_refused(name):
    mixer = small_mixer(name)
    x = torch.randn(2, 10, 32)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(batch, time\) = \(2, 10\)"):
        mixer(x, x, x, key_padding_mask=torch.zeros(2, 9, dtype=torch.bool))


def test_invalid_mixer_options_are_refused():
    with pytest.raises(ValueError, match="mode"):
        build_mixer("summarymixing", 32, 1, mode="heavy")
    with pytest.raises(ValueError, match="local_out=16 and summary_out=24"):
        build_mixer("summarymixing", 32, 1, local_out=16, summary_out=24, combine="add")
    with pytest.raises(ValueError, match="merge"):
        build_mixer("mamba", 32, 1, merge="multiply")
    with pytest.raises(ValueError, match="head width d_model / nhead = 20 / 4 = 5 must be even"):
        build_mixer("mhsa_flash", 20, 4)
    x = torch.randn(1, 5, 32)
    with pytest.raises(ValueError, match="mhsa_flash cannot honour this attn_mask"):
        small_mixer("mhsa_flash")(x, x, x, attn_mask=torch.ones(5, 5, dtype=torch.bool).triu(1))
