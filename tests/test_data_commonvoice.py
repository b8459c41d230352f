"""Tests of prepare_commonvoice, MP3 reading with resampling, and the toy Common Voice."""

import csv
import logging
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import must_not_run, read_csv, read_skipped

from speechbrain_ext.data import commonvoice
from speechbrain_ext.data.commonvoice import (
    CSV_HEADER,
    OPT_FILE,
    SKIPPED_FILE,
    normalize_transcript,
    prepare_commonvoice,
    read_commonvoice_audio,
)
from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.data.toy import COMMONVOICE_TSV_HEADER, write_toy_commonvoice

LOGGER = "speechbrain_ext.data.commonvoice"
SPLITS = ("train", "dev", "test")
CLIPS = 4
# The header of releases before Common Voice 13 (no sentence_id, sentence in the third column).
OLD_HEADER = tuple("client_id path sentence up_votes down_votes age gender accents locale segment".split())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A toy Welsh Common Voice written once; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("pristine")
    write_toy_commonvoice(root, language="cy", clips_per_split=CLIPS, seed=1)
    return root


def read_tsv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_tsv(path, header, rows):
    lines = ["\t".join(header)] + ["\t".join(row.get(col, "") for col in header) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_soundfile_reads_mp3():
    assert "MP3" in sf.available_formats()


def test_toy_layout_and_tsv_format(pristine):
    cy = pristine / "cy"
    assert sorted(p.name for p in pristine.iterdir()) == ["cy"]
    assert sorted(p.name for p in cy.iterdir()) == ["clips", "dev.tsv", "test.tsv", "train.tsv"]
    clients, names, sentences = {}, set(), []
    for split in SPLITS:
        header = (cy / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
        assert header == list(COMMONVOICE_TSV_HEADER)
        assert {"client_id", "path", "sentence", "up_votes", "down_votes", "locale", "segment"} <= set(header)
        rows = read_tsv(cy / f"{split}.tsv")
        assert len(rows) == CLIPS
        clients[split] = {row["client_id"] for row in rows}
        for row in rows:
            assert re.fullmatch(r"[0-9a-f]{128}", row["client_id"])
            assert re.fullmatch(r"common_voice_cy_\d{8}\.mp3", row["path"]) and row["locale"] == "cy"
            info = sf.info(str(cy / "clips" / row["path"]))
            assert (info.format, info.samplerate, info.channels) == ("MP3", 48000, 1)
            assert 1.0 <= info.duration < 8.0
            names.add(row["path"])
            sentences.append(row["sentence"])
    assert names == {p.name for p in (cy / "clips").iterdir()}
    assert not clients["train"] & clients["dev"] and not clients["train"] & clients["test"]
    text = " ".join(sentences)
    assert "ŵ" in text and "," in text and "'" in text and any(s[0].isupper() for s in sentences)
    with pytest.raises(ValueError, match="no toy sentences"):
        write_toy_commonvoice(pristine, language="xx")


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Bore da, mae hi'n bwrw glaw.", "BORE DA MAE HI'N BWRW GLAW"),
        ("Mae’r dŵr yn oer iawn!", "MAE'R DŴR YN OER IAWN"),  # typographic apostrophe, ŵ kept
        ("Dw i'n byw mewn tŷ bach.", "DW I'N BYW MEWN TŶ BACH"),
        ("Ikurriña balkoian dago!", "IKURRIÑA BALKOIAN DAGO"),
        ("Mae'r gwasanaeth ar-lein  ar gael\t(24 awr).", "MAE'R GWASANAETH AR LEIN AR GAEL 24 AWR"),
        ("\"Dyna fo,\" meddai 'Siân'.", "DYNA FO MEDDAI SIÂN"),  # quotes are not apostrophes
        ("dw\u0302r", "DŴR"),  # a combining circumflex: composed (NFC)
        (" — ?! … ", ""),
    ],
)
def test_transcript_normalisation(sentence, expected):
    assert normalize_transcript(sentence) == expected


