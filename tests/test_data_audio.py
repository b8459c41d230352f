"""Header checks of audio files, and the header cache that makes a rerun's check one stat per file."""

import json
import os

import numpy as np
import soundfile as sf
from conftest import write_bad_audio

from speechbrain_ext.data import audio
from speechbrain_ext.data.audio import HeaderCache, check_audio_files


def write_good(directory, count):
    paths = []
    for i in range(count):
        path = directory / f"good-{i}.flac"
        sf.write(path, np.zeros(16000 + 1600 * i, dtype=np.float32), 16000, format="FLAC")
        paths.append(str(path))
    return paths


def counting_header_reads(monkeypatch):
    """Count the headers actually read from disk (soundfile.info calls)."""
    reads = []
    real_info = sf.info
    monkeypatch.setattr(audio.sf, "info", lambda path: reads.append(path) or real_info(path))
    return reads


def test_cached_check_gives_the_same_verdicts_and_reads_no_unchanged_header(tmp_path, monkeypatch):
    good = write_good(tmp_path, 4)
    bad = write_bad_audio(tmp_path, "bad")
    paths = good + list(bad) + [str(tmp_path / "missing.flac")]
    cache_file = tmp_path / "cache" / "headers.json"
    uncached = check_audio_files(paths, 16000, min_duration=0.5)

    reads = counting_header_reads(monkeypatch)
    first = check_audio_files(paths, 16000, min_duration=0.5, header_cache=cache_file)
    assert first == uncached
    assert [p.reason for _, p in first[len(good):] if p] == [*bad.values(), "missing_audio"]
    assert len(reads) == len(good) + len(bad) - 1  # every file with bytes ("empty" is told by its size)

    reads.clear()
    again = check_audio_files(paths, 16000, min_duration=0.5, header_cache=cache_file)
    assert again == uncached
    # Only files without a good header are read again: the unreadable one; the cached ones cost a stat.
    assert sorted(reads) == sorted(p for p, reason in bad.items() if reason == "unreadable")

    # Rules are applied to cached headers, not cached verdicts: other limits give other verdicts.
    stricter = check_audio_files(good, 16000, min_duration=1.2, header_cache=cache_file)
    assert [p.reason if p else None for _, p in stricter] == [None if d >= 1.2 else "too_short" for d, _ in again[:4]]


def test_a_changed_file_is_read_again(tmp_path, monkeypatch):
    (path,) = write_good(tmp_path, 1)
    cache_file = tmp_path / "headers.json"
    assert check_audio_files([path], 16000, header_cache=cache_file)[0] == (1.0, None)
    sf.write(path, np.zeros((8000, 2), dtype=np.float32), 16000, format="FLAC")  # now stereo and 0.5 s
    os.utime(path, ns=(0, 123))  # a modification time that cannot match the cached one
    reads = counting_header_reads(monkeypatch)
    duration, problem = check_audio_files([path], 16000, header_cache=cache_file)[0]
    assert reads == [path] and duration == 0.5 and problem.reason == "not_mono"


def test_unreadable_cache_file_is_ignored_with_a_warning(tmp_path, caplog):
    paths = write_good(tmp_path, 2)
    cache_file = tmp_path / "headers.json"
    cache_file.write_text('{"format": 1, "files": {"trunc')
    with caplog.at_level("WARNING"):
        assert check_audio_files(paths, 16000, header_cache=cache_file) == check_audio_files(paths, 16000)
    assert "ignoring unreadable audio header cache" in caplog.text
    assert set(json.loads(cache_file.read_text())["files"]) == set(paths)  # rewritten whole


def test_cache_is_not_rewritten_when_nothing_is_new(tmp_path):
    paths = write_good(tmp_path, 2)
    cache = HeaderCache(tmp_path / "headers.json")
    for path in paths:
        cache.read(path)
    cache.save()
    stamp = (tmp_path / "headers.json").stat().st_mtime_ns
    again = HeaderCache(tmp_path / "headers.json")
    assert [again.read(p).frames for p in paths] == [16000, 17600]
    again.save()
    assert (tmp_path / "headers.json").stat().st_mtime_ns == stamp
