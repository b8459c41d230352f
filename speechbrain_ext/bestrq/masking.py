"""Span masking of fbank frames for BEST-RQ (Chiu et al. 2022, https://arxiv.org/abs/2202.01855).

Spans are ``span_frames`` fbank frames long and start only at multiples of ``span_frames``, so
with ``span_frames`` equal to the CNN front-end's downsampling (4) one span is exactly one
encoder frame and the encoder-level mask is ``mask[:, ::span_frames]``.

``mask_prob`` is, as in SpeechBrain's BEST-RQ recipe (``speechbrain.lobes.models.BESTRQ``), the
probability for a frame to *start* a span: an utterance of L frames gets
``floor(mask_prob * L + U)``, U ~ Uniform(0, 1), spans (so mask_prob * L in expectation), at
least one, at most the number of whole aligned spans ``L // span_frames``, drawn without
replacement. Spans never overlap, so about ``mask_prob * span_frames`` of the frames are masked
(60% with the defaults).
"""

import torch


def compute_span_mask(
    lengths: torch.Tensor,
    max_len: int,
    mask_prob: float = 0.15,
    span_frames: int = 4,
    per_utterance: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Samples aligned, non-overlapping masked spans for a padded batch.

    Per utterance (default), every row draws its own spans among the aligned spans that lie
    wholly inside its valid length, so no span touches padding. With ``per_utterance=False``
    (the paper's and SpeechBrain's choice) one mask is drawn for the shortest utterance and
    shared by every row.

    Every row with length >= 1 gets at least one masked frame, so a loss averaged over masked
    frames never divides by zero: a row shorter than ``span_frames`` (it has no whole span) gets
    all its valid frames masked, i.e. its first, truncated span (one encoder frame).

    Arguments
    ---------
    lengths : torch.Tensor
        Valid frame counts, LongTensor (B,); every value in [1, max_len].
    max_len : int
        Padded length T of the batch.
    mask_prob : float
        Probability for a frame to start a span, in [0, 1]; the masked fraction is about
        ``mask_prob * span_frames``, capped at all whole spans.
    span_frames : int
        Length of a span in frames (one encoder frame after the front-end's downsampling).
    per_utterance : bool
        Draw one mask per row (True) or one mask shared by the batch (False).
    generator : torch.Generator, optional
        Source of randomness, on the device of ``lengths``.

    Returns
    -------
    torch.Tensor
        BoolTensor (B, T), True on masked frames.

    Example
    -------
    >>> mask = compute_span_mask(torch.tensor([100, 60]), 100)
    >>> mask.shape, bool(mask[1, 60:].any())
    (torch.Size([2, 100]), False)
    """
    if span_frames < 1:
        raise ValueError(f"span_frames must be >= 1, got {span_frames}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be (B,), got shape {tuple(lengths.shape)}")
    lengths = lengths.long()
    if lengths.numel() and (lengths.min() < 1 or lengths.max() > max_len):
        raise ValueError(
            f"lengths must lie in [1, max_len={max_len}], got min {int(lengths.min())} "
            f"and max {int(lengths.max())}"
        )
    device = lengths.device
    batch = lengths.shape[0]
    if batch == 0:
        return torch.zeros(0, max_len, dtype=torch.bool, device=device)
    # Shared mask: draw one row for the shortest utterance and broadcast it.
    drawn = lengths if per_utterance else lengths.min().reshape(1)
    rows = drawn.shape[0]
    num_slots = max_len // span_frames
    valid_slots = drawn // span_frames

    # Stochastic rounding keeps E[spans] = mask_prob * L for any L (SpeechBrain's rule).
    uniform = torch.rand(rows, generator=generator, device=device)
    num_spans = torch.floor(mask_prob * drawn + uniform).long()
    num_spans = torch.minimum(num_spans.clamp(min=1), valid_slots)

    # Sampling without replacement, vectorised over rows: rank random keys, invalid slots last,
    # and keep the num_spans lowest ranks of each row.
    slot = torch.arange(num_slots, device=device)
    keys = torch.rand(rows, num_slots, generator=generator, device=device)
    keys = keys.masked_fill(slot >= valid_slots.unsqueeze(1), 2.0)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    chosen = ranks < num_spans.unsqueeze(1)

    frame = torch.arange(max_len, device=device)
    frame_slot = (frame // span_frames).clamp(max=max(num_slots - 1, 0))
    in_whole_slot = frame < num_slots * span_frames
    if num_slots > 0:
        mask = chosen[:, frame_slot] & in_whole_slot
    else:
        mask = torch.zeros(rows, max_len, dtype=torch.bool, device=device)
    # No whole span fits: mask the valid frames, the single (truncated) first span.
    too_short = (valid_slots == 0).unsqueeze(1) & (frame < drawn.unsqueeze(1))
    mask = mask | too_short
    return mask.expand(batch, max_len).clone() if not per_utterance else mask


def apply_mask_noise(
    feats: torch.Tensor,
    mask: torch.Tensor,
    std: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replaces masked frames by Gaussian noise N(0, std^2), out of place (BEST-RQ, Section 3.2).

    Arguments
    ---------
    feats : torch.Tensor
        Features, (B, T, F).
    mask : torch.Tensor
        BoolTensor (B, T), True on frames to replace.
    std : float
        Standard deviation of the noise.
    generator : torch.Generator, optional
        Source of randomness, on the device of ``feats``.

    Returns
    -------
    torch.Tensor
        (B, T, F), same dtype and device as ``feats``; unmasked frames unchanged.

    Example
    -------
    >>> feats = torch.randn(2, 40, 80)
    >>> noisy = apply_mask_noise(feats, compute_span_mask(torch.tensor([40, 30]), 40))
    >>> noisy.shape
    torch.Size([2, 40, 80])
    """
    if feats.dim() != 3 or tuple(mask.shape) != tuple(feats.shape[:2]):
        raise ValueError(
            f"apply_mask_noise expects feats (B, T, F) and mask (B, T), got {tuple(feats.shape)} "
            f"and {tuple(mask.shape)}"
        )
    noise = (
        torch.randn(
            feats.shape, generator=generator, device=feats.device, dtype=feats.dtype
        )
        * std
    )
    return torch.where(
        mask.to(device=feats.device, dtype=torch.bool).unsqueeze(-1), noise, feats
    )
