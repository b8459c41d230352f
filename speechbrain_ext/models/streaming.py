"""Streaming a :class:`~speechbrain_ext.models.speech_encoder.SpeechEncoder`: audio in pieces of any size,
encoder frames out, equal to the encoder in chunks over the whole recording (``SpeechEncoder.forward`` with the
same ``dynchunktrain_config``).

Each stage keeps only what its next outputs read, as SpeechBrain's ``StreamingASR`` does with the
``FilterProperties`` of its feature extractor:

- fbank frame f is centred on sample ``f * hop`` and reads ``n_fft / 2`` samples either side (zeros before
  the first sample and, once the stream ends, after the last): it is computed once those samples are in,
  from an uncentred STFT of just that stretch;
- global normalisation is per frame (per-utterance normalisation cannot stream and is refused);
- the CNN front-end's two stride-2 blocks (kernel 3) make encoder frame u from fbank frames 4u - 3 .. 4u + 3:
  it runs on the new fbank frames with 4 earlier ones (one encoder frame, whose output it drops);
- encoder frames are gathered into chunks of ``chunk_size`` and go through
  ``MixerConformerEncoder.forward_streaming``; the last, shorter chunk when the stream ends.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from speechbrain_ext.models.normalization import GlobalNormalization


@dataclass
class SpeechEncoderStreamingContext:
    """What :meth:`SpeechEncoder.forward_streaming` carries between pieces of audio: the samples and normalised
    fbank frames the next outputs still read (with the global index of their first one), the encoder frames
    waiting for a full chunk, and the encoder's own context."""

    encoder: Any
    fbank: torch.nn.Module
    samples: Optional[torch.Tensor] = None
    first_sample: int = 0
    feats: Optional[torch.Tensor] = None
    first_feat: int = 0
    feats_done: int = 0
    tokens_done: int = 0
    pending: Optional[torch.Tensor] = None
    ended: bool = False


def make_streaming_context(speech_encoder, dynchunktrain_config) -> SpeechEncoderStreamingContext:
    """A blank context for streaming ``speech_encoder`` in the chunks of ``dynchunktrain_config``."""
    if not isinstance(speech_encoder.normalize, GlobalNormalization):
        raise ValueError("SpeechEncoder streaming needs normalization='global' (per-utterance statistics read "
                         "the whole recording)")
    fbank = copy.deepcopy(speech_encoder.compute_features)
    fbank.compute_STFT.center = False  # each stretch of samples is cut to exactly the windows it holds
    return SpeechEncoderStreamingContext(speech_encoder.encoder.make_streaming_context(dynchunktrain_config), fbank)


def forward_streaming(
    speech_encoder, wavs: torch.Tensor, context: SpeechEncoderStreamingContext, final: bool = False
) -> torch.Tensor:
    """The encoder frames (B, K, E) that the samples so far make final, given the next samples ``wavs`` (B, S)
    of a stream (S may be 0); ``final`` ends the stream and returns every frame left."""
    if context.ended:
        raise ValueError("SpeechEncoder.forward_streaming: this stream has ended; make another context")
    if speech_encoder.training:  # dropout, and normalisation statistics that would move with the stream
        raise ValueError("SpeechEncoder.forward_streaming runs in eval mode: call .eval() first")
    context.ended = final
    stft = context.fbank.compute_STFT
    hop, half = stft.hop_length, stft.n_fft // 2
    wavs = wavs.float()
    context.samples = wavs if context.samples is None else torch.cat([context.samples, wavs], dim=1)
    total = context.first_sample + context.samples.shape[1]  # samples of the stream so far

    # Fbank frames whose window is complete (all of them at the end: zeros after the last sample).
    frames = 1 + total // hop if final else max(0, (total - half) // hop + 1)
    if frames > context.feats_done:
        start = context.feats_done * hop - half  # the first new frame's window, in stream samples
        stop = (frames - 1) * hop + half
        piece = context.samples[:, max(start - context.first_sample, 0): stop - context.first_sample]
        piece = F.pad(piece, (max(context.first_sample - start, 0), 0))  # zeros before the first sample
        piece = F.pad(piece, (0, stop - start - piece.shape[1]))  # and after the last one
        with torch.autocast(device_type=piece.device.type, enabled=False):
            new = speech_encoder.normalize(context.fbank(piece), torch.ones(piece.shape[0], device=piece.device))
        context.feats = new if context.feats is None else torch.cat([context.feats, new], dim=1)
        context.feats_done = frames
        keep_from = frames * hop - half  # the next frame's window starts here
        drop = min(max(keep_from - context.first_sample, 0), context.samples.shape[1])
        context.samples, context.first_sample = context.samples[:, drop:], context.first_sample + drop

    # Encoder frames whose fbank frames are all in (u reads up to 4u + 3); at the end, the zero-padded rest.
    per_token = speech_encoder.frames_per_token
    tokens = -(-context.feats_done // per_token) if final else context.feats_done // per_token
    pieces = [] if context.pending is None else [context.pending]
    if tokens > context.tokens_done:
        start = max(context.tokens_done - 1, 0) * per_token  # one encoder frame earlier: its output is dropped
        window = context.feats[:, start - context.first_feat: tokens * per_token - context.first_feat]
        window = F.pad(window, (0, 0, 0, tokens * per_token - start - window.shape[1]))
        x = speech_encoder.front_end(window)
        x = speech_encoder.input_dropout(speech_encoder.projection(x.flatten(start_dim=2)))
        pieces.append(x[:, 1:] if context.tokens_done > 0 else x)
        context.tokens_done = tokens
        keep_from = (tokens - 1) * per_token
        context.feats = context.feats[:, keep_from - context.first_feat:]
        context.first_feat = keep_from
    pending = torch.cat(pieces, dim=1) if pieces else None

    # Whole chunks through the encoder; at the end, the shorter last one too.
    chunk_size = context.encoder.dynchunktrain_config.chunk_size
    outputs = []
    while pending is not None and (pending.shape[1] >= chunk_size or (final and pending.shape[1] > 0)):
        outputs.append(speech_encoder.encoder.forward_streaming(pending[:, :chunk_size], context.encoder)[0])
        pending = pending[:, chunk_size:]
    context.pending = pending
    if outputs:
        return torch.cat(outputs, dim=1)
    return wavs.new_zeros(wavs.shape[0], 0, speech_encoder.d_model)
