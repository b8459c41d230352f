"""Global mean and variance normalisation of features, with its statistics in ``state_dict``.

The BEST-RQ paper's code normalises fbank with SpeechBrain's
``InputNormalization(norm_type="global", update_until_epoch=4)`` as it was on
whettenr/speechbrain-fork (``speechbrain/processing/features.py``): per training batch, the
mean and standard deviation of each utterance over its frames, averaged over the batch, are
folded into running averages with weight ``1 / (batches seen + 1)`` (the first batch sets them)
while the epoch is below ``update_until_epoch``; then they stay fixed. Here the statistics are
buffers, so they are saved in checkpoints with the model, exported with the encoder and loaded
by ``SpeechEncoder.from_pretrained``: downstream features match pretraining.

The statistics never take in a value that is not finite: a batch whose valid frames hold NaN or inf
(audio with such samples) leaves them as they are, with a warning, and is not counted. Padded frames
(beyond ``lengths``) never reach them, whatever they hold.
"""

import math

import torch
from speechbrain.utils.logger import get_logger
from torch import nn

logger = get_logger(__name__)


class GlobalNormalization(nn.Module):
    """Normalises (B, T, F) features with running global statistics.

    Arguments
    ---------
    n_features : int
        Size F of the last dimension.
    update_until_epoch : int
        Statistics are updated in training mode while ``epoch < update_until_epoch``; the
        epoch is set with :meth:`set_epoch` (the training loop does it at every epoch start).
    eps : float
        Floor of the standard deviations.

    Example
    -------
    >>> norm = GlobalNormalization(3).train()
    >>> out = norm(torch.randn(2, 50, 3) * 5 + 2, torch.tensor([1.0, 0.6]))
    >>> int(norm.count), out.shape
    (1, torch.Size([2, 50, 3]))
    """

    def __init__(self, n_features: int, update_until_epoch: int = 4, eps: float = 1e-10) -> None:
        super().__init__()
        self.update_until_epoch = update_until_epoch
        self.eps = eps
        self.epoch: float = 0
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def set_epoch(self, epoch: float) -> None:
        """The current epoch (1-based as SpeechBrain's counter); ``math.inf`` freezes the statistics."""
        self.epoch = epoch

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Normalised ``x`` (B, T, F); ``lengths`` (B,) relative (SpeechBrain's ``wav_lens``)."""
        if self.training and self.epoch < self.update_until_epoch:  # frozen statistics are left untouched
            with torch.no_grad():
                self._update(x, lengths)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def _update(self, x: torch.Tensor, lengths: torch.Tensor) -> None:
        frames = torch.round(lengths.float() * x.shape[1]).long().clamp(min=1)
        valid = (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < frames.unsqueeze(1)).unsqueeze(-1)
        x = torch.where(valid, x.float(), 0.0)  # not x * valid: inf * 0 is NaN
        counts = frames.to(x.dtype).view(-1, 1)
        means = x.sum(dim=1) / counts  # (B, F) per utterance
        variances = torch.where(valid, x - means.unsqueeze(1), 0.0).pow(2).sum(dim=1) / (counts - 1).clamp(min=1)
        stds = variances.sqrt().clamp(min=self.eps)
        batch_mean, batch_std = means.mean(dim=0), stds.mean(dim=0)
        if not bool(torch.isfinite(batch_mean).all() and torch.isfinite(batch_std).all()):
            logger.warning("global normalisation: the batch's features are not all finite (NaN or inf, from its "
                           "audio): its statistics update is skipped")
            return
        if int(self.count) == 0:
            self.mean.copy_(batch_mean)
            self.std.copy_(batch_std)
        else:
            weight = 1.0 / (int(self.count) + 1)
            self.mean.mul_(1 - weight).add_(weight * batch_mean)
            self.std.mul_(1 - weight).add_(weight * batch_std)
        self.count += 1

    def extra_repr(self) -> str:
        until = "never stops" if math.isinf(self.update_until_epoch) else f"until epoch {self.update_until_epoch}"
        return f"{self.mean.shape[0]}, updates {until}"
