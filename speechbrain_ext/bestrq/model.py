"""The BEST-RQ pretraining model around a mixer Conformer.

``SpeechEncoder``, the network that pretraining produces and downstream tasks reuse, lives in
:mod:`speechbrain_ext.models.speech_encoder`.

``BestRQ`` adds what pretraining needs (Chiu et al. 2022, https://arxiv.org/abs/2202.01855):
targets from a frozen random-projection quantizer on stacked normalised fbank frames, masked
spans replaced by noise, one linear head per codebook, cross-entropy on masked frames only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_ext.bestrq.masking import apply_mask_noise, compute_span_mask
from speechbrain_ext.bestrq.quantizer import RandomProjectionQuantizer
from speechbrain_ext.mixers._common import check_sizes
from speechbrain_ext.models.speech_encoder import SpeechEncoder


@dataclass
class BestRQOutput:
    """Loss and masked-frame accuracy of one batch (accuracy averaged over codebooks).

    ``target_counts`` (cb_vocab,): how often each code of the first codebook is the target of a
    masked frame; its largest share is the accuracy of always predicting the most frequent code.
    ``prediction_counts`` (cb_vocab,): how often the first head predicts each code on the masked frames.
    """

    loss: torch.Tensor
    accuracy: torch.Tensor
    num_masked: int
    target_counts: torch.Tensor | None = None
    prediction_counts: torch.Tensor | None = None


def _entropy_bits(counts: torch.Tensor) -> float:
    probs = counts.double() / counts.sum()
    probs = probs[probs > 0]
    return float((probs * (1 / probs).log2()).sum())  # sum p log2(1/p): +0.0 for one code


def codebook_health(target_counts: torch.Tensor, prediction_counts: torch.Tensor) -> dict[str, float]:
    """How much of the codebook the targets and the predictions use, from counts over masked frames.

    ``codebook_usage``: share of the codes that are the target of at least one frame;
    ``target_entropy`` / ``prediction_entropy``: entropy (bits) of the targets' and of the predicted codes'
    distributions (log2(cb_vocab) at most: a collapsed quantizer or head gives about 0);
    ``majority_code_share``: the accuracy of always predicting the most frequent target code.

    Example
    -------
    >>> health = codebook_health(torch.tensor([2, 2, 0, 0]), torch.tensor([4, 0, 0, 0]))
    >>> health["codebook_usage"], health["target_entropy"], health["prediction_entropy"]
    (0.5, 1.0, 0.0)
    """
    total = target_counts.sum()
    if total <= 0:
        raise ValueError("codebook_health needs at least one masked frame")
    return {
        "codebook_usage": float((target_counts > 0).sum() / target_counts.numel()),
        "target_entropy": _entropy_bits(target_counts),
        "prediction_entropy": _entropy_bits(prediction_counts),
        "majority_code_share": float(target_counts.max() / total),
    }


class BestRQ(nn.Module):
    """BEST-RQ pretraining: predict the quantized targets of masked frames.

    Arguments
    ---------
    speech_encoder : SpeechEncoder
        The network being pretrained.
    cb_dim, cb_vocab, num_codebooks : int
        Quantizer: projection width, codes per codebook, number of codebooks (one head each).
    mask_prob : float
        Probability for a frame to start a masked span (SpeechBrain's convention).
    noise_std : float
        Standard deviation of the noise that replaces masked frames.
    per_utterance_mask : bool
        False (the paper): one mask for the batch, sized by its shortest utterance; True: one
        mask per utterance.
    quantizer_seed : int, optional
        Seed of the quantizer's frozen projection and codebooks.
    target_precision : str
        ``"autocast"`` (the paper's code: the quantizer's projection inside the run's fp16/bf16
        autocast) or ``"float32"`` (see ``RandomProjectionQuantizer``). The fbank is float32 either
        way, as SpeechBrain's ``Fbank`` computes it in the paper's code.
    quantizer_norm : str
        ``"frame"`` (default: targets depend on the utterance only, not on its batch's padding) or
        ``"time"``: the paper's code's normalisation over the padded time axis (see
        ``RandomProjectionQuantizer``).

    Example
    -------
    >>> model = BestRQ(SpeechEncoder("mamba", num_layers=1, d_model=32, d_ffn=64, nhead=1), cb_vocab=64)
    >>> result = model(torch.randn(2, 8000), torch.tensor([1.0, 0.7]))
    >>> result.loss.shape, result.num_masked > 0
    (torch.Size([]), True)
    """

    def __init__(
        self,
        speech_encoder: SpeechEncoder,
        cb_dim: int = 16,
        cb_vocab: int = 8192,
        num_codebooks: int = 1,
        mask_prob: float = 0.15,
        noise_std: float = 0.1,
        per_utterance_mask: bool = False,
        quantizer_seed: int | None = None,
        quantizer_norm: str = "frame",
        target_precision: str = "autocast",
    ) -> None:
        super().__init__()
        check_sizes("BestRQ", cb_dim=cb_dim, cb_vocab=cb_vocab, num_codebooks=num_codebooks)
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"BestRQ: mask_prob must be in (0, 1], got {mask_prob}")
        if noise_std < 0:
            raise ValueError(f"BestRQ: noise_std must be >= 0, got {noise_std}")
        self.speech_encoder = speech_encoder
        stacked_dim = speech_encoder.n_mels * speech_encoder.frames_per_token
        self.quantizer = RandomProjectionQuantizer(
            stacked_dim, cb_dim, cb_vocab, num_codebooks, seed=quantizer_seed, norm=quantizer_norm,
            precision=target_precision,
        )
        self.heads = nn.ModuleList(nn.Linear(speech_encoder.d_model, cb_vocab) for _ in range(num_codebooks))
        self.mask_prob = mask_prob
        self.noise_std = noise_std
        self.per_utterance_mask = per_utterance_mask

    def set_epoch(self, epoch: float) -> None:
        """The training epoch, for the encoder's global normalisation (a no-op otherwise)."""
        self.speech_encoder.set_epoch(epoch)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor, dynchunktrain_config=None) -> BestRQOutput:
        """Waveforms (B, S) with relative lengths (B,) to the masked-prediction loss; the encoder runs in the
        chunks of SpeechBrain's ``dynchunktrain_config`` when one is given (streaming pretraining)."""
        span = self.speech_encoder.frames_per_token
        feats, lengths = self.speech_encoder.features(wavs, wav_lens)
        batch, frames, n_mels = feats.shape
        targets = self.quantizer(feats.reshape(batch, frames // span, span * n_mels))  # (B, T', K)
        mask = compute_span_mask(lengths, frames, self.mask_prob, span, self.per_utterance_mask)
        noisy = apply_mask_noise(feats, mask, self.noise_std)
        encoded = self.speech_encoder.encode(noisy, lengths, dynchunktrain_config=dynchunktrain_config).out
        # Spans are aligned to whole encoder frames, so one fbank frame in four decides.
        token_mask = mask[:, ::span]
        selected = encoded[token_mask]  # (M, E): only masked frames reach the heads
        selected_targets = targets[token_mask]  # (M, K)
        losses, accuracies, predictions = [], [], []
        for k, head in enumerate(self.heads):
            logits = head(selected).float()
            losses.append(F.cross_entropy(logits, selected_targets[:, k]))
            predictions.append(logits.argmax(dim=-1).detach())
            accuracies.append((predictions[-1] == selected_targets[:, k]).float().mean())
        vocab = self.heads[0].out_features
        return BestRQOutput(
            loss=torch.stack(losses).mean(),
            accuracy=torch.stack(accuracies).mean().detach(),
            num_masked=int(selected.shape[0]),
            target_counts=torch.bincount(selected_targets[:, 0].detach(), minlength=vocab),
            prediction_counts=torch.bincount(predictions[0], minlength=vocab),
        )


