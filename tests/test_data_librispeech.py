"""Tests of prepare_librispeech on toy LibriSpeech corpora (with deliberately bad files)."""

import logging
import os

import numpy as np
import pytest
import soundfile as sf
from conftest import must_not_run, read_csv, read_skipped

from speechbrain_ext.data import librispeech
from speechbrain_ext.data.librispeech import (
    CSV_HEADER,
    OPT_FILE,
    SKIPPED_FILE,
    prepare_librispeech,
)
from speechbrain_ext.data.toy import write_toy_librispeech
from speechbrain_ext.files import atomic_writer

SPLITS = ("train-clean-100", "dev-clean")
LOGGER = "speechbrain_ext.data.librispeech"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A toy corpus written once; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("pristine")
    write_toy_librispeech(
        root,
        splits=SPLITS,
        speakers_per_split=2,
        chapters_per_speaker=2,
        utterances_per_chapter=3,
        seed=1,
    )
    return root


def transcripts(split_dir):
    out = {}
    for trans in split_dir.rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            out[utt_id] = text
    return out


def test_rows_columns_and_durations(corpus, tmp_path):
    save = tmp_path / "save"
    csvs = prepare_librispeech(corpus, save, splits=SPLITS)
    assert csvs == {split: save / f"{split}.csv" for split in SPLITS}
    for split in SPLITS:
        header, rows = read_csv(csvs[split])
        assert header == list(CSV_HEADER) == ["ID", "duration", "wav", "spk_id", "wrd"]
        flacs = sorted((corpus / "LibriSpeech" / split).rglob("*.flac"))
        assert [row["ID"] for row in rows] == sorted(p.name[:-5] for p in flacs)
        texts = transcripts(corpus / "LibriSpeech" / split)
        assert len(rows) == 12
        for row in rows:
            spk, chapter, _ = row["ID"].split("-")
            wav = row["wav"]
            assert os.path.isabs(wav) and os.path.isfile(wav)
            assert wav.endswith(f"LibriSpeech/{split}/{spk}/{chapter}/{row['ID']}.flac")
            info = sf.info(wav)
            assert float(row["duration"]) == info.frames / info.samplerate
            assert row["spk_id"] == f"{spk}-{chapter}"  # SpeechBrain's LibriSpeech convention
            assert row["wrd"] == texts[row["ID"]] and row["wrd"].isupper()
    assert read_skipped(save / SKIPPED_FILE) == {}
    assert (save / OPT_FILE).is_file()


def test_accepts_the_librispeech_folder_itself(corpus, tmp_path):
    a = prepare_librispeech(corpus, tmp_path / "a", splits=["dev-clean"])
    b = prepare_librispeech(corpus / "LibriSpeech", tmp_path / "b", splits=["dev-clean"])
    assert a["dev-clean"].read_text() == b["dev-clean"].read_text()


def test_rerun_skips_and_changed_options_rescan(corpus, tmp_path, caplog, monkeypatch):
    save = tmp_path / "save"
    csvs = prepare_librispeech(corpus, save, splits=SPLITS)
    mtimes = {split: path.stat().st_mtime_ns for split, path in csvs.items()}

    with monkeypatch.context() as patch:
        patch.setattr(librispeech, "_scan_split", must_not_run("prepared splits were scanned again"))
        caplog.set_level(logging.INFO, logger=LOGGER)
        again = prepare_librispeech(corpus, save, splits=SPLITS)
    assert again == csvs
    assert "already prepared" in caplog.text
    assert {split: path.stat().st_mtime_ns for split, path in csvs.items()} == mtimes

    # Other options: prepared again, and the result follows the new options.
    prepare_librispeech(corpus, save, splits=SPLITS, max_duration=2.5)
    _, rows = read_csv(csvs["dev-clean"])
    assert rows and all(float(row["duration"]) <= 2.5 for row in rows)
    n_long = sum(sf.info(str(p)).duration > 2.5 for p in (corpus / "LibriSpeech" / "dev-clean").rglob("*.flac"))
    assert n_long > 0 and len(rows) == 12 - n_long
    assert list(read_skipped(save / SKIPPED_FILE).values()).count("too_long") >= n_long


