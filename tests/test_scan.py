"""The pure-PyTorch selective scan against a step-by-step float64 recurrence."""

import pytest
import torch
from conftest import LargestTensor

from speechbrain_ext.mixers import BidirectionalMamba, MambaBlock
from speechbrain_ext.mixers.mamba import reverse_valid_frames
from speechbrain_ext.mixers.scan import selective_scan, selective_scan_ref


def scan_inputs(batch=2, channels=6, states=4, length=37, dtype=torch.float64):
    torch.manual_seed(1)
    tensors = {
        "u": torch.randn(batch, channels, length),
        "delta": torch.randn(batch, channels, length),
        "A": -torch.rand(channels, states) * 2 - 0.1,
        "B": torch.randn(batch, states, length),
        "C": torch.randn(batch, states, length),
        "D": torch.randn(channels),
        "z": torch.randn(batch, channels, length),
        "delta_bias": torch.randn(channels) * 0.1,
    }
    return {name: t.to(dtype).requires_grad_() for name, t in tensors.items()}


def test_chunked_scan_gradcheck():
    """float64 gradcheck of the chunked autograd function (through selective_scan), 3 chunks of 3."""
    inputs = scan_inputs(batch=2, channels=3, states=2, length=8)
    names = list(inputs)

    def scan(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=True, chunk_size=3)

    assert torch.autograd.gradcheck(scan, tuple(inputs.values()))


@pytest.mark.parametrize("length", [1, 2, 37])
def test_scan_matches_reference_forward_and_backward(length):
    fast_inputs = scan_inputs(length=length)
    ref_inputs = {k: v.detach().clone().requires_grad_() for k, v in fast_inputs.items()}
    fast = selective_scan(**fast_inputs, delta_softplus=True)
    ref = selective_scan_ref(**ref_inputs, delta_softplus=True)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)
    upstream = torch.randn_like(fast)
    (fast * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for name in fast_inputs:
        torch.testing.assert_close(fast_inputs[name].grad, ref_inputs[name].grad, atol=1e-9, rtol=1e-9, msg=name)


@pytest.mark.parametrize("length, chunk_size", [(130, 16), (257, 16), (64, 16), (5, 1)])
def test_chunked_scan_matches_reference_across_chunks(length, chunk_size):
    """Lengths that are and are not multiples of the chunk, over many chunks, forward and backward."""
    fast_inputs = scan_inputs(length=length)
    ref_inputs = {k: v.detach().clone().requires_grad_() for k, v in fast_inputs.items()}
    fast = selective_scan(**fast_inputs, delta_softplus=True, chunk_size=chunk_size)
    ref = selective_scan_ref(**ref_inputs, delta_softplus=True)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)
    upstream = torch.randn_like(fast)
    (fast * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for name in fast_inputs:
        torch.testing.assert_close(fast_inputs[name].grad, ref_inputs[name].grad, atol=1e-9, rtol=1e-9, msg=name)


def test_scan_never_builds_states_of_every_step():
    """No (B, D, N, L)-sized tensor in forward or backward: only chunks and chunk boundaries."""
    batch, channels, states, length = 2, 8, 4, 512
    inputs = scan_inputs(batch=batch, channels=channels, states=states, length=length, dtype=torch.float32)
    with LargestTensor() as recorder:
        selective_scan(**inputs, delta_softplus=True, chunk_size=16).sum().backward()
    assert recorder.numel <= batch * channels * length, (recorder.numel, recorder.op)


def test_scan_rejects_a_chunk_size_below_one():
    inputs = scan_inputs(length=4)
    with pytest.raises(ValueError, match="chunk_size must be positive, got 0"):
        selective_scan(**inputs, chunk_size=0)


def test_scan_float32_close_to_float64_reference():
    inputs64 = scan_inputs(length=200)
    inputs32 = {k: v.detach().float() for k, v in inputs64.items()}
    ref = selective_scan_ref(**{k: v.detach() for k, v in inputs64.items()}, delta_softplus=True)
    fast = selective_scan(**inputs32, delta_softplus=True)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), ref, atol=1e-4, rtol=1e-4)


def test_mamba_block_is_causal():
    block = MambaBlock(16, d_state=4).eval()
    x = torch.randn(1, 30, 16)
    changed = x.clone()
    changed[:, 20:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(block(x)[:, :20], block(changed)[:, :20])
        assert not torch.allclose(block(x)[:, 20:], block(changed)[:, 20:])


def test_bidirectional_mamba_sees_the_future_from_the_last_valid_frame():
    mixer = BidirectionalMamba(16, d_state=4).eval()
    x = torch.randn(2, 30, 16)
    mask = torch.arange(30).unsqueeze(0) >= torch.tensor([[30], [22]])
    changed = x.clone()
    changed[1, 21] += 1.0  # last valid frame of the second utterance
    with torch.no_grad():
        out, _ = mixer(x, x, x, key_padding_mask=mask)
        out_changed, _ = mixer(changed, changed, changed, key_padding_mask=mask)
    assert not torch.allclose(out[1, 0], out_changed[1, 0])  # frame 0 reads the future
    torch.testing.assert_close(out[0], out_changed[0])
    assert (out[1, 22:] == 0).all()


def test_reverse_valid_frames_is_an_involution_keeping_padding():
    x = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1)
    mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    reversed_x = reverse_valid_frames(x, mask)
    assert reversed_x[1, :, 0].tolist() == [9.0, 8.0, 7.0, 6.0, 10.0, 11.0]
    assert reversed_x[0, :, 0].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    torch.testing.assert_close(reverse_valid_frames(reversed_x, mask), x)


def test_mamba_state_dict_uses_mamba_ssm_names():
    names = set(MambaBlock(32).state_dict())
    assert names == {
        "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
        "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight",
    }


def test_scan_backward_is_linear_in_length():
    """The backward graph must not grow quadratically: time 4x the length, expect about 4x."""
    import time

    def run(length):
        inputs = scan_inputs(batch=1, channels=8, states=4, length=length, dtype=torch.float32)
        start = time.perf_counter()
        selective_scan(**inputs, delta_softplus=True).sum().backward()
        return time.perf_counter() - start

    run(200)
    short, long = min(run(1000) for _ in range(3)), min(run(4000) for _ in range(3))
    assert long / short < 10, (short, long)
