"""The selective scan (PyTorch chunks and fused numba kernels) against a step-by-step float64 recurrence."""

import pytest
import torch
from conftest import LargestTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from speechbrain_ext.mixers import scan
from speechbrain_ext.mixers.mamba import BidirectionalMamba, MambaBlock, reverse_valid_frames
from speechbrain_ext.mixers.scan import selective_scan, selective_scan_ref

# Both implementations of the scan: PyTorch ops, and the numba kernels (numba is a dev dependency).
FUSED = [pytest.param(False, id="pytorch"), pytest.param(True, id="numba")]


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


# float64 gradcheck of the numba kernels: about 30 s, most of it compiling their float64 versions.
@pytest.mark.parametrize("fused", [pytest.param(False, id="pytorch"),
                                   pytest.param(True, id="numba", marks=pytest.mark.slow)])
def test_chunked_scan_gradcheck(fused):
    """float64 gradcheck of the chunked autograd function (through selective_scan), 3 chunks of 3."""
    inputs = scan_inputs(batch=2, channels=3, states=2, length=8)
    names = list(inputs)

    def run(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=True, chunk_size=3, fused=fused)

    assert torch.autograd.gradcheck(run, tuple(inputs.values()))


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("length", [1, 2, 37])
def test_scan_matches_reference_forward_and_backward(length, fused):
    fast_inputs = scan_inputs(length=length)
    ref_inputs = {k: v.detach().clone().requires_grad_() for k, v in fast_inputs.items()}
    fast = selective_scan(**fast_inputs, delta_softplus=True, fused=fused)
    ref = selective_scan_ref(**ref_inputs, delta_softplus=True)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)
    upstream = torch.randn_like(fast)
    (fast * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for name in fast_inputs:
        torch.testing.assert_close(fast_inputs[name].grad, ref_inputs[name].grad, atol=1e-9, rtol=1e-9, msg=name)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("length, chunk_size", [(130, 16), (257, 16), (64, 16), (5, 1)])
def test_chunked_scan_matches_reference_across_chunks(length, chunk_size, fused):
    """Lengths that are and are not multiples of the chunk, over many chunks, forward and backward."""
    fast_inputs = scan_inputs(length=length)
    ref_inputs = {k: v.detach().clone().requires_grad_() for k, v in fast_inputs.items()}
    fast = selective_scan(**fast_inputs, delta_softplus=True, chunk_size=chunk_size, fused=fused)
    ref = selective_scan_ref(**ref_inputs, delta_softplus=True)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)
    upstream = torch.randn_like(fast)
    (fast * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for name in fast_inputs:
        torch.testing.assert_close(fast_inputs[name].grad, ref_inputs[name].grad, atol=1e-9, rtol=1e-9, msg=name)


@pytest.mark.parametrize("fused", FUSED)
def test_scan_never_builds_states_of_every_step(fused):
    """No (B, D, N, L)-sized tensor in forward or backward: only chunks and chunk boundaries."""
    batch, channels, states, length = 2, 8, 4, 512
    inputs = scan_inputs(batch=batch, channels=channels, states=states, length=length, dtype=torch.float32)
    with LargestTensor() as recorder:
        selective_scan(**inputs, delta_softplus=True, chunk_size=16, fused=fused).sum().backward()
    assert recorder.numel <= batch * channels * length, (recorder.numel, recorder.op)


def test_scan_rejects_a_chunk_size_below_one():
    inputs = scan_inputs(length=4)
    with pytest.raises(ValueError, match="chunk_size must be positive, got 0"):
        selective_scan(**inputs, chunk_size=0)


@pytest.mark.parametrize("fused", FUSED)
def test_scan_float32_close_to_float64_reference(fused):
    inputs64 = scan_inputs(length=200)
    inputs32 = {k: v.detach().float() for k, v in inputs64.items()}
    ref = selective_scan_ref(**{k: v.detach() for k, v in inputs64.items()}, delta_softplus=True)
    fast = selective_scan(**inputs32, delta_softplus=True, fused=fused)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), ref, atol=1e-4, rtol=1e-4)


def mamba_sized_inputs(channels, length=300, states=16):
    """Inputs as a MambaBlock builds them: A = -(1..N), softplus step sizes around 0.01-0.1."""
    inputs = scan_inputs(batch=2, channels=channels, states=states, length=length, dtype=torch.float32)
    with torch.no_grad():
        inputs["A"].copy_(-torch.arange(1.0, states + 1).repeat(channels, 1))
        inputs["delta"].mul_(0.5).sub_(3.0)
    return inputs


@pytest.mark.parametrize("channels", [256, 200])  # two full blocks of 128 channels; one full and one partial
def test_fused_scan_equals_pytorch_scan_at_mamba_sizes(channels):
    """float32, N = 16, several channel blocks: the two implementations agree in outputs and gradients."""
    inputs = mamba_sized_inputs(channels)
    results = []
    for fused in (False, True):
        copies = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        out = selective_scan(**copies, delta_softplus=True, fused=fused)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, {k: v.grad for k, v in copies.items()}))
    (out_torch, grads_torch), (out_fused, grads_fused) = results
    torch.testing.assert_close(out_fused, out_torch, rtol=1e-4, atol=1e-5)
    for name in inputs:
        torch.testing.assert_close(grads_fused[name], grads_torch[name], rtol=1e-4, atol=1e-4, msg=name)


