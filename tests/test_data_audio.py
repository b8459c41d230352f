"""Header checks of audio files, and the header cache that makes a rerun's check one stat per file."""

import json
import os

import numpy as np
import pytest
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


def write_cache(path, files, digest=True):
    saved = {"format": HeaderCache.FORMAT, "files": files}
    if digest:
        saved["digest"] = HeaderCache.digest(files)
    path.write_text(json.dumps(saved))


@pytest.mark.parametrize("files", [[], None, "x"])
def test_a_cache_without_a_mapping_of_files_is_read_again(tmp_path, caplog, files):
    paths = write_good(tmp_path, 2)
    cache_file = tmp_path / "headers.json"
    write_cache(cache_file, files)
    with caplog.at_level("WARNING"):
        assert check_audio_files(paths, 16000, header_cache=cache_file) == check_audio_files(paths, 16000)
    assert "ignoring stale audio header cache" in caplog.text
    assert set(json.loads(cache_file.read_text())["files"]) == set(paths)  # rewritten whole


@pytest.mark.parametrize("damage", ["short", "rate_0", "channels_0", "text", "negative_frames"])
def test_a_malformed_cache_entry_is_read_again(tmp_path, caplog, damage):
    paths = write_good(tmp_path, 2)
    cache_file = tmp_path / "headers.json"
    check_audio_files(paths, 16000, header_cache=cache_file)
    files = json.loads(cache_file.read_text())["files"]
    entry = files[paths[1]]
    files[paths[1]] = {"short": entry[:3], "rate_0": [*entry[:2], 0, *entry[3:]],
                       "channels_0": [*entry[:4], 0], "text": [*entry[:3], "17600", entry[4]],
                       "negative_frames": [*entry[:3], -1, entry[4]]}[damage]
    write_cache(cache_file, files)  # with a checksum that matches: the entry itself is judged
    with caplog.at_level("WARNING"):
        assert check_audio_files(paths, 16000, header_cache=cache_file) == [(1.0, None), (1.1, None)]
    assert "ignoring 1 malformed entries" in caplog.text
    assert json.loads(cache_file.read_text())["files"][paths[1]] == entry  # read again and rewritten


def test_a_cache_edited_without_its_checksum_is_not_trusted(tmp_path, caplog):
    (path,) = write_good(tmp_path, 1)
    cache_file = tmp_path / "headers.json"
    check_audio_files([path], 16000, header_cache=cache_file)
    saved = json.loads(cache_file.read_text())
    saved["files"][path][3] = 16000 * 3600  # one hour: the frame count is wrong, size and mtime still match
    cache_file.write_text(json.dumps(saved))
    with caplog.at_level("WARNING"):
        assert check_audio_files([path], 16000, max_duration=10.0, header_cache=cache_file) == [(1.0, None)]
    assert "do not match its checksum" in caplog.text


@pytest.mark.parametrize(("fill", "words"), [(float("nan"), "non-finite"), (float("-inf"), "non-finite"),
                                             (1e30, "absurd")])
def test_decoding_check_refuses_poisoned_samples_and_lists_them(tmp_path, fill, words):
    path = tmp_path / "float.wav"
    signal = np.zeros(32000, dtype=np.float32)
    signal[20000] = fill
    sf.write(path, signal, 16000, subtype="FLOAT")
    listing = audio.UndecodableList(tmp_path / audio.UndecodableList.NAME)
    ((duration, problem),) = check_audio_files([str(path)], 16000, decode=True, undecodable=listing)
    assert duration == 2.0 and problem.reason == "bad_samples"
    assert words in problem.detail and "sample 20000" in problem.detail
    assert audio.UndecodableList(listing.path).problem(str(path)) is not None
    with pytest.raises(ValueError, match=f"{path}: {words}"):
        audio.read_audio_resampled(str(path), 16000)