def test_interrupted_prep_is_redone(corpus, tmp_path, monkeypatch):
    save = tmp_path / "save"
    real_scan = librispeech._scan_split

    def fail_on_dev(split_dir, *args):
        if split_dir.name == "dev-clean":
            raise KeyboardInterrupt
        return real_scan(split_dir, *args)

    monkeypatch.setattr(librispeech, "_scan_split", fail_on_dev)
    with pytest.raises(KeyboardInterrupt):
        prepare_librispeech(corpus, save, splits=SPLITS)
    assert (save / "train-clean-100.csv").is_file()
    assert not (save / "dev-clean.csv").exists() and not (save / OPT_FILE).exists()
    assert not list(save.glob(".*.tmp"))

    monkeypatch.setattr(librispeech, "_scan_split", real_scan)
    csvs = prepare_librispeech(corpus, save, splits=SPLITS)
    assert len(read_csv(csvs["dev-clean"])[1]) == 12
    assert (save / OPT_FILE).is_file()


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text("old complete content\n")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as f:
            f.write("half a ")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old complete content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_bad_files_are_skipped_counted_and_listed(corpus, tmp_path, caplog):
    split_dir = corpus / "LibriSpeech" / "dev-clean"
    good = sorted(p.name[:-5] for p in split_dir.rglob("*.flac"))
    chapter_dir = sorted(split_dir.glob("*/*"))[0]
    prefix = f"{chapter_dir.parent.name}-{chapter_dir.name}"
    rng = np.random.default_rng(0)
    bad = {  # utterance -> expected reason
        f"{prefix}-0100": "empty",  # 0 bytes
        f"{prefix}-0101": "unreadable",  # random bytes
        f"{prefix}-0102": "too_short",  # 0.1 s
        f"{prefix}-0103": "wrong_sample_rate",  # 8 kHz
        f"{prefix}-0104": "not_mono",  # stereo
        f"{prefix}-0105": "empty",  # a valid FLAC of 0 frames
        f"{prefix}-0106": "no_transcript",  # good audio, no transcript line
        f"{prefix}-0107": "missing_audio",  # transcript line, no audio
    }
    path = {utt: str(chapter_dir / f"{utt}.flac") for utt in bad}
    open(path[f"{prefix}-0100"], "wb").close()
    with open(path[f"{prefix}-0101"], "wb") as f:
        f.write(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    noise = 0.1 * rng.standard_normal(32000).astype(np.float32)
    sf.write(path[f"{prefix}-0102"], noise[:1600], 16000, format="FLAC")
    sf.write(path[f"{prefix}-0103"], noise[:16000], 8000, format="FLAC")
    sf.write(path[f"{prefix}-0104"], np.stack([noise, noise], axis=1), 16000, format="FLAC")
    sf.write(path[f"{prefix}-0105"], noise[:0], 16000, format="FLAC")
    sf.write(path[f"{prefix}-0106"], noise, 16000, format="FLAC")
    trans = chapter_dir / f"{prefix}.trans.txt"
    extra = [utt for utt, reason in bad.items() if reason != "no_transcript"]
    trans.write_text(trans.read_text() + "".join(f"{utt} SOME WORDS\n" for utt in extra))

    save = tmp_path / "save"
    caplog.set_level(logging.INFO, logger=LOGGER)
    csvs = prepare_librispeech(corpus, save, splits=SPLITS)

    _, rows = read_csv(csvs["dev-clean"])
    assert [row["ID"] for row in rows] == good  # all good files remain, no bad one
    assert len(read_csv(csvs["train-clean-100"])[1]) == 12
    assert read_skipped(save / SKIPPED_FILE) == {os.path.abspath(path[utt]): reason for utt, reason in bad.items()}
    for count in ("empty=2", "missing_audio=1", "no_transcript=1", "not_mono=1"):
        assert count in caplog.text
    for count in ("too_short=1", "unreadable=1", "wrong_sample_rate=1"):
        assert count in caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dev-clean" in warnings[0].getMessage()


def test_split_without_usable_audio_raises(corpus, tmp_path):
    for flac in (corpus / "LibriSpeech" / "dev-clean").rglob("*.flac"):
        flac.write_bytes(b"")
    save = tmp_path / "save"
    with pytest.raises(ValueError, match=r"'dev-clean'.*no usable utterance.*empty"):
        prepare_librispeech(corpus, save, splits=SPLITS)
    assert list(read_skipped(save / SKIPPED_FILE).values()) == ["empty"] * 12
    assert not (save / "dev-clean.csv").exists() and not (save / OPT_FILE).exists()


def test_missing_split_folder(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test-clean.*LibriSpeech/"):
        prepare_librispeech(corpus, tmp_path / "save", splits=["dev-clean", "test-clean"])
    with pytest.raises(FileNotFoundError, match="dev-clean"):
        prepare_librispeech(tmp_path / "nowhere", tmp_path / "save", splits=["dev-clean"])
    assert not (tmp_path / "save").exists()


def test_skip_prep_and_invalid_options(corpus, tmp_path):
    save = tmp_path / "save"
    csvs = prepare_librispeech(corpus, save, splits=SPLITS, skip_prep=True)
    assert csvs == {split: save / f"{split}.csv" for split in SPLITS}
    assert not save.exists()
    with pytest.raises(ValueError, match="max_duration"):
        prepare_librispeech(corpus, save, splits=SPLITS, min_duration=2.0, max_duration=1.0)
    with pytest.raises(ValueError, match="splits"):
        prepare_librispeech(corpus, save, splits=[])
    # A single split given as a string is one split, not its characters.
    assert list(prepare_librispeech(corpus, save, splits="dev-clean")) == ["dev-clean"]


def test_librilight_limited_resource_splits_beside_librispeech(corpus, tmp_path):
    """librilight-10h is all of librispeech_finetuning/ (1h/0..5 and 9h), librilight-1h its 1h/ folder."""
    import shutil

    chapters = sorted((corpus / "LibriSpeech" / "train-clean-100").glob("*/*"))
    data = tmp_path / "data"
    shutil.copytree(corpus / "LibriSpeech" / "dev-clean", data / "LibriSpeech" / "dev-clean")
    limited = data / "librispeech_finetuning"
    places = [limited / "1h" / "0" / "clean", limited / "1h" / "5" / "other", limited / "9h" / "clean"]
    for chapter, place in zip(chapters, places):
        shutil.copytree(chapter, place / chapter.parent.name / chapter.name)
    ids = [sorted(f.name[:-5] for f in chapter.glob("*.flac")) for chapter in chapters[:3]]

    csvs = prepare_librispeech(data, tmp_path / "save", splits=["librilight-10h", "librilight-1h", "dev-clean"])
    assert [row["ID"] for row in read_csv(csvs["librilight-10h"])[1]] == sorted(ids[0] + ids[1] + ids[2])
    assert [row["ID"] for row in read_csv(csvs["librilight-1h"])[1]] == sorted(ids[0] + ids[1])
    assert read_csv(csvs["librilight-1h"])[1][0]["wrd"] and read_csv(csvs["dev-clean"])[1]
    with pytest.raises(FileNotFoundError, match=r"librilight-1h: librispeech_finetuning/1h/ not found"):
        prepare_librispeech(corpus, tmp_path / "other", splits=["librilight-1h"])
