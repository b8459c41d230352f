"""Light downstream heads of the MP3S benchmark on top of weighted encoder layers, and the speaker loss.

Every head takes frames ``x`` (B, T, E) and relative lengths (B,) and returns scores:
``FrameHead`` per frame (B, T, C) for CTC; ``PooledHead`` and ``EmbeddingHead`` per utterance (B, C).
The networks inside are SpeechBrain's (LSTM, ContextNet, ECAPA-TDNN, x-vector, Classifier).
``AngularMarginLoss`` is the additive angular margin loss of the speaker heads.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import AdditiveAngularMargin
from torch import nn


def takes_lengths(module: nn.Module) -> bool:
    """Whether ``module.forward`` has a parameter named ``lengths`` (SpeechBrain's LSTM, GRU and RNN do).

    Such a module is given the relative lengths (B,) of the frames as ``lengths=``, so that it does not
    run over the padding; any other is called on the frames alone.

    Example
    -------
    >>> from speechbrain.nnet.RNN import LSTM
    >>> takes_lengths(LSTM(hidden_size=4, input_shape=(None, None, 3))), takes_lengths(nn.Linear(3, 4))
    (True, False)
    """
    return "lengths" in inspect.signature(module.forward).parameters


def _run(module: nn.Module | None, pass_lengths: bool, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Runs a head's sequence network (None: the frames pass through), given ``lengths`` if it declares them.

    Recurrent layers return ``(out, state)``: the output is the first element.
    """
    if module is None:
        return x
    out = module(x, lengths=lengths) if pass_lengths else module(x)
    return out[0] if isinstance(out, tuple) else out


def valid_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, T) True on valid frames, from SpeechBrain's relative lengths."""
    counts = torch.round(lengths * max_len).clamp(min=1)
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < counts.unsqueeze(1)


class FrameHead(nn.Module):
    """A sequence network (BiLSTM, ContextNet, or none for a linear head) and a linear output per frame.

    A sequence network that takes ``lengths`` (SpeechBrain's ``LSTM``) is given them, so it reads each
    utterance's own frames (packed); ``use_lengths=False`` runs it on the padded batch, as MP3S's
    ``train.py`` calls it (then an utterance's output depends on its batch's padding).

    Example
    -------
    >>> from speechbrain.nnet.RNN import LSTM
    >>> head = FrameHead(LSTM(hidden_size=16, input_shape=(None, None, 8), bidirectional=True), 32, 5)
    >>> head(torch.randn(2, 10, 8), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 10, 5])
    """

    def __init__(self, encoder: nn.Module | None, encoder_dim: int, num_outputs: int, use_lengths: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder_takes_lengths = use_lengths and encoder is not None and takes_lengths(encoder)
        self.output = nn.Linear(encoder_dim, num_outputs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.output(_run(self.encoder, self.encoder_takes_lengths, x, lengths))


class PooledHead(nn.Module):
    """An optional sequence network, statistics pooling over valid frames, then a linear classifier.

    Arguments
    ---------
    encoder : nn.Module or None
        Sequence network before pooling (e.g. a BiLSTM), or None.
    encoder_dim : int
        Width of the frames that are pooled.
    num_outputs : int
        Number of classes.
    pool_std : bool
        Pool the standard deviation with the mean (statistics pooling), as well as the mean alone.
    normalize : bool
        Standardise the pooled vector with batch statistics (BatchNorm, no affine) before the
        classifier: pooled layer-normalised frames vary little between utterances, and without it
        a linear classifier learns slowly.
    bias : bool
        Bias of the linear classifier.
    use_lengths : bool
        Give ``lengths`` to a sequence network that takes them (as :class:`FrameHead`).

    Example
    -------
    >>> head = PooledHead(None, 8, 4)
    >>> head(torch.randn(2, 10, 8), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        encoder: nn.Module | None,
        encoder_dim: int,
        num_outputs: int,
        pool_std: bool = True,
        normalize: bool = True,
        bias: bool = True,
        use_lengths: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder_takes_lengths = use_lengths and encoder is not None and takes_lengths(encoder)
        self.pool_std = pool_std
        pooled_dim = encoder_dim * (2 if pool_std else 1)
        self.norm = nn.BatchNorm1d(pooled_dim, affine=False) if normalize else nn.Identity()
        self.output = nn.Linear(pooled_dim, num_outputs, bias=bias)

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean (and standard deviation) of the (encoded) valid frames: (B, E) or (B, 2E)."""
        x = _run(self.encoder, self.encoder_takes_lengths, x, lengths)
        valid = valid_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        count = valid.sum(dim=1)
        mean = (x * valid).sum(dim=1) / count
        if not self.pool_std:
            return mean
        variance = ((x - mean.unsqueeze(1)).pow(2) * valid).sum(dim=1) / count
        return torch.cat([mean, variance.clamp(min=1e-8).sqrt()], dim=-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(self.embed(x, lengths)))


class EmbeddingHead(nn.Module):
    """A speaker-embedding network (ECAPA-TDNN, x-vector) and SpeechBrain's cosine classifier.

    Scores are cosine similarities to one learned vector per class, for an additive angular
    margin loss; ``embed`` gives the utterance embedding used for verification.

    Example
    -------
    >>> from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
    >>> ecapa = ECAPA_TDNN(8, channels=[16, 16, 16, 16, 48], lin_neurons=12)
    >>> head = EmbeddingHead(ecapa, Classifier(12, out_neurons=3))
    >>> head(torch.randn(2, 10, 8), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 3])
    """

    def __init__(self, embedding_model: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.embedding_model = embedding_model
        self.classifier = classifier

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, E) -> (B, D) utterance embeddings."""
        return self.embedding_model(x, lengths).squeeze(1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x, lengths).unsqueeze(1)).squeeze(1)


class AngularMarginLoss(nn.Module):
    """Additive angular margin softmax (ArcFace) on cosine scores (B, C) and labels (B,), as MP3S's speaker heads.

    Example
    -------
    >>> loss = AngularMarginLoss(margin=0.2, scale=30.0)
    >>> loss(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1])).shape
    torch.Size([])
    """

    def __init__(self, margin: float = 0.2, scale: float = 30.0) -> None:
        super().__init__()
        self.margin = AdditiveAngularMargin(margin=margin, scale=scale)

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.margin(scores, F.one_hot(labels, scores.shape[-1]).to(scores.dtype))
        return F.cross_entropy(logits, labels)


def unit_strides(num_blocks: int) -> list[int]:
    """Stride 1 for every ContextNet block: the encoder's 40 ms frame rate is kept."""
    return [1] * num_blocks
