"""Helpers shared by several toy corpora."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def _write_wav_pcm16(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Writes mono 16-bit WAV (the format of VoxCeleb1 and IEMOCAP), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
