"""Exported encoders as SpeechBrain pretrained models.

An encoder folder written by BEST-RQ pretraining (``<output_folder>/encoder``, or
``SpeechEncoder.save_pretrained``) holds ``hyperparams.yaml``, so SpeechBrain's
``from_hparams`` loads it, offline, from the folder alone::

    from speechbrain_ext.inference import MixerEncoder
    encoder = MixerEncoder.from_hparams(source="runs/summarymixing/encoder")
    features = encoder.encode_file("speech.flac")                 # (1, T, E): the last layer
    layer6 = encoder.encode_file("speech.flac", output=6)         # one hidden state
    every = encoder.encode_batch(wavs, wav_lens, output="all")    # (L, B, T, E)
    mixed = encoder.encode_batch(wavs, wav_lens, output="weighted", layer_weights=w)

A recognizer fine-tuned by ``recipes/LibriSpeech/CTC`` (``<output_folder>/transcriber``) loads
the same way and transcribes::

    from speechbrain_ext.inference import MixerASR
    asr = MixerASR.from_hparams(source="runs/ctc/transcriber")
    text = asr.transcribe_file("speech.flac")
    texts, tokens = asr.transcribe_batch(wavs, wav_lens)

Files of any sampling rate and channel count are read with soundfile (SpeechBrain's
``audio_io``), averaged to mono and resampled to the model's rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import torch
from speechbrain.decoders import ctc_greedy_decode
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.fetching import LocalStrategy
from torch import nn

from speechbrain_ext.asr import CTCHead, encoder_features
from speechbrain_ext.data.audio import read_audio_resampled
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.mp3s.text import CharacterUnits

OUTPUTS = ("last", "all", "weighted")


def build_encoder(config: dict) -> SpeechEncoder:
    """The encoder of an exported folder, from its settings (``hyperparams.yaml`` calls this)."""
    return SpeechEncoder(**config)


def load_encoder_weights(encoder: SpeechEncoder, path: Union[str, Path]) -> None:
    """Pretrainer hook: loads the weights strictly, with ``weights_only=True`` (no pickled code runs),
    and freezes the global normalisation statistics at their pretraining values."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder.load_state_dict(state, strict=True)
    encoder.set_epoch(math.inf)


def build_head(config: dict) -> CTCHead:
    """The CTC head of an exported recognizer, from its settings (``hyperparams.yaml`` calls this)."""
    return CTCHead(**config)


def load_module_weights(module: nn.Module, path: Union[str, Path]) -> None:
    """Pretrainer hook: loads a module's weights strictly, with ``weights_only=True``."""
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)


def load_tokenizer(tokenizer, path: Union[str, Path]) -> None:
    """Pretrainer hook: the characters of a ``CTCTextEncoder`` (a plain-text file, no code runs)."""
    tokenizer.load(path)
    tokenizer.ignore_len()  # outputs past its characters read as nothing (CharacterUnits)


def _read_in_place(source, savedir, kwargs: dict):
    """``savedir`` for ``from_hparams``: a local folder is read in place (no copy, no link) without one; the
    folder's ``hyperparams.yaml`` and ``encoder_config.json`` must describe the same encoder."""
    if Path(str(source)).is_dir():
        SpeechEncoder.read_config(source)  # the folder's two descriptions agree (or a clear error)
        if savedir is None:
            kwargs.setdefault("local_strategy", LocalStrategy.NO_LINK)
            savedir = source
    return savedir


