"""Pretrained encoders as frozen feature extractors for downstream tasks (MP3S).

``FrozenEncoder`` rebuilds the encoder that BEST-RQ pretraining exported (fbank settings,
normalisation, CNN front-end, mixer Conformer) from its folder alone and returns every
hidden state; ``WeightedLayerSum`` learns one softmax-normalised weight per layer, as
SpeechBrain's ``WeightedSSLModel`` does for the MP3S benchmark (Zaiem et al. 2023,
https://arxiv.org/abs/2306.00452).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_ext.models.speech_encoder import SpeechEncoder


class FrozenEncoder(nn.Module):
    """A pretrained :class:`SpeechEncoder` that returns all its layers, frozen by default.

    Frozen means no gradients, so the downstream head and layer weights are the only trainable
    parameters, and eval mode (no dropout, even when the surrounding model trains) unless
    ``active_dropout``.

    Arguments
    ---------
    encoder : SpeechEncoder
        The pretrained encoder.
    freeze : bool
        Keep the encoder frozen (MP3S); False fine-tunes it with the head.
    active_dropout : bool
        A frozen encoder follows its parent's train/eval mode, so its dropout is active while the head
        trains and off at validation and test. The paper's MP3S runs did this: whettenr/benchmarks
        ``hparams/ssl_brq.yaml`` wraps the encoder in the fork's ``WeightedEncoderWrapper``, which only
        turns off gradients, and the Brain puts every module in train mode. LayerDrop stays off (that
        YAML's ``TransformerASR`` has none), and so do the normalisation statistics' updates (its
        ``ComputeFeaturesWrapper`` passes epoch 10).

    Example
    -------
    >>> import tempfile
    >>> folder = SpeechEncoder("fastformer", num_layers=2, d_model=32, d_ffn=64, nhead=4).save_pretrained(
    ...     tempfile.mkdtemp())
    >>> encoder = FrozenEncoder.from_pretrained(folder)
    >>> hidden, padding = encoder(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> hidden.shape, padding.shape, encoder.num_layers
    (torch.Size([3, 2, 26, 32]), torch.Size([2, 26]), 3)
    """

    def __init__(self, encoder: SpeechEncoder, freeze: bool = True, active_dropout: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.freeze = freeze
        self.active_dropout = active_dropout
        if active_dropout:
            encoder.encoder.layerdrop_prob = 0.0
        self.num_layers = encoder.config["num_layers"] + 1  # the encoder input and every block
        self.output_dim = encoder.config["d_model"]
        if freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, freeze: bool = True, map_location: str | torch.device = "cpu",
        active_dropout: bool = False,
    ) -> FrozenEncoder:
        """Loads the encoder exported to ``folder`` (``<pretraining output>/encoder``)."""
        return cls(SpeechEncoder.from_pretrained(folder, map_location=map_location), freeze=freeze,
                   active_dropout=active_dropout)

    def train(self, mode: bool = True) -> FrozenEncoder:
        super().train(mode)
        if self.freeze and not self.active_dropout:
            self.encoder.eval()  # a frozen encoder never trains, whatever its parent does
        return self

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, S) with relative lengths (B,).

        Returns
        -------
        hidden : torch.Tensor
            (L, B, T, E): the encoder input and every block output, L = num_layers.
        padding_mask : torch.Tensor
            (B, T), True at padded frames.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            encoded = self.encoder(wavs, wav_lens, output_hidden_states=True)
        return torch.stack(encoded.hidden), encoded.padding_mask


class WeightedLayerSum(nn.Module):
    """Softmax-weighted sum of layers, weights initialised to zero (equal weights).

    Arguments
    ---------
    num_layers : int
        Number of stacked hidden states L.
    layernorm : bool
        Normalise each layer (no learned scale) before the sum, as SpeechBrain's option does.

    Example
    -------
    >>> weighted = WeightedLayerSum(3)
    >>> weighted(torch.randn(3, 2, 10, 8)).shape
    torch.Size([2, 10, 8])
    """

    def __init__(self, num_layers: int, layernorm: bool = False) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.layernorm = layernorm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(L, B, T, E) -> (B, T, E)."""
        if hidden.shape[0] != self.weights.shape[0]:
            raise ValueError(
                f"WeightedLayerSum has {self.weights.shape[0]} weights but got {hidden.shape[0]} layers"
            )
        if self.layernorm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        weights = self.weights.softmax(dim=0).to(hidden.dtype)
        return torch.einsum("l,lbte->bte", weights, hidden)

    def layer_weights(self) -> list[float]:
        """The current normalised weight of each layer (for logs)."""
        return self.weights.detach().softmax(dim=0).tolist()


class WeightedEncoderFeatures(nn.Module):
    """A frozen pretrained encoder and a learned weighted sum of its layers: MP3S input features.

    Example
    -------
    >>> import tempfile
    >>> folder = SpeechEncoder("mamba", num_layers=1, d_model=16, d_ffn=32, nhead=1).save_pretrained(
    ...     tempfile.mkdtemp())
    >>> features = WeightedEncoderFeatures.from_pretrained(folder)
    >>> feats, lengths = features(torch.randn(2, 8000), torch.tensor([1.0, 0.5]))
    >>> feats.shape, lengths.tolist()
    (torch.Size([2, 13, 16]), [1.0, 0.5384615659713745])
    """

    def __init__(self, encoder: FrozenEncoder, layernorm: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.weighted = WeightedLayerSum(encoder.num_layers, layernorm)
        self.output_dim = encoder.output_dim

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, layernorm: bool = False, freeze: bool = True, active_dropout: bool = False
    ) -> WeightedEncoderFeatures:
        """Loads the encoder exported to ``folder`` with fresh (equal) layer weights (``active_dropout``: see
        :class:`FrozenEncoder`)."""
        return cls(FrozenEncoder.from_pretrained(folder, freeze=freeze, active_dropout=active_dropout),
                   layernorm=layernorm)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, S) -> features (B, T, E) and their relative lengths (B,)."""
        hidden, padding = self.encoder(wavs, wav_lens)
        lengths = (~padding).sum(dim=1).to(hidden.dtype) / padding.shape[1]
        return self.weighted(hidden), lengths


def encoder_dim(folder: str | Path) -> int:
    """Width of the exported encoder in ``folder`` (for sizing heads in YAML)."""
    return SpeechEncoder.read_config(folder)["d_model"]
