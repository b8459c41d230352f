"""A small source-filter (formant) speech synthesizer for deterministic toy corpora.

Each letter of a word becomes a phone-like segment (vowels and sonorants: a glottal pulse
train at the speaker's f0 shaped by formant resonators; consonants: noise bursts, fricative
noise bands, nasal murmurs), words come from a fixed vocabulary and are separated by short
pauses. Speakers differ in f0, vocal-tract length (formant scaling), spectral tilt,
breathiness, speaking rate and pitch range, so speaker identity is learnable from the audio;
`ToyProsody` changes pitch level and range, rate and energy per utterance (emotion-like
prosody). The same seed always gives the same samples. Only numpy and soundfile are used.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

#: The fixed vocabulary of the toy corpora (upper case, as LibriSpeech transcripts).
VOCABULARY: tuple[str, ...] = (
    "THE", "A", "AND", "OF", "TO", "IN", "IS", "IT", "THAT", "HE", "SHE", "WAS",
    "FOR", "ON", "ARE", "WITH", "AS", "HIS", "HER", "THEY", "AT", "BE", "THIS",
    "HAVE", "FROM", "OR", "ONE", "HAD", "BY", "WORD", "BUT", "NOT", "WHAT", "ALL",
    "WERE", "WE", "WHEN", "YOUR", "CAN", "SAID", "THERE", "EACH", "WHICH", "DO",
    "HOW", "TIME", "IF", "WILL", "UP", "OTHER", "ABOUT", "OUT", "MANY", "THEN",
    "THEM", "SO", "SOME", "WOULD", "MAKE", "LIKE", "HIM", "INTO", "LOOK", "TWO",
    "MORE", "GO", "SEE", "NUMBER", "NO", "WAY", "COULD", "PEOPLE", "MY", "FIRST",
    "WATER", "CALL", "WHO", "DOWN", "DAY", "GET", "COME", "MADE", "PART", "DON'T",
    "IT'S", "LITTLE", "HOUSE", "KING", "NIGHT", "GREAT", "SMALL", "QUEEN", "BOX",
    "JUMP", "VERY", "ZERO",
)  # fmt: skip

_FRAME_S = 0.008  # control rate of the synthesizer tracks (8 ms)
_NEUTRAL = (500.0, 1500.0, 2500.0)  # schwa formants, held through pauses


@dataclass(frozen=True)
class ToySpeaker:
    """The voice of one toy speaker.

    Arguments
    ---------
    speaker_id : str
        The corpus speaker ID.
    sex : str
        "F" or "M" (written to speaker lists; the voice is set by the other fields).
    f0 : float
        Mean fundamental frequency in Hz.
    formant_scale : float
        Vocal-tract length factor: every formant frequency is multiplied by it.
    rate : float
        Speaking rate (1.0 = reference phone durations; 1.2 = 20% faster).
    tilt : float
        Extra spectral tilt of the voice (0 = bright, 0.6 = dark).
    breathiness : float
        Aspiration noise mixed into the glottal source (0 = none).
    f0_range : float
        Size of pitch accents and declination relative to the reference.
    jitter : float
        Relative cycle-to-cycle f0 perturbation.
    """

    speaker_id: str
    sex: str
    f0: float
    formant_scale: float
    rate: float = 1.0
    tilt: float = 0.3
    breathiness: float = 0.1
    f0_range: float = 1.0
    jitter: float = 0.01


@dataclass(frozen=True)
class ToyProsody:
    """Utterance-level prosody on top of a speaker's voice (neutral by default).

    Arguments
    ---------
    f0_scale : float
        Multiplies the speaker's mean f0 (e.g. 1.3 for aroused speech).
    f0_range : float
        Multiplies the size of pitch movements.
    rate : float
        Multiplies the speaking rate.
    energy : float
        Multiplies the output level.
    breathiness : float
        Added to the speaker's breathiness.
    """

    f0_scale: float = 1.0
    f0_range: float = 1.0
    rate: float = 1.0
    energy: float = 1.0
    breathiness: float = 0.0


@dataclass(frozen=True)
class _Seg:
    """One phone-like segment: duration (s) and its acoustic targets."""

    dur: float
    formants: tuple[float, float, float] | None = None  # None: keep the previous ones
    voice: float = 0.0  # amplitude of the voiced (formant-filtered) path
    noise: float = 0.0  # amplitude of the noise path
    noise_hz: float = 3000.0  # centre of the noise band
    noise_bw: float = 1500.0  # width (std) of the noise band
    bw_scale: float = 1.0  # formant bandwidth factor (nasals: wider)
    vowel: bool = False  # carries pitch accents


def _vowel(f1: float, f2: float, f3: float) -> list[_Seg]:
    return [_Seg(0.11, (f1, f2, f3), voice=1.0, vowel=True)]


def _sonorant(f1: float, f2: float, f3: float, amp: float, bw: float = 1.0) -> list[_Seg]:
    return [_Seg(0.07, (f1, f2, f3), voice=amp, bw_scale=bw)]


def _fricative(hz: float, bw: float, amp: float, voiced: bool) -> list[_Seg]:
    return [_Seg(0.09, voice=0.25 if voiced else 0.0, noise=amp, noise_hz=hz, noise_bw=bw)]


def _plosive(hz: float, voiced: bool) -> list[_Seg]:
    segs = [
        _Seg(0.05, (250.0, 1200.0, 2400.0), voice=0.1 if voiced else 0.0),  # closure
        _Seg(0.016, noise=1.2, noise_hz=hz, noise_bw=0.6 * hz),  # burst
    ]
    if not voiced:  # aspiration
        segs.append(_Seg(0.03, noise=0.3, noise_hz=1800.0, noise_bw=1200.0))
    return segs


# Every letter maps to a fixed sound, so transcripts are learnable character by character.
_LETTERS: dict[str, list[_Seg]] = {
    "A": _vowel(730, 1090, 2440),
    "E": _vowel(530, 1840, 2480),
    "I": _vowel(390, 1990, 2550),
    "O": _vowel(570, 840, 2410),
    "U": _vowel(440, 1020, 2240),
    "Y": _vowel(270, 2290, 3010),
    "L": _sonorant(360, 1300, 2700, 0.55),
    "R": _sonorant(420, 1300, 1600, 0.6),
    "W": _sonorant(300, 700, 2200, 0.5),
    "M": _sonorant(250, 1000, 2200, 0.35, bw=2.5),
    "N": _sonorant(250, 1600, 2500, 0.35, bw=2.5),
    "S": _fricative(5500, 1200, 0.7, voiced=False),
    "Z": _fricative(5000, 1200, 0.5, voiced=True),
    "F": _fricative(3500, 2500, 0.25, voiced=False),
    "V": _fricative(3000, 2500, 0.2, voiced=True),
    "C": _fricative(2800, 700, 0.6, voiced=False),
    "H": [_Seg(0.06, noise=0.3, noise_hz=1500.0, noise_bw=1500.0)],
    "P": _plosive(800.0, voiced=False),
    "B": _plosive(800.0, voiced=True),
    "T": _plosive(4000.0, voiced=False),
    "D": _plosive(3500.0, voiced=True),
    "K": _plosive(2000.0, voiced=False),
    "G": _plosive(1800.0, voiced=True),
    "Q": _plosive(1500.0, voiced=False) + _sonorant(300, 700, 2200, 0.4),
    "X": _plosive(2000.0, voiced=False) + _fricative(5500, 1200, 0.6, voiced=False),
    "J": _plosive(3000.0, voiced=True) + _fricative(2500, 700, 0.4, voiced=True),
}


def seeded_rng(seed: int, *keys: str) -> np.random.Generator:
    """Returns a generator that depends only on `seed` and the string `keys`.

    Arguments
    ---------
    seed : int
        The corpus seed.
    *keys : str
        Names that make the stream unique (split, speaker, utterance ID...).

    Returns
    -------
    numpy.random.Generator

    Example
    -------
    >>> a = seeded_rng(0, "dev-clean", "84").random()
    >>> b = seeded_rng(0, "dev-clean", "84").random()
    >>> a == b
    True
    """
    entropy = [seed] + [zlib.crc32(key.encode("utf-8")) for key in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def toy_speaker(speaker_id: str, seed: int = 0, sex: str | None = None) -> ToySpeaker:
    """Draws the voice of a toy speaker, deterministically from its ID and the seed.

    Arguments
    ---------
    speaker_id : str
        The speaker ID (the same ID and seed always give the same voice).
    seed : int
        The corpus seed.
    sex : str, optional
        "F" or "M"; drawn at random when None.

    Returns
    -------
    ToySpeaker

    Example
    -------
    >>> spk = toy_speaker("103", seed=0, sex="F")
    >>> 160 < spk.f0 < 260 and spk.formant_scale > 1.0
    True
    """
    rng = seeded_rng(seed, "speaker", speaker_id)
    if sex is None:
        sex = "F" if rng.random() < 0.5 else "M"
    if sex not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    female = sex == "F"
    return ToySpeaker(
        speaker_id=speaker_id,
        sex=sex,
        f0=float(rng.uniform(165.0, 255.0) if female else rng.uniform(85.0, 150.0)),
        formant_scale=float(rng.uniform(1.08, 1.22) if female else rng.uniform(0.86, 1.0)),
        rate=float(rng.uniform(0.85, 1.2)),
        tilt=float(rng.uniform(0.0, 0.6)),
        breathiness=float(rng.uniform(0.02, 0.25)),
        f0_range=float(rng.uniform(0.6, 1.4)),
        jitter=float(rng.uniform(0.004, 0.02)),
    )


def random_words(rng: np.random.Generator, min_words: int, max_words: int) -> list[str]:
    """Draws a transcript: between `min_words` and `max_words` words of `VOCABULARY`."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    n_words = int(rng.integers(min_words, max_words + 1))
    return [VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), size=n_words)]