class MixerEncoder(Pretrained):
    """A pretrained speechbrain_ext encoder: waveforms or audio files to frame vectors (40 ms frames).

    Load with ``MixerEncoder.from_hparams(source=<exported folder>)``; a local folder is read in
    place (no copy, no link, nothing downloaded) unless ``savedir`` is given.

    Example
    -------
    >>> import tempfile
    >>> folder = SpeechEncoder("fastformer", num_layers=2, d_model=32, d_ffn=64, nhead=4).save_pretrained(
    ...     tempfile.mkdtemp())
    >>> encoder = MixerEncoder.from_hparams(source=str(folder))
    >>> wavs = torch.randn(2, 16000)
    >>> encoder.encode_batch(wavs, torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 26, 32])
    >>> encoder.encode_batch(wavs, output="all").shape, encoder.num_layers
    (torch.Size([3, 2, 26, 32]), 3)
    """

    MODULES_NEEDED = ["encoder"]
    HPARAMS_NEEDED = ["sample_rate"]

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", savedir=None, **kwargs):
        """SpeechBrain's ``from_hparams``; a local folder is read in place without ``savedir``, and its
        ``hyperparams.yaml`` must describe the encoder of its ``encoder_config.json``."""
        savedir = _read_in_place(source, savedir, kwargs)
        return super().from_hparams(source, hparams_file=hparams_file, savedir=savedir, **kwargs)

    @property
    def num_layers(self) -> int:
        """Hidden states available: the encoder input and every block output."""
        return self.mods.encoder.config["num_layers"] + 1

    def encode_batch(
        self,
        wavs: torch.Tensor,
        wav_lens: Optional[torch.Tensor] = None,
        output: Union[str, int] = "last",
        layer_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Encodes waveforms (B, S) at ``sample_rate`` with relative lengths (B,) (all 1 when None).

        Arguments
        ---------
        output : str or int
            ``"last"``: the encoder output after its final norm, (B, T, E); an int ``i``: hidden state
            i (0 = the encoder input, ``num_layers - 1`` = the last block before the final norm),
            (B, T, E); ``"all"``: every hidden state, (L, B, T, E); ``"weighted"``: the sum of the
            hidden states weighted by ``softmax(layer_weights)`` (L,), as MP3S's learned layer sum.

        Frames past an utterance's length are padding.
        """
        if output not in OUTPUTS and not (isinstance(output, int) and not isinstance(output, bool)):
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)} or a layer index, got {output!r}")
        if isinstance(output, int) and not 0 <= output < self.num_layers:
            raise ValueError(f"layer {output} does not exist: this encoder has hidden states 0..{self.num_layers - 1}")
        if output == "weighted" and (layer_weights is None or layer_weights.shape != (self.num_layers,)):
            raise ValueError(f"output='weighted' needs layer_weights of shape ({self.num_layers},)")
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        wavs, wav_lens = wavs.to(self.device).float(), wav_lens.to(self.device)
        with torch.no_grad():
            encoded = self.mods.encoder(wavs, wav_lens, output_hidden_states=output != "last")
        if output == "last":
            return encoded.out
        hidden = torch.stack(encoded.hidden)
        if output == "all":
            return hidden
        if output == "weighted":
            weights = layer_weights.to(hidden).softmax(dim=0)
            return (hidden * weights.view(-1, 1, 1, 1)).sum(dim=0)
        return hidden[output]

    def encode_file(self, path: Union[str, Path], **kwargs) -> torch.Tensor:
        """Encodes one audio file of any rate and channel count (averaged to mono, resampled);
        ``kwargs`` as :meth:`encode_batch`. Returns a batch of one.

        A file holding samples that are not finite (NaN, inf) or absurd (beyond
        :data:`~speechbrain_ext.data.audio.MAX_ABS_SAMPLE`) is a ValueError naming it."""
        signal = read_audio_resampled(str(path), int(self.hparams.sample_rate))
        return self.encode_batch(signal.unsqueeze(0), torch.ones(1), **kwargs)

    def make_streaming_context(self, dynchunktrain_config):
        """A blank context to stream one recording (or a batch of recordings heard together) in the chunks of
        SpeechBrain's ``DynChunkTrainConfig`` (chunk size in 40 ms encoder frames, left context in chunks)."""
        return self.mods.encoder.make_streaming_context(dynchunktrain_config)

    def get_chunk_size_frames(self, dynchunktrain_config) -> int:
        """Audio samples per chunk of ``dynchunktrain_config`` (SpeechBrain's ``StreamingASR`` name)."""
        encoder = self.mods.encoder
        hop = encoder.compute_features.compute_STFT.hop_length  # samples per fbank frame
        return dynchunktrain_config.chunk_size * encoder.frames_per_token * hop

    def encode_chunk(self, context, chunk: torch.Tensor, final: bool = False) -> torch.Tensor:
        """The encoder frames (B, K, E) that the next samples ``chunk`` (B, S) (or (S,)) of a stream complete,
        K >= 0; ``final=True`` ends the stream and returns the rest. Any S: frames come out a chunk at a time."""
        chunk = chunk.unsqueeze(0) if chunk.dim() == 1 else chunk
        with torch.no_grad():
            return self.mods.encoder.forward_streaming(chunk.to(self.device).float(), context, final=final)

    def encode_stream(self, wavs: torch.Tensor, dynchunktrain_config, piece: Optional[int] = None) -> torch.Tensor:
        """Encodes waveforms (B, S) (or (S,)) as a stream: fed in pieces of ``piece`` samples (one chunk when
        None) through :meth:`encode_chunk`, frames (B, T, E) out; equal to :meth:`encode_batch` in the chunks of
        ``dynchunktrain_config`` (``self.mods.encoder(wavs, wav_lens, dynchunktrain_config=...)``), whose
        frame t never reads a later chunk."""
        wavs = wavs.unsqueeze(0) if wavs.dim() == 1 else wavs
        piece = piece or self.get_chunk_size_frames(dynchunktrain_config)
        context = self.make_streaming_context(dynchunktrain_config)
        outs = [self.encode_chunk(context, wavs[:, start:start + piece]) for start in range(0, wavs.shape[1], piece)]
        outs.append(self.encode_chunk(context, wavs[:, :0], final=True))
        return torch.cat(outs, dim=1)

    def forward(self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.encode_batch(wavs, wav_lens)


class MixerASR(Pretrained):
    """A fine-tuned CTC recognizer (``recipes/LibriSpeech/CTC``): waveforms or audio files to text.

    The exported encoder, its CTC head on characters and greedy CTC decoding, as the recipe decodes. Load
    with ``MixerASR.from_hparams(source=<output_folder>/transcriber)``; a local folder is read in place
    unless ``savedir`` is given, and its weights always come from it (never from the working directory).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.dataio.encoder import CTCTextEncoder
    >>> from speechbrain_ext.asr import export_recognizer
    >>> tokenizer = CTCTextEncoder()
    >>> tokenizer.insert_blank(index=0)
    >>> tokenizer.update_from_iterable(list("AB "))
    >>> encoder = SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4)
    >>> folder = export_recognizer(tempfile.mkdtemp(), encoder, CTCHead(32, 4, hidden_dim=16), tokenizer)
    >>> asr = MixerASR.from_hparams(source=str(folder))
    >>> texts, tokens = asr.transcribe_batch(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> len(texts), all(isinstance(text, str) for text in texts)
    (2, True)
    """

    MODULES_NEEDED = ["encoder", "head"]
    HPARAMS_NEEDED = ["sample_rate", "blank_index", "tokenizer"]

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", savedir=None, **kwargs):
        """SpeechBrain's ``from_hparams``; a local folder is read in place without ``savedir``."""
        savedir = _read_in_place(source, savedir, kwargs)
        return super().from_hparams(source, hparams_file=hparams_file, savedir=savedir, **kwargs)

    def encode_batch(self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC log-probabilities (B, T, V) of waveforms (B, S) at ``sample_rate`` with relative lengths (B,)
        (all 1 when None), and the frames' relative lengths (B,)."""
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        wavs, wav_lens = wavs.to(self.device).float(), wav_lens.to(self.device)
        layer_weights = getattr(self.mods, "layer_weights", None)
        with torch.no_grad():
            feats, lengths = encoder_features(self.mods.encoder, wavs, wav_lens, layer_weights)
            return self.mods.head(feats).log_softmax(dim=-1), lengths

    def transcribe_batch(self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None
                         ) -> tuple[list[str], list[list[int]]]:
        """The text of each waveform (words separated by one space) and its decoded output indices."""
        log_probs, lengths = self.encode_batch(wavs, wav_lens)
        tokens = ctc_greedy_decode(log_probs.cpu(), lengths.cpu(), blank_id=int(self.hparams.blank_index))
        units = CharacterUnits(self.hparams.tokenizer, log_probs.shape[-1])
        return [" ".join(units.words(hyp)) for hyp in tokens], tokens

    def transcribe_file(self, path: Union[str, Path]) -> str:
        """The text of one audio file of any rate and channel count (averaged to mono, resampled).

        A file holding samples that are not finite (NaN, inf) or absurd is a ValueError naming it."""
        signal = read_audio_resampled(str(path), int(self.hparams.sample_rate))
        return self.transcribe_batch(signal.unsqueeze(0), torch.ones(1))[0][0]

    def forward(self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None) -> list[str]:
        return self.transcribe_batch(wavs, wav_lens)[0]
