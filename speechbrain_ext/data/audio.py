"""Audio file checks shared by corpus preparation and the training data pipelines.

A bad file (unreadable, empty, too short or long, wrong rate) is found from its header alone,
before training, so that it is left out with a logged, counted reason instead of failing an
epoch halfway. Samples that are not finite (NaN, inf) or absurdly large (beyond
:data:`MAX_ABS_SAMPLE`; a float file can hold them) are found when a file is decoded: every reader
here refuses them (:func:`sample_problem`), since one such file turns the loss and the global
normalisation statistics into NaN.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from speechbrain.dataio import audio_io
from speechbrain.dataio.dataio import read_audio
from speechbrain.utils.logger import get_logger

from speechbrain_ext.files import atomic_writer

logger = get_logger(__name__)

#: The largest sample magnitude accepted. Decoded audio is at most 1 in magnitude (full scale) for integer
#: formats; float files may exceed it, and a few times full scale is loud but real audio. 1000 times full
#: scale (+60 dB) is no recording: such samples (1e30, say) are a broken file, refused like NaN or inf.
MAX_ABS_SAMPLE = 1e3


@dataclass(frozen=True)
class AudioProblem:
    """Why a file is left out: ``reason`` is one word, ``detail`` says what was found."""

    path: str
    reason: str
    detail: str


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header says: enough to judge it without decoding."""

    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def sample_problem(samples: torch.Tensor | np.ndarray, offset: int = 0) -> str | None:
    """What is wrong with decoded ``samples`` (any shape, time first), or None if they are fine.

    Samples are wrong when one is not finite (NaN, inf) or beyond :data:`MAX_ABS_SAMPLE` in magnitude.
    ``offset``: the index of the first sample in the file (for a block of a longer file).

    Example
    -------
    >>> sample_problem(torch.tensor([0.1, float("nan"), -0.2]))
    'non-finite samples (NaN or inf): 1, the first at sample 1'
    >>> sample_problem(torch.tensor([0.1, 1e30])) is None
    False
    >>> sample_problem(torch.tensor([0.1, -0.9])) is None
    True
    """
    samples = torch.as_tensor(samples)
    bad = ~torch.isfinite(samples)
    if bool(bad.any()):
        first = int(bad.reshape(samples.shape[0], -1).any(dim=1).nonzero()[0, 0]) + offset
        return f"non-finite samples (NaN or inf): {int(bad.sum())}, the first at sample {first}"
    if samples.numel() and float(samples.abs().max()) > MAX_ABS_SAMPLE:
        loud = (samples.abs() > MAX_ABS_SAMPLE).reshape(samples.shape[0], -1).any(dim=1)
        first = int(loud.nonzero()[0, 0]) + offset
        return (f"absurd samples: up to {float(samples.abs().max()):.3g} (full scale is 1, the limit "
                f"{MAX_ABS_SAMPLE:g}), the first at sample {first}")
    return None


class BadSamplesError(ValueError):
    """Audio that decodes to non-finite or absurd samples (see :func:`sample_problem`); the message names the file."""


def check_samples(samples: torch.Tensor, path: str | os.PathLike) -> torch.Tensor:
    """``samples`` if they are fine, else a :class:`BadSamplesError` naming ``path`` (see :func:`sample_problem`)."""
    problem = sample_problem(samples)
    if problem is not None:
        raise BadSamplesError(f"{path}: {problem}")
    return samples


def read_audio_checked(path: str | os.PathLike) -> torch.Tensor:
    """SpeechBrain's ``read_audio`` of ``path``, refusing non-finite or absurd samples (:class:`BadSamplesError`)."""
    return check_samples(read_audio(str(path)), path)


