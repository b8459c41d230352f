"""Audio file checks shared by corpus preparation and the training data pipelines.

A bad file (unreadable, empty, too short or long, wrong rate) is found from its header alone,
before training, so that it is left out with a logged, counted reason instead of failing an
epoch halfway.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import soundfile as sf
import torch
import torchaudio
from speechbrain.dataio import audio_io

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioProblem:
    """Why a file is left out: ``reason`` is one word, ``detail`` says what was found."""

    path: str
    reason: str
    detail: str


def check_audio(
    path: str, sample_rate: int | None, min_duration: float = 0.0, max_duration: float | None = None
) -> tuple[float, AudioProblem | None]:
    """Duration in seconds of one file from its header, and the problem with it (None if fine).

    ``sample_rate`` None accepts any rate (for audio that is resampled when read).

    Reasons: ``missing_audio``, ``empty``, ``unreadable``, ``wrong_sample_rate``, ``not_mono``,
    ``too_short``, ``too_long``.

    Example
    -------
    >>> check_audio("/no/such/file.flac", 16000)[1].reason
    'missing_audio'
    """
    if not os.path.isfile(path):
        return 0.0, AudioProblem(path, "missing_audio", "no such file")
    if os.path.getsize(path) == 0:
        return 0.0, AudioProblem(path, "empty", "0 bytes")
    try:
        info = sf.info(path)
    except Exception as err:  # noqa: BLE001 - any failure to read the header
        return 0.0, AudioProblem(path, "unreadable", " ".join(str(err).split()))
    if info.frames <= 0:
        return 0.0, AudioProblem(path, "empty", "0 frames")
    duration = info.frames / info.samplerate
    if sample_rate is not None and info.samplerate != sample_rate:
        return duration, AudioProblem(path, "wrong_sample_rate", f"{info.samplerate} Hz, expected {sample_rate} Hz")
    if info.channels != 1:
        return duration, AudioProblem(path, "not_mono", f"{info.channels} channels")
    if duration < min_duration:
        return duration, AudioProblem(path, "too_short", f"{duration:.3f} s < {min_duration} s")
    if max_duration is not None and duration > max_duration:
        return duration, AudioProblem(path, "too_long", f"{duration:.3f} s > {max_duration} s")
    return duration, None


def check_audio_files(
    paths: Iterable[str], sample_rate: int | None, min_duration: float = 0.0, max_duration: float | None = None
) -> list[tuple[float, AudioProblem | None]]:
    """:func:`check_audio` over many files, in order; header reads overlap on a few threads."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda p: check_audio(p, sample_rate, min_duration, max_duration), paths))


def summarize_problems(problems: Iterable[AudioProblem]) -> str:
    """``"empty=2, unreadable=1"``: counts per reason, for logs."""
    counts = Counter(problem.reason for problem in problems)
    return ", ".join(f"{reason}={count}" for reason, count in sorted(counts.items()))


def read_audio_resampled(path: str, target_rate: int) -> torch.Tensor:
    """A mono waveform (L,) at ``target_rate``, from a file of any rate soundfile reads (MP3 too).

    Channels are averaged; resampling is torchaudio's band-limited sinc (pure torch, no FFmpeg).
    """
    audio, rate = audio_io.load(str(path), dtype=torch.float32)  # (C, L)
    signal = audio.mean(dim=0) if audio.shape[0] > 1 else audio[0]
    if rate != target_rate:
        signal = torchaudio.functional.resample(signal, rate, target_rate)
    return signal
