"""``SpeechEncoder``: the network BEST-RQ pretraining produces and every downstream use reuses.

fbank -> normalisation (per utterance, or global statistics frozen after pretraining) -> CNN front-end
(two stride-2 blocks: 40 ms frames) -> linear projection -> ``MixerConformerEncoder``. It is built from
plain settings, so that ``save_pretrained`` / ``from_pretrained`` rebuild it from a folder alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.processing.features import InputNormalization
from torch import nn

from speechbrain_ext.files import atomic_writer
from speechbrain_ext.mixers import resolve_mixer
from speechbrain_ext.models import streaming
from speechbrain_ext.models.dropout import use_fast_dropout
from speechbrain_ext.models.encoder import MixerConformerEncoder, check_encoder_options
from speechbrain_ext.models.front_end import FastConvolutionFrontEnd
from speechbrain_ext.models.normalization import GlobalNormalization
from speechbrain_ext.sizes import SIZES, paper_encoder_settings, paper_mixer_kwargs

CONFIG_FILE = "encoder_config.json"
# The CNN front-end of each implementation: the same function and parameters either way.
FRONT_ENDS = {"fast": FastConvolutionFrontEnd, "speechbrain": ConvolutionFrontEnd}
INITS = ("default", "xavier_normal")
NORMALIZATIONS = ("sentence", "global")
WEIGHTS_FILE = "encoder.ckpt"


@dataclass
class EncoderOutput:
    """What :meth:`SpeechEncoder.encode` returns.

    ``out`` (B, T', E) after the final norm; ``hidden`` the encoder input and every block
    output (or None); ``padding_mask`` (B, T') True at padded encoder frames.
    """

    out: torch.Tensor
    hidden: list[torch.Tensor] | None
    padding_mask: torch.Tensor


class SpeechEncoder(nn.Module):
    """Fbank, normalisation, CNN front-end and mixer Conformer: waveforms to frame vectors.

    Every default is the paper's base model (whettenr/brq-att-alt-exp ``hparams/*.yaml`` on
    whettenr/speechbrain-fork): ``SpeechEncoder("fastformer")`` is the paper's base Fastformer
    encoder, and :meth:`paper` builds either size from :mod:`speechbrain_ext.sizes`.

    Arguments
    ---------
    mixer : str
        Mixer name of ``speechbrain_ext.mixers.MIXERS``.
    num_layers, d_model, d_ffn, nhead : int
        Encoder size (paper base: 12 layers, d_ffn 2048, 8 heads). ``d_model=None`` takes the
        paper's base width of ``mixer`` (the widths that equalise parameters across mixers).
    mixer_kwargs : dict, optional
        Mixer settings beyond the mixer's own defaults (which are the paper's).
    dropout : float
        Dropout in the encoder blocks.
    kernel_size : int
        Depthwise convolution kernel of the Conformer blocks.
    layerdrop_prob : float
        LayerDrop probability while training (paper: 0.05 base, 0.1 large).
    sample_rate, n_fft, n_mels, hop_length : int or float
        Fbank settings (hop in ms).
    cnn_channels : tuple of int
        Output channels of the two stride-2 convolution blocks.
    activation : str
        Activation of the Conformer blocks, a name of ``speechbrain_ext.mixers._common.ACTIVATIONS``
        (the paper's code: "swish").
    input_dropout : float
        Dropout after the linear projection into the encoder (the paper's code: ``dropout``).
    input_positions : str, optional
        ``"auto"``: a sinusoid added at the encoder input where the paper's ``TransformerASR.encode``
        adds one for ``mixer`` (every mixer but mhsa and hypermixing: the mixer class's
        ``encoder_input_positions``); ``"absolute"``: always; None: never.
    mixer_output_dropout : bool
        Dropout on each mixer's output before the residual sum (the paper's code: none).
    final_norm_eps : float
        Epsilon of the encoder's final layer norm (the paper's code: 1e-6).
    init : str
        ``"xavier_normal"``: every weight of two or more dimensions of the projection and the
        encoder redrawn with Xavier normal, as SpeechBrain's ``TransformerASR._init_params`` does in
        the paper's code; ``"default"``: each module's own initialisation.
    normalization : str
        ``"global"``: running statistics of the training data (the paper's code), kept in
        ``state_dict`` (:class:`~speechbrain_ext.models.normalization.GlobalNormalization`);
        ``"sentence"``: each utterance normalised by its own statistics.
    normalization_until_epoch : int
        With ``"global"``: the statistics are updated while the epoch is below this (paper: 4).
    implementation : str
        ``"fast"``: the CNN front-end is
        :class:`~speechbrain_ext.models.front_end.FastConvolutionFrontEnd` (the same function and
        parameter names as SpeechBrain's ``ConvolutionFrontEnd``, 3-4x faster on the CPU) and every
        dropout draws its CPU masks with :func:`~speechbrain_ext.models.dropout.cpu_dropout` (same
        distribution, another random stream); ``"speechbrain"``: SpeechBrain's front-end and
        ``nn.Dropout`` themselves. The same parameters either way: checkpoints load into both.

    Example
    -------
    >>> enc = SpeechEncoder("fastformer", num_layers=2, d_model=64, d_ffn=128, nhead=4)
    >>> feats, lengths = enc.features(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> feats.shape, lengths.tolist()
    (torch.Size([2, 104, 80]), [101, 51])
    >>> enc.encode(feats, lengths).out.shape
    torch.Size([2, 26, 64])
    >>> SpeechEncoder("mamba").d_model
    474
    """

    frames_per_token = 4  # two stride-2 convolution blocks

    def __init__(
        self,
        mixer: str,
        num_layers: int = 12,
        d_model: int | None = None,
        d_ffn: int = 2048,
        nhead: int = 8,
        mixer_kwargs: dict | None = None,
        dropout: float = 0.1,
        kernel_size: int = 31,
        layerdrop_prob: float = 0.05,
        sample_rate: int = 16000,
        n_fft: int = 400,
        n_mels: int = 80,
        hop_length: float = 10,
        cnn_channels: tuple[int, int] = (128, 32),
        activation: str = "swish",
        input_dropout: float = 0.1,
        input_positions: str | None = "auto",
        mixer_output_dropout: bool = False,
        final_norm_eps: float = 1e-6,
        init: str = "xavier_normal",
        normalization: str = "global",
        normalization_until_epoch: int = 4,
        implementation: str = "fast",
    ) -> None:
        # Every argument, resolved below, is saved with the weights: from_pretrained rebuilds from it.
        config = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        super().__init__()
        self.config = config = _resolved_settings(config)
        d_model, input_positions = config["d_model"], config["input_positions"]
        check_encoder_options(num_layers, d_model, d_ffn, nhead, kernel_size, dropout, layerdrop_prob)
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.d_model = d_model
        self.compute_features = Fbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, hop_length=hop_length)
        if normalization == "global":
            self.normalize = GlobalNormalization(n_mels, update_until_epoch=normalization_until_epoch)
        else:
            self.normalize = InputNormalization(norm_type="sentence")
        self.front_end = FRONT_ENDS[implementation](
            input_shape=(None, None, n_mels),
            num_blocks=2,
            num_layers_per_block=1,
            out_channels=tuple(cnn_channels),
            kernel_sizes=(3, 3),
            strides=(2, 2),
            residuals=(False, False),
        )
        front_end_dim = cnn_channels[-1] * -(-n_mels // self.frames_per_token)  # two stride-2 halvings
        self.projection = nn.Linear(front_end_dim, d_model)
        self.input_dropout = nn.Dropout(input_dropout)
        self.encoder = MixerConformerEncoder(
            num_layers,
            d_model,
            d_ffn,
            nhead,
            mixer=mixer,
            kernel_size=kernel_size,
            dropout=dropout,
            activation=activation,
            layerdrop_prob=layerdrop_prob,
            mixer_kwargs=mixer_kwargs,
            mixer_output_dropout=mixer_output_dropout,
            input_positions=input_positions,
            final_norm_eps=final_norm_eps,
        )
        if init == "xavier_normal":
            for parameter in [*self.projection.parameters(), *self.encoder.parameters()]:
                if parameter.dim() > 1:
                    nn.init.xavier_normal_(parameter)
        if implementation == "fast":
            use_fast_dropout(self)

    @classmethod
    def paper(cls, size: str, mixer: str, **overrides) -> SpeechEncoder:
        """The paper's ``size`` ("base" or "large") encoder with ``mixer``, from :mod:`speechbrain_ext.sizes`
        (the model the shipped BEST-RQ YAMLs build); ``overrides`` replace single settings (the mixer's
        paper settings follow an overridden ``d_model``).

        Example
        -------
        >>> encoder = SpeechEncoder.paper("large", "summarymixing", num_layers=1)
        >>> encoder.d_model, len(encoder.encoder.layers)
        (976, 1)
        """
        settings = {**paper_encoder_settings(size, mixer), **overrides}
        if "d_model" in overrides and "mixer_kwargs" not in overrides:
            settings["mixer_kwargs"] = paper_mixer_kwargs(mixer, settings["d_model"])
        return cls(**settings)

    def set_epoch(self, epoch: float) -> None:
        """Tells global normalisation the training epoch (it stops updating at ``normalization_until_epoch``)."""
        if isinstance(self.normalize, GlobalNormalization):
            self.normalize.set_epoch(epoch)

    def features(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised fbank (B, T, n_mels), T padded to a multiple of 4, and valid frames per row.

        ``wav_lens`` are SpeechBrain's relative lengths (fraction of the padded length). Samples beyond them are
        zeroed first, so that whatever the padding holds (NaN, inf, 1e30) no valid frame changes.
        """
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            samples = torch.round(wav_lens.float() * wavs.shape[1]).long()
            beyond = torch.arange(wavs.shape[1], device=wavs.device).unsqueeze(0) >= samples.unsqueeze(1)
            feats = self.compute_features(wavs.float().masked_fill(beyond, 0.0))
            feats = self.normalize(feats, wav_lens.float())
        # A row of n samples has 1 + n // hop frames (centred STFT): the ceiling of its share.
        lengths = torch.ceil(wav_lens.float() * feats.shape[1] - 1e-3).long().clamp(1, feats.shape[1])
        # Zero the padded frames, as the CNN's own padding is: its kernels then read the same
        # values beside a short utterance whether it is alone or in a padded batch.
        padding = torch.arange(feats.shape[1], device=feats.device).unsqueeze(0) >= lengths.unsqueeze(1)
        feats = feats.masked_fill(padding.unsqueeze(-1), 0.0)
        pad = -feats.shape[1] % self.frames_per_token
        return F.pad(feats, (0, 0, 0, pad)), lengths

    def encode(
        self, feats: torch.Tensor, lengths: torch.Tensor, output_hidden_states: bool = False,
        dynchunktrain_config=None,
    ) -> EncoderOutput:
        """Encodes normalised fbank (B, T, n_mels) with ``lengths`` valid frames per row; in the chunks of
        SpeechBrain's ``dynchunktrain_config`` (encoder frames) when one is given."""
        x = self.front_end(feats)  # (B, T/4, n_mels/4, C)
        x = self.input_dropout(self.projection(x.flatten(start_dim=2)))
        token_lengths = (lengths + self.frames_per_token - 1) // self.frames_per_token
        padding_mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) >= token_lengths.unsqueeze(1)
        # Only a chunked call passes the keyword: an encoder put in its place need not take it.
        chunks = {} if dynchunktrain_config is None else {"dynchunktrain_config": dynchunktrain_config}
        outputs = self.encoder(x, src_key_padding_mask=padding_mask, output_hidden_states=output_hidden_states,
                               **chunks)
        out, hidden = outputs[0], (outputs[2] if output_hidden_states else None)
        return EncoderOutput(out, hidden, padding_mask)

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor, output_hidden_states: bool = False,
        dynchunktrain_config=None,
    ) -> EncoderOutput:
        """Waveforms (B, S) with relative lengths (B,) to encoder frames (in chunks with ``dynchunktrain_config``)."""
        feats, lengths = self.features(wavs, wav_lens)
        return self.encode(feats, lengths, output_hidden_states, dynchunktrain_config)

    def make_streaming_context(self, dynchunktrain_config) -> streaming.SpeechEncoderStreamingContext:
        """A blank context for :meth:`forward_streaming` in the chunks of ``dynchunktrain_config`` (encoder
        frames of 40 ms); needs global normalisation."""
        return streaming.make_streaming_context(self, dynchunktrain_config)

    def forward_streaming(
        self, wavs: torch.Tensor, context: streaming.SpeechEncoderStreamingContext, final: bool = False
    ) -> torch.Tensor:
        """Streams audio: the next samples (B, S) of a stream, any S, in; the encoder frames (B, K, E) they
        complete out (K may be 0); ``final=True`` ends the stream and returns the rest. All the frames of a
        stream equal :meth:`forward` of the whole recording with the context's ``dynchunktrain_config``, in
        eval mode (:mod:`speechbrain_ext.models.streaming`)."""
        return streaming.forward_streaming(self, wavs, context, final)

    def save_pretrained(self, folder: str | Path, card: dict | None = None) -> Path:
        """Writes the weights and the settings that rebuild this encoder into ``folder``, with a
        ``hyperparams.yaml`` (SpeechBrain's ``from_hparams``: :class:`speechbrain_ext.inference.MixerEncoder`)
        and a model card ``README.md``; ``card`` adds what the encoder cannot know about itself
        (``optimizer_steps``, ``hours``, ``epochs``, ``masked_accuracy``, ``command``, any other key)."""
        from speechbrain_ext.pretrained_folder import write_hyperparams, write_model_card

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_writer(folder / WEIGHTS_FILE, binary=True) as handle:  # never half a file under the real name
            torch.save(self.state_dict(), handle)
        with atomic_writer(folder / CONFIG_FILE) as handle:
            handle.write(json.dumps(self.config, indent=2) + "\n")
        write_hyperparams(folder, self.config, WEIGHTS_FILE)
        write_model_card(folder, self.config, sum(p.numel() for p in self.parameters()), card)
        return folder

    @staticmethod
    def read_config(folder: str | Path) -> dict:
        """The settings saved with an exported encoder; a clear error if the folder is not one, or if
        its ``hyperparams.yaml`` describes another encoder."""
        from speechbrain_ext.pretrained_folder import check_settings_agree

        folder = Path(folder)
        missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not an exported encoder: missing {', '.join(missing)} "
                f"(BEST-RQ pretraining writes them to <output_folder>/encoder/)"
            )
        config = json.loads((folder / CONFIG_FILE).read_text())
        check_settings_agree(folder, config)
        return config

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> SpeechEncoder:
        """Rebuilds an encoder saved by :meth:`save_pretrained` from ``folder`` alone."""
        encoder = cls(**cls.read_config(folder))
        state = torch.load(Path(folder) / WEIGHTS_FILE, map_location=map_location, weights_only=True)
        encoder.load_state_dict(state)
        encoder.set_epoch(math.inf)  # the pretraining statistics, never updated downstream
        return encoder


def _resolved_settings(config: dict) -> dict:
    """``SpeechEncoder``'s arguments with the defaults that depend on the mixer filled in (``d_model=None``,
    ``input_positions="auto"``), as plain JSON values; a clear error for an unknown name."""
    mixer = config["mixer"]
    for name in ("mixer", "activation"):
        if not isinstance(config[name], str):
            raise TypeError(f"SpeechEncoder needs a {name} name (saved with the weights), got {config[name]!r}")
    for name, valid in (("init", INITS), ("normalization", NORMALIZATIONS), ("implementation", tuple(FRONT_ENDS))):
        if config[name] not in valid:
            raise ValueError(f"unknown {name} {config[name]!r}; valid: {', '.join(valid)}")
    resolved = dict(config, mixer_kwargs=dict(config["mixer_kwargs"] or {}), cnn_channels=list(config["cnn_channels"]))
    if resolved["d_model"] is None:
        resolved["d_model"] = SIZES["base"].widths.get(mixer)
        if resolved["d_model"] is None:
            raise ValueError(f"SpeechEncoder: no paper width for mixer {mixer!r}: give d_model")
    if resolved["input_positions"] == "auto":
        resolved["input_positions"] = resolve_mixer(mixer).encoder_input_positions
    return resolved