def _segments(words: Sequence[str], rate: float, rng: np.random.Generator) -> list[_Seg]:
    """Turns words into a timed list of segments with pauses and silences."""
    segs = [_Seg(float(rng.uniform(0.1, 0.3)))]
    for w, word in enumerate(words):
        if w > 0:
            segs.append(_Seg(float(rng.uniform(0.06, 0.2)) / rate))
        letters = [c for c in word.upper() if c in _LETTERS]
        if not letters:
            raise ValueError(f"word {word!r} has no letter the synthesizer can say")
        for i, letter in enumerate(letters):
            last = i == len(letters) - 1
            for seg in _LETTERS[letter]:
                dur = seg.dur * float(rng.uniform(0.8, 1.2)) / rate
                if last and seg.vowel:
                    dur *= 1.3  # word-final lengthening
                segs.append(replace(seg, dur=dur))
    segs.append(_Seg(float(rng.uniform(0.1, 0.3))))
    return segs


def _tracks(segs: list[_Seg], frame_s: float, min_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Frame-rate control tracks of a segment list (targets held, then smoothed)."""
    formants, bw, voice, noise, noise_hz, noise_bw, accent = [], [], [], [], [], [], []
    current = _NEUTRAL
    first_vowel_done = False
    for seg in segs:
        n = max(1, round(seg.dur / frame_s))
        if seg.formants is not None:
            current = seg.formants
        if seg.formants is None and seg.voice == 0 and seg.noise == 0:
            first_vowel_done = False  # a pause: the next word gets a new accent
        formants.append(np.tile(current, (n, 1)))
        bw.append(np.full(n, seg.bw_scale))
        voice.append(np.full(n, seg.voice))
        noise.append(np.full(n, seg.noise))
        noise_hz.append(np.full(n, seg.noise_hz))
        noise_bw.append(np.full(n, seg.noise_bw))
        bump = np.zeros(n)
        if seg.vowel and not first_vowel_done:
            bump[:] = rng.uniform(0.04, 0.15)  # pitch accent on the word's first vowel
            first_vowel_done = True
        accent.append(bump)

    def smooth(x: np.ndarray, width: int) -> np.ndarray:
        kernel = np.hanning(width + 2)[1:-1]
        kernel /= kernel.sum()
        pad = [(width, width)] + [(0, 0)] * (x.ndim - 1)
        padded = np.pad(x, pad, mode="edge")
        if x.ndim == 1:
            return np.convolve(padded, kernel, mode="same")[width:-width]
        cols = [np.convolve(padded[:, j], kernel, mode="same") for j in range(x.shape[1])]
        return np.stack(cols, axis=1)[width:-width]

    tracks = {
        "formants": smooth(np.concatenate(formants), 5),  # coarticulation
        "bw": smooth(np.concatenate(bw), 3),
        "voice": smooth(np.concatenate(voice), 3),
        "noise": smooth(np.concatenate(noise), 2),
        "noise_hz": np.concatenate(noise_hz),
        "noise_bw": np.concatenate(noise_bw),
        "accent": smooth(np.concatenate(accent), 9),
    }
    missing = min_frames - tracks["voice"].shape[0]
    if missing > 0:  # too short: pad silence on both sides
        pad = (missing // 2, missing - missing // 2)
        for key, x in tracks.items():
            silent = key in ("voice", "noise", "accent")
            pad_width = [pad] + [(0, 0)] * (x.ndim - 1)
            tracks[key] = np.pad(x, pad_width, mode="constant" if silent else "edge")
    return tracks


def _stft_filter(x: np.ndarray, gains: np.ndarray, hop: int) -> np.ndarray:
    """Filters `x` with a time-varying magnitude response (one row of `gains` per hop).

    Hann-windowed STFT with `n_fft = 4 * hop`, frame `m` centred at sample `m * hop`;
    weighted overlap-add, normalised by the summed squared window.
    """
    n_frames = gains.shape[0]
    n_fft = 4 * hop
    half = n_fft // 2
    padded = np.pad(x, (half, half + n_fft))
    starts = np.arange(n_frames) * hop
    frames = padded[starts[:, None] + np.arange(n_fft)[None, :]]
    window = np.hanning(n_fft + 1)[:-1]
    spec = np.fft.rfft(frames * window, axis=1) * gains
    out_frames = np.fft.irfft(spec, n=n_fft, axis=1) * window
    out = np.zeros(n_frames * hop + n_fft)
    wsum = np.zeros_like(out)
    for r in range(4):  # frames r, r+4, ... do not overlap: add them as one strip
        strip = out_frames[r::4].reshape(-1)
        out[r * hop : r * hop + strip.size] += strip
        wsum[r * hop : r * hop + strip.size] += np.tile(window**2, len(out_frames[r::4]))
    out = out / np.maximum(wsum, 1e-3)
    return out[half : half + x.size]


def _glottal_source(f0: np.ndarray, sample_rate: int) -> np.ndarray:
    """Derivative of a Rosenberg glottal flow pulse train following `f0` (per sample)."""
    phase = np.cumsum(f0 / sample_rate) % 1.0
    rise, fall = 0.4, 0.16  # open-phase proportions of the period
    flow = np.where(
        phase < rise,
        0.5 * (1.0 - np.cos(np.pi * phase / rise)),
        np.where(phase < rise + fall, np.cos(0.5 * np.pi * (phase - rise) / fall), 0.0),
    )
    return np.diff(flow, prepend=0.0)


def _unit_rms(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.sqrt(np.mean(x**2, axis=axis, keepdims=True)), 1e-12)


def synthesize_utterance(
    words: Sequence[str],
    speaker: ToySpeaker,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    prosody: ToyProsody | None = None,
    min_seconds: float = 1.0,
) -> np.ndarray:
    """Synthesizes speech-like audio for `words` in the voice of `speaker`.

    Source-filter synthesis at an 8 ms control rate: a glottal pulse train (f0 with
    declination, a pitch accent per word and jitter) plus breath noise is shaped by a
    cascade of 4 formant resonators; a noise source is shaped by the fricative / burst
    band of each consonant. The formant targets are scaled by the speaker's
    vocal-tract factor, and smoothed across segments (coarticulation). The result is
    normalised to a random speech level and a little background noise is added.
    Utterances last at least `min_seconds`.

    Arguments
    ---------
    words : sequence of str
        The words to say (letters A-Z; other characters are silent).
    speaker : ToySpeaker
        The voice.
    rng : numpy.random.Generator
        Source of the per-utterance variation (durations, jitter, noise, level).
    sample_rate : int
        Output sampling rate in Hz.
    prosody : ToyProsody, optional
        Utterance prosody; neutral when None.
    min_seconds : float
        Shorter utterances are padded with silence on both sides to this length.

    Returns
    -------
    numpy.ndarray
        Float32 mono waveform in [-1, 1], shape `(L,)`.

    Example
    -------
    >>> import numpy as np
    >>> spk = toy_speaker("19", seed=0)
    >>> wav = synthesize_utterance(["HELLO", "WORLD"], spk, np.random.default_rng(0))
    >>> wav.dtype, wav.ndim, 0.8 < len(wav) / 16000 < 3.0
    (dtype('float32'), 1, True)
    """
    prosody = prosody or ToyProsody()
    hop = max(1, round(sample_rate * _FRAME_S))
    frame_s = hop / sample_rate
    rate = speaker.rate * prosody.rate * float(rng.uniform(0.95, 1.05))
    min_frames = int(np.ceil(min_seconds / frame_s))
    tracks = _tracks(_segments(words, rate, rng), frame_s, min_frames, rng)
    n_frames = tracks["voice"].shape[0]
    n_samples = n_frames * hop

    # Pitch: declination, word accents, slow drift; then jitter at the sample level.
    t = np.linspace(0.0, 1.0, n_frames)
    f0_range = speaker.f0_range * prosody.f0_range
    drift = np.cumsum(rng.normal(0.0, 0.004, n_frames))
    contour = 1.0 + f0_range * (0.08 - 0.16 * t + tracks["accent"]) + drift - drift.mean()
    f0_mean = speaker.f0 * prosody.f0_scale * float(rng.uniform(0.97, 1.03))
    frame_pos = np.arange(n_frames) * hop
    f0 = np.interp(np.arange(n_samples), frame_pos, f0_mean * np.clip(contour, 0.5, 2.0))
    jitter = np.repeat(rng.normal(0.0, speaker.jitter, n_samples // hop + 1), hop)[:n_samples]
    f0 = f0 * (1.0 + jitter)

    breath = speaker.breathiness + prosody.breathiness
    voiced_src = _unit_rms(_glottal_source(f0, sample_rate))
    voiced_src = voiced_src + breath * rng.standard_normal(n_samples)
    noise_src = rng.standard_normal(n_samples)

    # Voiced path: cascade of 4 resonators, |H(f)| = F^2 / |F^2 - f^2 + j B f|.
    freqs = np.fft.rfftfreq(4 * hop, 1.0 / sample_rate).astype(np.float32)[None, :, None]
    nyq = 0.48 * sample_rate
    scale = speaker.formant_scale * float(rng.uniform(0.985, 1.015))
    fmt = np.concatenate([tracks["formants"], np.full((n_frames, 1), 3500.0)], axis=1)
    fmt = np.minimum(fmt * scale, nyq).astype(np.float32)[:, None, :]
    bws = np.array([80.0, 100.0, 140.0, 200.0], dtype=np.float32)[None, None, :]
    bws = bws * tracks["bw"].astype(np.float32)[:, None, None]
    resp = np.prod(fmt**2 / np.sqrt((fmt**2 - freqs**2) ** 2 + (bws * freqs) ** 2), axis=2)
    resp = resp * (1.0 + freqs[..., 0] / 500.0) ** (-speaker.tilt)
    voiced_gain = _unit_rms(resp) * tracks["voice"][:, None]

    # Noise path: a Gaussian band per frame (fricatives, bursts, aspiration).
    centre = np.minimum(tracks["noise_hz"] * scale, nyq)[:, None]
    band = np.exp(-0.5 * ((freqs[..., 0] - centre) / tracks["noise_bw"][:, None]) ** 2)
    noise_gain = _unit_rms(band) * tracks["noise"][:, None]

    wav = _stft_filter(voiced_src, voiced_gain, hop) + _stft_filter(noise_src, noise_gain, hop)
    active = np.repeat((tracks["voice"] + tracks["noise"]) > 0.05, hop)
    level = 0.08 * prosody.energy * float(rng.uniform(0.8, 1.25))
    wav = wav * (level / max(float(np.sqrt(np.mean(wav[active] ** 2))), 1e-9))
    peak = float(np.max(np.abs(wav)))
    if peak > 0.95:
        wav = wav * (0.95 / peak)
    wav = wav + rng.standard_normal(n_samples) * 10 ** (rng.uniform(-58.0, -48.0) / 20.0)
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


def write_flac(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Writes mono 16-bit FLAC (creating parent folders) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(
        str(path),
        np.clip(audio, -1.0, 1.0),
        sample_rate,
        format="FLAC",
        subtype="PCM_16",
    )
    return path