def test_rows_columns_and_durations(corpus, tmp_path):
    save = tmp_path / "save"
    csvs = prepare_commonvoice(corpus / "cy", save)
    assert csvs == {split: save / f"{split}.csv" for split in SPLITS}
    for split in SPLITS:
        header, rows = read_csv(csvs[split])
        assert header == list(CSV_HEADER) == ["ID", "duration", "wav", "spk_id", "wrd"]
        tsv = {row["path"][: -len(".mp3")]: row for row in read_tsv(corpus / "cy" / f"{split}.tsv")}
        assert [row["ID"] for row in rows] == sorted(tsv)
        for row in rows:
            source = tsv[row["ID"]]
            assert os.path.isabs(row["wav"]) and row["wav"] == str(corpus / "cy" / "clips" / source["path"])
            info = sf.info(row["wav"])
            assert float(row["duration"]) == info.frames / info.samplerate  # at 48 kHz, not resampled
            assert row["spk_id"] == source["client_id"]
            assert row["wrd"] == normalize_transcript(source["sentence"]) and row["wrd"].isupper()
            assert not re.search(r"[,.!?]", row["wrd"])
    assert read_skipped(save / SKIPPED_FILE) == {}
    assert (save / OPT_FILE).is_file()


def test_read_and_resample_to_16k(corpus, tmp_path):
    csvs = prepare_commonvoice(corpus / "cy", tmp_path / "save", splits=["dev"])
    _, rows = read_csv(csvs["dev"])
    for row in rows:
        wav = read_commonvoice_audio(row["wav"])
        assert wav.dtype == torch.float32 and wav.dim() == 1
        assert abs(len(wav) / 16000 - float(row["duration"])) < 0.003
        full, rate = sf.read(row["wav"], dtype="float32")
        assert rate == 48000
        # Same loudness: the resampled clip is the clip (speech has little energy above 8 kHz).
        assert float(wav.pow(2).mean().sqrt()) == pytest.approx(float(np.sqrt(np.mean(full**2))), rel=0.05)
    # The training pipeline reads the manifest the same way.
    data = audio_dataset([csvs["dev"]], sample_rate=16000, resample=True)
    assert torch.equal(data[0]["sig"], read_commonvoice_audio(rows[0]["wav"]))
    # A 32 kHz clip (as a few Common Voice ones): a 440 Hz tone stays at 440 Hz.
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 32000)
    path = tmp_path / "tone.mp3"
    sf.write(path, tone, 32000, format="MP3")
    wav = read_commonvoice_audio(path, target_rate=16000)
    assert abs(len(wav) - 16000) <= 16 * 3  # within 3 ms
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(np.fft.rfftfreq(len(wav), 1 / 16000)[spectrum.argmax()] - 440) < 3


def test_language_parent_folder_old_header_and_paths_without_extension(corpus, tmp_path):
    a = prepare_commonvoice(corpus / "cy", tmp_path / "a")
    b = prepare_commonvoice(corpus, tmp_path / "b", language="cy")
    assert all(a[split].read_text() == b[split].read_text() for split in SPLITS)
    with pytest.raises(FileNotFoundError, match=r"language folder\(s\) \['cy'\].*language="):
        prepare_commonvoice(corpus, tmp_path / "c")

    # Older releases: other columns, and (the first ones) clip names without ".mp3".
    tsv = corpus / "cy" / "train.tsv"
    rows = read_tsv(tsv)
    for row in rows[:2]:
        row["path"] = row["path"][: -len(".mp3")]
    write_tsv(tsv, OLD_HEADER, rows)
    d = prepare_commonvoice(corpus / "cy", tmp_path / "d")
    assert d["train"].read_text() == a["train"].read_text()

    write_tsv(tsv, [c for c in OLD_HEADER if c != "sentence"], rows)
    with pytest.raises(ValueError, match=r"train\.tsv has no column\(s\) \['sentence'\]"):
        prepare_commonvoice(corpus / "cy", tmp_path / "e")