def test_fused_scan_with_decays_below_the_smallest_float():
    """exp(delta A) under 2**-126 (A = -500): the kernels take 2**-126, which changes nothing visible."""
    inputs = scan_inputs(length=40)
    with torch.no_grad():
        inputs["A"].mul_(250.0)
    fused = selective_scan(**inputs, delta_softplus=True, fused=True)
    torch.testing.assert_close(fused, selective_scan_ref(**inputs, delta_softplus=True), atol=1e-10, rtol=1e-10)


def test_fused_scan_refuses_growing_states_and_auto_falls_back():
    """Decays above 1 (A > 0, or a negative delta without softplus) are not the kernels' domain:
    fused=True says why; fused=None runs the PyTorch scan and still matches the reference."""
    inputs = scan_inputs(length=20)
    positive_A = {**inputs, "A": inputs["A"].detach().abs()}
    with pytest.raises(ValueError, match=r"fused=True cannot run: it needs A <= 0"):
        selective_scan(**positive_A, delta_softplus=True, fused=True)
    with pytest.raises(ValueError, match=r"it needs delta >= 0"):
        selective_scan(**inputs, delta_softplus=False, fused=True)
    # delta >= 0 but delta + delta_bias < 0: the bias counts
    shifted = {**inputs, "delta": inputs["delta"].detach().abs(), "delta_bias": inputs["delta_bias"].detach() - 10.0}
    with pytest.raises(ValueError, match=r"it needs delta >= 0"):
        selective_scan(**shifted, delta_softplus=False, fused=True)
    for case, softplus in ((positive_A, True), (inputs, False), (shifted, False)):
        torch.testing.assert_close(selective_scan(**case, delta_softplus=softplus),
                                   selective_scan_ref(**case, delta_softplus=softplus), atol=1e-10, rtol=1e-10)


def test_scan_without_numba_runs_on_pytorch(monkeypatch):
    """A machine without numba: the default runs the PyTorch scan; fused=True says what to install."""
    inputs = scan_inputs(length=20)
    monkeypatch.setattr(scan, "numba_kernels", lambda: None)
    monkeypatch.setattr(scan._FusedSelectiveScan, "apply", lambda *args: pytest.fail("fused scan called"))
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True),
                               selective_scan_ref(**inputs, delta_softplus=True), atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match=r"numba is not installed \(pip install speechbrain_ext\[cpu\]\)"):
        selective_scan(**inputs, delta_softplus=True, fused=True)


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


class Allocations(TorchDispatchMode):
    """Counts the ops run and the bytes of the new storages they return.

    A view or an in-place result shares a storage with an input and is not new; several outputs
    of one op on one storage count once.
    """

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.bytes = 0
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in seen:
                seen.add(tensor.untyped_storage().data_ptr())
                size = tensor.untyped_storage().nbytes()
                self.bytes += size
                self.largest = max(self.largest, size)
        return out


def forward_backward(function, length):
    """The ops and allocations of one forward and backward of ``function`` at ``length``."""
    inputs = scan_inputs(batch=2, channels=8, states=4, length=length, dtype=torch.float32)
    with Allocations() as recorded:
        function(inputs).sum().backward()
    return recorded


@pytest.mark.parametrize("fused", FUSED)
def test_scan_backward_is_linear_in_length(fused):
    """The backward graph must not grow quadratically: at 4x the length, forward + backward run at
    most 4x the ops and allocate at most 4x the bytes (in all, and in their largest tensor)."""

    def scan_of(inputs):
        return selective_scan(**inputs, delta_softplus=True, chunk_size=16, fused=fused)

    short, long = forward_backward(scan_of, 256), forward_backward(scan_of, 1024)
    assert short.bytes >= 3 * 2 * 8 * 256 * 4, short.bytes  # at least the gradients of u, delta and z
    assert long.ops <= 4 * short.ops, (short.ops, long.ops)
    assert long.bytes <= 4 * short.bytes, (short.bytes, long.bytes)
    assert long.largest <= 4 * short.largest, (short.largest, long.largest)

    # The same measure on a quadratic form of a scan (a lower-triangular (L, L) product) grows 16x.
    def quadratic(inputs):
        length = inputs["u"].shape[-1]
        return inputs["u"] @ torch.ones(length, length).tril()

    assert forward_backward(quadratic, 1024).bytes > 10 * forward_backward(quadratic, 256).bytes


def test_numba_thread_count_is_set_only_when_torch_changes_it(monkeypatch):
    """The fused scan follows torch.set_num_threads, changing numba's thread count only when it differs."""
    import numba

    if scan.numba_kernels() is None or numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs numba with at least two threads")
    calls = []
    set_num_threads = numba.set_num_threads
    monkeypatch.setattr(numba, "set_num_threads", lambda count: (calls.append(count), set_num_threads(count)))
    inputs = {k: v.detach() for k, v in scan_inputs(length=8, dtype=torch.float32).items()}
    threads = torch.get_num_threads()
    expected = selective_scan(**inputs, delta_softplus=True, fused=True)
    calls.clear()
    try:
        for count in (threads, threads, 1, 1, threads):
            torch.set_num_threads(count)
            torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True, fused=True), expected,
                                       rtol=0, atol=0)
            assert numba.get_num_threads() == min(count, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(threads)
    limit = min(threads, numba.config.NUMBA_NUM_THREADS)
    assert calls == ([1, limit] if limit > 1 else []), calls