def read_header(path: str) -> AudioHeader | AudioProblem:
    """The header of one file, or why it has none worth reading (missing, empty, unreadable)."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return AudioProblem(path, "missing_audio", "no such file")
    if size == 0:
        return AudioProblem(path, "empty", "0 bytes")
    try:
        info = sf.info(path)
    except Exception as err:  # noqa: BLE001 - any failure to read the header
        return AudioProblem(path, "unreadable", " ".join(str(err).split()))
    return AudioHeader(info.samplerate, info.frames, info.channels)


def judge_header(
    path: str, header: AudioHeader | AudioProblem, sample_rate: int | None, min_duration: float = 0.0,
    max_duration: float | None = None,
) -> tuple[float, AudioProblem | None]:
    """Duration and problem (None if fine) of a file whose header is ``header``: see :func:`check_audio`."""
    if isinstance(header, AudioProblem):
        return 0.0, header
    if header.frames <= 0:
        return 0.0, AudioProblem(path, "empty", "0 frames")
    duration = header.duration
    if sample_rate is not None and header.sample_rate != sample_rate:
        return duration, AudioProblem(path, "wrong_sample_rate", f"{header.sample_rate} Hz, expected {sample_rate} Hz")
    if header.channels != 1:
        return duration, AudioProblem(path, "not_mono", f"{header.channels} channels")
    if duration < min_duration:
        return duration, AudioProblem(path, "too_short", f"{duration:.3f} s < {min_duration} s")
    if max_duration is not None and duration > max_duration:
        return duration, AudioProblem(path, "too_long", f"{duration:.3f} s > {max_duration} s")
    return duration, None


def check_audio(
    path: str, sample_rate: int | None, min_duration: float = 0.0, max_duration: float | None = None
) -> tuple[float, AudioProblem | None]:
    """Duration in seconds of one file from its header, and the problem with it (None if fine).

    ``sample_rate`` None accepts any rate (for audio that is resampled when read).

    Reasons: ``missing_audio``, ``empty``, ``unreadable``, ``wrong_sample_rate``, ``not_mono``,
    ``too_short``, ``too_long`` (and ``undecodable``, ``bad_samples`` from :func:`check_audio_files`).

    Example
    -------
    >>> check_audio("/no/such/file.flac", 16000)[1].reason
    'missing_audio'
    """
    return judge_header(path, read_header(path), sample_rate, min_duration, max_duration)


class HeaderCache:
    """Headers already read, kept in a JSON file and trusted while a file's size and modification time hold.

    Checking the 281k files of LibriSpeech 960 h reads every header (about 0.3 ms each, so minutes on network
    storage, on every process of every run); with the cache a rerun costs one ``stat`` per file. Only good
    headers are kept: missing, empty and unreadable files are looked at again each time.

    The file holds a SHA-256 ``digest`` of its entries: a cache whose entries do not match it (edited by hand,
    damaged, or without one) is not trusted, and every header is read again. So is a cache that does not hold
    a mapping of entries (``"files": []`` or ``null``), and so is each entry that is not five whole numbers
    with a positive sample rate and channel count (each such file's header is read again): a damaged cache
    costs a rerun its speed, never its correctness, and never crashes it. Entries are keyed by size and
    modification time: a file replaced by another of the same size and modification time (``cp -p``,
    ``rsync -t``) keeps its cached header.

    Example
    -------
    >>> import tempfile
    >>> cache = HeaderCache(tempfile.mkdtemp() + "/headers.json")
    >>> cache.read("/no/such/file.flac").reason
    'missing_audio'
    """

    FORMAT = 1

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: dict[str, list[int]] = {}  # path -> [size, mtime_ns, sample_rate, frames, channels]
        self.changed = False
        if self.path.is_file():
            self._load()

    @staticmethod
    def digest(entries: dict) -> str:
        """The SHA-256 of ``entries`` as the cache file writes them (keys sorted)."""
        text = json.dumps(entries, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()

    @staticmethod
    def valid_entry(entry: object) -> bool:
        """Whether ``entry`` is ``[size, mtime_ns, sample_rate, frames, channels]`` with a usable header."""
        if not isinstance(entry, list) or len(entry) != 5:
            return False
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in entry):
            return False
        size, _, sample_rate, frames, channels = entry
        return size >= 0 and sample_rate > 0 and frames >= 0 and channels > 0

    def _load(self) -> None:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            logger.warning("ignoring unreadable audio header cache %s (%s): reading every header", self.path, err)
            return
        if not isinstance(saved, dict) or saved.get("format") != self.FORMAT:
            logger.warning("ignoring audio header cache %s of another format: reading every header", self.path)
            return
        files = saved.get("files")
        if not isinstance(files, dict):
            logger.warning("ignoring stale audio header cache %s (its files are %s, not a mapping): reading "
                           "every header", self.path, type(files).__name__)
            return
        if saved.get("digest") != self.digest(files):
            logger.warning("ignoring audio header cache %s: its entries do not match its checksum (edited or "
                           "damaged): reading every header", self.path)
            return
        self.entries = {path: entry for path, entry in files.items() if self.valid_entry(entry)}
        if len(self.entries) < len(files):
            logger.warning("ignoring %d malformed entries of the audio header cache %s: reading those headers "
                           "again", len(files) - len(self.entries), self.path)
            self.changed = True

    def lookup(self, path: str) -> AudioHeader | AudioProblem | None:
        """The cached header if the file is unchanged since it was read, a problem if it is missing, else None."""
        try:
            status = os.stat(path)
        except OSError:
            return AudioProblem(path, "missing_audio", "no such file")
        return self._cached(path, status)

    def read(self, path: str) -> AudioHeader | AudioProblem:
        """Like :func:`read_header`, from the cache when the file is unchanged since it was read."""
        try:
            status = os.stat(path)
        except OSError:
            return AudioProblem(path, "missing_audio", "no such file")
        cached = self._cached(path, status)
        if cached is not None:
            return cached
        header = read_header(path)
        if isinstance(header, AudioHeader):
            self.entries[path] = [status.st_size, status.st_mtime_ns, header.sample_rate, header.frames,
                                  header.channels]
            self.changed = True
        return header

    def _cached(self, path: str, status: os.stat_result) -> AudioHeader | None:
        entry = self.entries.get(path)
        if entry is not None and entry[:2] == [status.st_size, status.st_mtime_ns]:
            return AudioHeader(*entry[2:])
        return None

    def save(self) -> None:
        """Write the cache (atomically: processes sharing it never read half a file) if anything was added."""
        if not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries = dict(self.entries)
        with atomic_writer(self.path) as handle:
            json.dump({"format": self.FORMAT, "files": entries, "digest": self.digest(entries)}, handle)
        self.changed = False


class UndecodableList:
    """Files whose header was fine but whose data failed to decode, kept in a TSV file shared by processes.

    Each line is ``path, size, mtime_ns, error``; an entry holds while the file's size and modification time do,
    so a file replaced by a good copy is used again. Lines are appended in one write each (data loader workers
    of several processes may add at once). Bytes that are not UTF-8 (a path of another encoding, a line cut by
    a crash) are read and written back unchanged (``surrogateescape``, as Python names such paths); a line
    that is not four fields is ignored.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> audio = Path(folder) / "a.flac"
    >>> _ = audio.write_bytes(b"fLaC....")
    >>> UndecodableList(Path(folder) / UndecodableList.NAME).add(str(audio), "truncated")
    >>> UndecodableList(Path(folder) / UndecodableList.NAME).problem(str(audio)).reason
    'undecodable'
    """

    NAME = "audio_undecodable.tsv"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: dict[str, tuple[int, int, str]] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="surrogateescape") if self.path.is_file() else ""
        except OSError as err:
            logger.warning("ignoring unreadable list of undecodable audio %s (%s)", self.path, err)
            text = ""
        for line in text.splitlines():
            fields = line.split("\t")
            if len(fields) == 4 and fields[1].isascii() and fields[1].isdigit() and fields[2].isascii() \
                    and fields[2].isdigit():
                self.entries[fields[0]] = (int(fields[1]), int(fields[2]), fields[3])

    def problem(self, path: str) -> AudioProblem | None:
        """Why ``path`` is on the list (if it is, and unchanged since), else None."""
        entry = self.entries.get(path)
        if entry is None:
            return None
        try:
            status = os.stat(path)
        except OSError:
            return None
        if (status.st_size, status.st_mtime_ns) != entry[:2]:
            return None
        return AudioProblem(path, "undecodable", entry[2])

    def add(self, path: str, detail: str) -> None:
        """Lists ``path`` (if it exists) with why it is left out, ``detail`` (one line)."""
        try:
            status = os.stat(path)
        except OSError:
            return
        detail = " ".join(detail.split())[:300]
        self.entries[path] = (status.st_size, status.st_mtime_ns, detail)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(f"{path}\t{status.st_size}\t{status.st_mtime_ns}\t{detail}\n")


def decode_problem(path: str) -> AudioProblem | None:
    """Decodes the whole file; the problem if that fails or a sample is not finite or absurd, else None."""
    try:
        with sf.SoundFile(path) as handle:
            offset = 0
            while (block := handle.read(1 << 20, dtype="float32")).size:  # a 1 h file never sits in memory
                problem = sample_problem(block, offset)
                if problem is not None:
                    return AudioProblem(path, "bad_samples", problem)
                offset += block.shape[0]
    except Exception as err:  # noqa: BLE001 - any failure to decode
        return AudioProblem(path, "undecodable", " ".join(str(err).split()))
    return None


def check_audio_files(
    paths: Iterable[str], sample_rate: int | None, min_duration: float = 0.0, max_duration: float | None = None,
    header_cache: str | os.PathLike | None = None, decode: bool = False, undecodable: UndecodableList | None = None,
) -> list[tuple[float, AudioProblem | None]]:
    """:func:`check_audio` over many files, in order; header reads overlap on a few threads.

    ``header_cache``: a JSON file of headers already read (:class:`HeaderCache`), read and updated.
    ``undecodable``: files on that list (and unchanged) are left out as ``undecodable``. ``decode``: every
    file whose header is fine is also decoded in full; those that fail (``undecodable``) or hold non-finite or
    absurd samples (``bad_samples``) are left out and added to the list.
    """
    paths = list(paths)
    cache = HeaderCache(header_cache) if header_cache is not None else None
    # A cache hit is one stat: done here; only the headers to read go to the threads.
    headers = [cache.lookup(p) for p in paths] if cache is not None else [None] * len(paths)
    missing = [i for i, header in enumerate(headers) if header is None]
    with ThreadPoolExecutor(max_workers=8) as pool:
        read = cache.read if cache is not None else read_header
        for i, header in zip(missing, pool.map(read, [paths[i] for i in missing])):
            headers[i] = header
    if cache is not None:
        cache.save()
    checks = [judge_header(p, h, sample_rate, min_duration, max_duration) for p, h in zip(paths, headers)]
    if undecodable is not None:
        checks = [(d, problem or undecodable.problem(p)) for p, (d, problem) in zip(paths, checks)]
    if decode:
        good = [i for i, (_, problem) in enumerate(checks) if problem is None]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for i, problem in zip(good, pool.map(decode_problem, [paths[i] for i in good])):
                if problem is not None:
                    checks[i] = (checks[i][0], problem)
                    if undecodable is not None:
                        undecodable.add(paths[i], problem.detail)
    return checks


def summarize_problems(problems: Iterable[AudioProblem]) -> str:
    """``"empty=2, unreadable=1"``: counts per reason, for logs."""
    counts = Counter(problem.reason for problem in problems)
    return ", ".join(f"{reason}={count}" for reason, count in sorted(counts.items()))


def read_audio_resampled(path: str, target_rate: int) -> torch.Tensor:
    """A mono waveform (L,) at ``target_rate``, from a file of any rate soundfile reads (MP3 too).

    Channels are averaged; resampling is torchaudio's band-limited sinc (pure torch, no FFmpeg).
    Non-finite or absurd samples are a :class:`BadSamplesError` naming the file (:func:`check_samples`).
    """
    audio, rate = audio_io.load(str(path), dtype=torch.float32)  # (C, L)
    check_samples(audio.T, path)
    signal = audio.mean(dim=0) if audio.shape[0] > 1 else audio[0]
    if rate != target_rate:
        signal = torchaudio.functional.resample(signal, rate, target_rate)
    return signal
