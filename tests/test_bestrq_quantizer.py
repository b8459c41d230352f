"""Tests of speechbrain_ext.bestrq.quantizer against SpeechBrain's RandomProjectionQuantizer."""

import math

import pytest
import torch
import torch.nn.functional as F
from speechbrain.nnet.quantisers import RandomProjectionQuantizer as SBQuantizer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from speechbrain_ext.bestrq.quantizer import RandomProjectionQuantizer


class LargestTensor(TorchDispatchMode):
    """Records the largest numel of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _scores(quantizer, x, k=0):
    z = F.normalize(x.float() @ quantizer.projections[k], dim=-1)
    return z @ quantizer.codebooks[k].t()


def test_matches_speechbrain_indices():
    torch.manual_seed(0)
    sb = SBQuantizer(80, 16, 512)
    ours = RandomProjectionQuantizer.from_speechbrain(sb)
    x = torch.randn(3, 40, 80)
    expected = sb(x)
    got = ours(x)
    assert got.shape == (3, 40, 1)
    differ = got[..., 0] != expected
    # Ties aside: where the indices differ, both codes must be equally near.
    scores = _scores(ours, x)
    gap = scores.gather(-1, got) - scores.gather(-1, expected.unsqueeze(-1))
    assert differ.float().mean() < 0.01
    if differ.any():
        assert gap[differ].abs().max() < 1e-5


def test_loads_speechbrain_state_dict():
    sb = SBQuantizer(80, 16, 64)
    ours = RandomProjectionQuantizer(80, 16, 64, seed=123)
    assert not torch.equal(ours.codebooks[0], sb.CB)
    # Strict load: SpeechBrain's P / CB keys are mapped onto ours.
    ours.load_state_dict(sb.state_dict())
    assert torch.equal(ours.projections[0], sb.P)
    assert torch.equal(ours.codebooks[0], sb.CB)
    # Nested in a model, as SpeechBrain's Checkpointer saves it (prefixed keys).
    nested = torch.nn.Sequential(RandomProjectionQuantizer(80, 16, 64, seed=5))
    nested.load_state_dict(torch.nn.Sequential(sb).state_dict())
    assert torch.equal(nested[0].codebooks[0], sb.CB)
    # Several codebooks cannot take SpeechBrain's single one.
    two = RandomProjectionQuantizer(80, 16, 64, num_codebooks=2)
    with pytest.raises(RuntimeError):
        two.load_state_dict(sb.state_dict())


def test_buffers_frozen_unit_norm_and_in_state_dict():
    q = RandomProjectionQuantizer(320, 16, 256, num_codebooks=3, seed=0)
    assert list(q.parameters()) == []
    assert set(q.state_dict()) == {"projections", "codebooks"}
    assert q.projections.shape == (3, 320, 16) and q.codebooks.shape == (3, 256, 16)
    assert torch.allclose(q.codebooks.norm(dim=-1), torch.ones(3, 256), atol=1e-6)
    bound = math.sqrt(6.0 / (320 + 16))  # Xavier uniform
    assert q.projections.abs().max() <= bound
    assert q.projections.abs().max() > 0.9 * bound
    # Independent codebooks give different targets.
    t = q(torch.randn(2, 30, 320))
    assert t.shape == (2, 30, 3)
    assert (t[..., 0] != t[..., 1]).any()


def test_state_dict_restores_targets():
    q = RandomProjectionQuantizer(80, 16, 128, seed=1)
    restored = RandomProjectionQuantizer(80, 16, 128, seed=2)
    x = torch.randn(2, 25, 80)
    assert not torch.equal(q(x), restored(x))
    restored.load_state_dict(q.state_dict())
    assert torch.equal(q(x), restored(x))


def test_seed_reproducible_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = RandomProjectionQuantizer(80, 16, 128, num_codebooks=2, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = RandomProjectionQuantizer(80, 16, 128, num_codebooks=2, seed=7)
    c = RandomProjectionQuantizer(80, 16, 128, num_codebooks=2, seed=8)
    assert torch.equal(a.projections, b.projections) and torch.equal(
        a.codebooks, b.codebooks
    )
    assert not torch.equal(a.codebooks, c.codebooks)
    # Without a seed, torch.manual_seed still fixes the buffers.
    torch.manual_seed(3)
    d = RandomProjectionQuantizer(80, 16, 128)
    torch.manual_seed(3)
    e = RandomProjectionQuantizer(80, 16, 128)
    assert torch.equal(d.codebooks, e.codebooks)


def test_no_huge_tensor():
    torch.manual_seed(0)
    batch, time, dim, cb_dim, vocab = 2, 64, 80, 16, 512
    x = torch.randn(batch, time, dim)
    bound = (
        batch * time * vocab * cb_dim // 8
    )  # far below the (B, V, T, cb_dim) difference

    sb = SBQuantizer(dim, cb_dim, vocab)
    with LargestTensor() as probe:
        sb(x)
    assert probe.largest >= batch * time * vocab * cb_dim > bound  # the probe can fail

    ours = RandomProjectionQuantizer.from_speechbrain(sb)
    with LargestTensor() as probe:
        ours(x)
    assert probe.largest <= batch * time * vocab < bound

    chunked = RandomProjectionQuantizer.from_speechbrain(sb)
    chunked.chunk_size = 16
    with LargestTensor() as probe:
        targets = chunked(x)
    assert probe.largest <= max(16 * vocab, batch * time * dim)
    assert torch.equal(targets, ours(x))


def test_float32_precision_ignores_bf16_autocast():
    torch.manual_seed(0)
    q = RandomProjectionQuantizer(320, 16, 8192, seed=0, precision="float32")
    x = torch.randn(4, 100, 320)
    reference = q(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = q(x)
    assert under_autocast.dtype == torch.long
    assert torch.equal(under_autocast, reference)
    # The check is sensitive: a bf16 search picks other codes for some frames.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = F.normalize(x @ q.projections[0], dim=-1)
        naive = (z @ q.codebooks[0].t()).argmax(-1)
    assert (naive != reference[..., 0]).any()
    # Well-separated inputs (frames whose projection is a code) survive bf16 inputs too.
    codes = torch.randint(0, 8192, (2, 50))
    targets_in = q.codebooks[0][codes] @ torch.linalg.pinv(q.projections[0])
    assert torch.equal(q(targets_in.bfloat16())[..., 0], codes)


def test_bad_sizes_raise():
    q = RandomProjectionQuantizer(320, 16, 64)
    with pytest.raises(ValueError, match=r"320.*80"):
        q(torch.randn(2, 10, 80))
    with pytest.raises(ValueError, match="B, T, D"):
        q(torch.randn(10, 320))
    with pytest.raises(ValueError, match="cb_vocab"):
        RandomProjectionQuantizer(320, 16, 0)
    with pytest.raises(ValueError, match="num_codebooks"):
        RandomProjectionQuantizer(320, 16, 64, num_codebooks=0)


def test_time_norm_reproduces_the_papers_quantiser():
    """whettenr/brq-att-alt-exp quantiser.py: ``x = F.normalize(x @ P)`` (dim=1: time, padding
    included), then the code at the smallest L2 distance. Reference written from that equation."""
    torch.manual_seed(0)
    quantizer = RandomProjectionQuantizer(40, 8, 64, seed=3, norm="time")
    x = torch.randn(2, 30, 40)
    projected = x @ quantizer.projections[0]
    projected = projected / projected.norm(dim=1, keepdim=True)  # over time, per channel
    distances = (quantizer.codebooks[0].view(1, 64, 1, 8) - projected.unsqueeze(1)).norm(dim=-1)
    assert torch.equal(quantizer(x)[..., 0], distances.argmin(dim=1))


def test_time_norm_depends_on_padding_frame_norm_does_not():
    """In the paper's code, padded frames hold normalised log-mel of silence (not zeros), and they
    enter the norm over time: the targets of an utterance change with the batch's padding."""
    torch.manual_seed(0)
    utterance = torch.randn(1, 20, 40)
    padded = torch.cat([utterance, torch.full((1, 30, 40), -1.5)], dim=1)
    frame = RandomProjectionQuantizer(40, 8, 256, seed=3)
    time = RandomProjectionQuantizer(40, 8, 256, seed=3, norm="time")
    assert torch.equal(frame(utterance), frame(padded)[:, :20])
    assert not torch.equal(time(utterance), time(padded)[:, :20])
    with pytest.raises(ValueError, match="unknown norm 'channel'"):
        RandomProjectionQuantizer(40, norm="channel")


def test_targets_follow_the_callers_autocast_unless_float32():
    """The paper's code projects inside the run's autocast; ``precision="float32"`` ignores it."""
    paper = RandomProjectionQuantizer(320, seed=0)
    float32 = RandomProjectionQuantizer(320, seed=0, precision="float32")
    x = torch.randn(4, 200, 320)
    assert torch.equal(paper(x), float32(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast, kept = paper(x), float32(x)
    assert torch.equal(kept, float32(x))
    assert (in_autocast != kept).any()  # a bf16 projection moves some frames to a neighbouring code
    assert (in_autocast == kept).float().mean() > 0.5
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        RandomProjectionQuantizer(320, precision="fp8")