def test_rerun_skips_and_changed_options_rescan(corpus, tmp_path, caplog, monkeypatch):
    save = tmp_path / "save"
    csvs = prepare_commonvoice(corpus / "cy", save)
    mtimes = {split: path.stat().st_mtime_ns for split, path in csvs.items()}

    with monkeypatch.context() as patch:
        patch.setattr(commonvoice, "_scan_split", must_not_run("prepared splits were scanned again"))
        caplog.set_level(logging.INFO, logger=LOGGER)
        assert prepare_commonvoice(corpus / "cy", save) == csvs
    assert "already prepared" in caplog.text
    assert {split: path.stat().st_mtime_ns for split, path in csvs.items()} == mtimes

    # A required rate is a new option: prepared again, and every 48 kHz clip is now skipped.
    with pytest.raises(ValueError, match=r"'train'.*no usable clip.*wrong_sample_rate=4"):
        prepare_commonvoice(corpus / "cy", save, sample_rate=16000)
    assert not (save / OPT_FILE).exists()
    assert prepare_commonvoice(corpus / "cy", save, sample_rate=48000) == csvs
    assert len(read_csv(csvs["test"])[1]) == CLIPS


def test_bad_files_are_skipped_counted_and_listed(corpus, tmp_path, caplog):
    cy = corpus / "cy"
    clips = cy / "clips"
    rows = read_tsv(cy / "dev.tsv")
    good = sorted(row["path"][:-4] for row in rows)
    rng = np.random.default_rng(0)
    speech = sf.read(str(clips / rows[0]["path"]), dtype="float32")[0]
    mp3 = (clips / rows[0]["path"]).read_bytes()
    bad = {  # clip -> expected reason
        "common_voice_cy_1.mp3": "empty",  # 0 bytes
        "common_voice_cy_2.mp3": "unreadable",  # random bytes
        "common_voice_cy_3.mp3": "too_short",  # 0.1 s
        "common_voice_cy_4.mp3": "not_mono",  # stereo
        "common_voice_cy_5.mp3": "missing_audio",  # listed, not on disk
        "common_voice_cy_6.mp3": "empty_transcript",  # a sentence of punctuation only
    }
    corrupted = {  # header fine, stream broken: found only by decoding
        "common_voice_cy_7.mp3": mp3[:1000] + rng.integers(0, 256, len(mp3) - 1000, dtype=np.uint8).tobytes(),
        "common_voice_cy_8.mp3": mp3[: len(mp3) // 2],  # truncated
    }
    (clips / "common_voice_cy_1.mp3").write_bytes(b"")
    (clips / "common_voice_cy_2.mp3").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    sf.write(clips / "common_voice_cy_3.mp3", speech[:4800], 48000, format="MP3")
    sf.write(clips / "common_voice_cy_4.mp3", np.stack([speech, speech], axis=1), 48000, format="MP3")
    shutil.copy(clips / rows[0]["path"], clips / "common_voice_cy_6.mp3")
    for name, data in corrupted.items():
        (clips / name).write_bytes(data)
    sf.write(clips / "common_voice_cy_9.mp3", speech[::3][: len(speech) // 3 * 2], 32000, format="MP3")  # 32 kHz: fine
    extra = [{**rows[0], "path": name, "sentence": "Da iawn."} for name in [*bad, *corrupted, "common_voice_cy_9.mp3"]]
    extra[5]["sentence"] = " -- ?! "
    extra.append({**rows[1]})  # listed twice
    write_tsv(cy / "dev.tsv", COMMONVOICE_TSV_HEADER, rows + extra + [{"client_id": "x"}])  # and a row without path

    save = tmp_path / "save"
    caplog.set_level(logging.INFO, logger=LOGGER)
    csvs = prepare_commonvoice(cy, save)
    _, out = read_csv(csvs["dev"])
    # Header checks only: the corrupted streams pass, the 32 kHz clip is kept.
    assert [row["ID"] for row in out] == sorted([*good, *(n[:-4] for n in corrupted), "common_voice_cy_9"])
    skipped = read_skipped(save / SKIPPED_FILE)
    expected = {str(clips / name): reason for name, reason in bad.items()}
    expected[str(clips / rows[1]["path"])] = "duplicate"
    expected[f"{cy / 'dev.tsv'}:{1 + len(rows) + len(extra) + 1}"] = "bad_record"  # line 1: the header
    assert skipped == expected
    assert len(read_csv(csvs["train"])[1]) == CLIPS
    for count in ("bad_record=1", "duplicate=1", "empty=1", "empty_transcript=1", "missing_audio=1"):
        assert count in caplog.text
    for count in ("not_mono=1", "too_short=1", "unreadable=1"):
        assert count in caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dev" in warnings[0].getMessage()

    # Decoding every clip finds the broken streams too.
    csvs = prepare_commonvoice(cy, save, check_decoding=True)
    assert [row["ID"] for row in read_csv(csvs["dev"])[1]] == [*good, "common_voice_cy_9"]
    skipped = read_skipped(save / SKIPPED_FILE)
    assert {name: skipped.pop(str(clips / name)) for name in corrupted} == dict.fromkeys(corrupted, "corrupted")
    assert skipped == expected
    assert "corrupted=2" in caplog.text


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e30])
def test_check_decoding_skips_clips_with_poisoned_samples(corpus, tmp_path, fill):
    cy, rows = corpus / "cy", read_tsv(corpus / "cy" / "dev.tsv")
    speech = sf.read(str(cy / "clips" / rows[0]["path"]), dtype="float32")[0]
    speech[len(speech) // 2] = fill
    sf.write(cy / "clips" / "common_voice_cy_poisoned.wav", speech, 48000, subtype="FLOAT")  # a float file
    write_tsv(cy / "dev.tsv", COMMONVOICE_TSV_HEADER, [*rows, {**rows[0], "path": "common_voice_cy_poisoned.wav"}])
    save = tmp_path / "save"
    csvs = prepare_commonvoice(cy, save, check_decoding=True)
    assert [row["ID"] for row in read_csv(csvs["dev"])[1]] == sorted(row["path"][:-4] for row in rows)
    assert read_skipped(save / SKIPPED_FILE) == {str(cy / "clips" / "common_voice_cy_poisoned.wav"): "bad_samples"}


def test_missing_files_and_folders(corpus, tmp_path):
    save = tmp_path / "save"
    with pytest.raises(FileNotFoundError, match=r"'clips/', 'train.tsv'.*nowhere.*clips/\*\.mp3"):
        prepare_commonvoice(tmp_path / "nowhere", save)
    (corpus / "cy" / "test.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"\['test.tsv'\]"):
        prepare_commonvoice(corpus / "cy", save)
    shutil.rmtree(corpus / "cy" / "clips")
    with pytest.raises(FileNotFoundError, match=r"\['clips/'\]"):
        prepare_commonvoice(corpus, save, language="cy", splits=["train"])
    assert not save.exists()


def test_skip_prep_and_invalid_options(corpus, tmp_path):
    save = tmp_path / "save"
    assert prepare_commonvoice(tmp_path / "nowhere", save, skip_prep=True) == {s: save / f"{s}.csv" for s in SPLITS}
    assert not save.exists()
    with pytest.raises(ValueError, match="max_duration"):
        prepare_commonvoice(corpus / "cy", save, min_duration=2.0, max_duration=1.0)
    with pytest.raises(ValueError, match="sample_rate"):
        prepare_commonvoice(corpus / "cy", save, sample_rate=0)
    with pytest.raises(ValueError, match="splits"):
        prepare_commonvoice(corpus / "cy", save, splits=[])
    assert list(prepare_commonvoice(corpus / "cy", save, splits="dev")) == ["dev"]
