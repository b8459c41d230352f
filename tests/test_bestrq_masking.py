"""Tests of speechbrain_ext.bestrq.masking."""

import math

import pytest
import torch

from speechbrain_ext.bestrq.masking import apply_mask_noise, compute_span_mask


def _expected_spans(length, mask_prob, span_frames):
    """E[number of spans]: stochastic rounding of mask_prob * L, clamped to [1, L // span]."""
    x = mask_prob * length
    low = math.floor(x)
    frac = x - low
    n = length // span_frames

    def clamp(v):
        return min(max(v, 1), n)

    return (1 - frac) * clamp(low) + frac * clamp(low + 1)


def _spans(row, span_frames):
    """Returns the (start, end) of each run of True in a 1-D bool tensor."""
    padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
    edges = padded.diff()
    starts = (edges == 1).nonzero().flatten()
    ends = (edges == -1).nonzero().flatten()
    return list(zip(starts.tolist(), ends.tolist()))


def test_masked_ratio_matches_expectation():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([200, 157, 63, 9, 6])
    draws = 20000
    # One call on a batch of repeated lengths: independent per-utterance draws, no Python loop.
    mask = compute_span_mask(lengths.repeat(draws), 200, 0.15, 4, generator=gen)
    ratio = mask.view(draws, len(lengths), 200).sum((0, 2)) / (draws * lengths)
    expected = torch.tensor(
        [_expected_spans(int(n), 0.15, 4) * 4 / int(n) for n in lengths]
    )
    # 157 -> 23.55 spans, 60% of its frames; 6 -> 0.9 spans raised to 1, 67% of its frames.
    assert torch.allclose(ratio, expected, atol=0.006), (ratio, expected)
    assert expected[-1] > 0.65

    # Capped by the number of whole spans: 30 frames, 0.3 * 30 = 9 spans wanted, 7 fit.
    lengths = torch.tensor([30, 17])
    mask = compute_span_mask(lengths.repeat(draws), 30, 0.3, 4, generator=gen)
    ratio = mask.view(draws, 2, 30).sum((0, 2)) / (draws * lengths)
    expected = torch.tensor(
        [_expected_spans(int(n), 0.3, 4) * 4 / int(n) for n in lengths]
    )
    assert torch.allclose(ratio, expected, atol=0.006), (ratio, expected)
    assert abs(expected[0] - 28 / 30) < 1e-6
    # Capped at all whole spans when mask_prob * span_frames > 1.
    full = compute_span_mask(
        torch.tensor([40, 42]), 42, mask_prob=0.5, span_frames=4, generator=gen
    )
    assert full[:, :40].all() and not full[:, 40:].any()


def test_spans_aligned_whole_and_inside_lengths():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([97, 50, 13, 8, 5])
    for _ in range(50):
        mask = compute_span_mask(lengths, 100, 0.15, 4, generator=gen)
        assert mask.shape == (5, 100) and mask.dtype == torch.bool
        for row, length in zip(mask, lengths.tolist()):
            assert not row[length:].any()  # never on padding
            assert row.any()  # at least one span
            # Aligned: each 4-frame slot is all masked or none, so one span = one encoder frame.
            slots = row[: length // 4 * 4].view(-1, 4)
            assert (slots.all(1) | ~slots.any(1)).all()
            for start, end in _spans(row, 4):
                assert (
                    start % 4 == 0 and (end - start) % 4 == 0 and end <= length // 4 * 4
                )


def test_short_utterances_get_their_valid_frames_masked():
    gen = torch.Generator().manual_seed(2)
    lengths = torch.tensor([1, 3, 4, 20])
    for per_utterance in (True, False):
        mask = compute_span_mask(
            lengths, 20, per_utterance=per_utterance, generator=gen
        )
        assert mask[0].tolist() == [True] + [False] * 19
        if per_utterance:
            assert mask[1, :3].all() and not mask[1, 3:].any()
            assert mask[2, :4].all() and not mask[2, 4:].any()
            assert mask[3].sum() % 4 == 0 and mask[3].sum() >= 4
        else:
            # Shared mask sized by the shortest utterance (length 1).
            assert (mask == mask[0]).all()


def test_per_utterance_rows_differ_shared_mask_identical():
    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([400, 400, 400, 300])
    per_utt = compute_span_mask(lengths, 400, generator=gen)
    assert (per_utt[0] != per_utt[1]).any() and (per_utt[1] != per_utt[2]).any()

    shared = compute_span_mask(lengths, 400, per_utterance=False, generator=gen)
    assert (shared == shared[0]).all()
    assert not shared[:, 300:].any()  # within the shortest length
    assert shared[0].sum() > 0 and shared[0].sum() % 4 == 0


def test_generator_reproducible_and_validation():
    lengths = torch.tensor([50, 30])
    a = compute_span_mask(lengths, 50, generator=torch.Generator().manual_seed(4))
    b = compute_span_mask(lengths, 50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="max_len=50"):
        compute_span_mask(torch.tensor([51]), 50)
    with pytest.raises(ValueError, match=r"\[1, max_len"):
        compute_span_mask(torch.tensor([0, 10]), 50)
    with pytest.raises(ValueError, match="mask_prob"):
        compute_span_mask(lengths, 50, mask_prob=1.5)
    with pytest.raises(ValueError, match="span_frames"):
        compute_span_mask(lengths, 50, span_frames=0)


def test_noise_replaces_exactly_masked_frames():
    gen = torch.Generator().manual_seed(5)
    feats = torch.full((4, 200, 80), 5.0)
    mask = compute_span_mask(torch.tensor([200, 150, 100, 3]), 200, generator=gen)
    noisy = apply_mask_noise(feats, mask, std=0.1, generator=gen)
    assert noisy.shape == feats.shape and noisy.dtype == feats.dtype
    assert (feats == 5.0).all()  # out of place
    assert torch.equal(noisy[~mask], feats[~mask])
    replaced = noisy[mask]
    assert (replaced != 5.0).all()
    assert (
        abs(replaced.std().item() - 0.1) < 0.005 and abs(replaced.mean().item()) < 0.005
    )

    half = apply_mask_noise(feats.bfloat16(), mask, generator=gen)
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="mask"):
        apply_mask_noise(feats, mask[:, :10])
