"""The datasets recipes read: manifests checked with clear errors, audio with poisoned samples left out."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.dataio.dataloader import make_dataloader

from speechbrain_ext.data.audio import MAX_ABS_SAMPLE, UndecodableList
from speechbrain_ext.data.dataset import audio_dataset, read_manifests
from speechbrain_ext.data.librispeech import prepare_librispeech
from speechbrain_ext.data.toy import write_toy_librispeech
from speechbrain_ext.training import collate_decoded

POISONS = {"nan": float("nan"), "inf": float("inf"), "huge": 1e30}


@pytest.fixture(scope="module")
def toy_manifest(tmp_path_factory):
    """A toy LibriSpeech split of 4 utterances, prepared as the BEST-RQ recipe prepares it."""
    root = tmp_path_factory.mktemp("toy")
    corpus = write_toy_librispeech(root, splits=("dev-clean",), speakers_per_split=1, chapters_per_speaker=1,
                                   utterances_per_chapter=4)
    return prepare_librispeech(corpus, root / "prepared", splits=("dev-clean",), min_duration=0.0)["dev-clean"]


def poisoned_copy(manifest, folder, fill):
    """A copy of ``manifest`` whose second file is replaced by a float WAV holding ``fill`` at one sample.

    Its header is fine (a mono 16 kHz file of the same length): only decoding shows the poison.
    """
    rows = manifest.read_text().splitlines()
    header, body = rows[0], rows[1:]
    wav_column = header.split(",").index("wav")
    victim = body[1].split(",")[wav_column]
    signal, rate = sf.read(victim, dtype="float32")
    signal[len(signal) // 2] = fill
    path = folder / "poisoned.wav"
    sf.write(path, signal, rate, subtype="FLOAT")
    fields = body[1].split(",")
    fields[wav_column] = str(path)
    body[1] = ",".join(fields)
    copy = folder / "dev-clean.csv"
    copy.write_text("\n".join([header, *body]) + "\n")
    return copy, str(path), fields[0]


@pytest.mark.parametrize("fill", list(POISONS.values()), ids=list(POISONS))
def test_poisoned_audio_is_left_out_of_its_batch_named_listed_and_skipped_by_the_next_run(
    toy_manifest, tmp_path, caplog, fill
):
    manifest, poisoned, poisoned_id = poisoned_copy(toy_manifest, tmp_path, fill)
    run = tmp_path / "run"
    options = {"header_cache": run / "audio_headers.json", "report_file": run / "skipped_audio.txt"}
    data = audio_dataset([manifest], 16000, **options)
    assert len(data) == 4  # its header is fine
    # As a recipe's loader reads it (ResilientBrain collates with collate_decoded).
    loader = make_dataloader(data, batch_size=4, collate_fn=collate_decoded)
    with caplog.at_level(logging.WARNING):
        (batch,) = list(loader)
    assert poisoned_id not in batch.id and len(batch.id) == 3
    assert torch.isfinite(batch.sig.data).all() and batch.sig.data.abs().max() <= 1.0
    assert f"refused the samples of {poisoned}" in caplog.text
    listed = UndecodableList(run / UndecodableList.NAME).problem(poisoned)
    assert listed is not None and ("non-finite" in listed.detail or "absurd" in listed.detail)

    # The next run leaves it out up front, counted in the log and listed in the report.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = audio_dataset([manifest], 16000, **options)
    assert sorted(item["id"] for item in again) == sorted(batch.id)
    assert "left out 1 of 4 files" in caplog.text and "undecodable=1" in caplog.text
    assert f"{poisoned}\tundecodable" in options["report_file"].read_text()


@pytest.mark.parametrize("fill", list(POISONS.values()), ids=list(POISONS))
def test_check_decoding_leaves_poisoned_audio_out_before_training(toy_manifest, tmp_path, fill):
    manifest, poisoned, poisoned_id = poisoned_copy(toy_manifest, tmp_path, fill)
    report = tmp_path / "skipped_audio.txt"
    data = audio_dataset([manifest], 16000, check_decoding=True, report_file=report,
                         header_cache=tmp_path / "audio_headers.json")
    assert poisoned_id not in [item["id"] for item in data] and len(data) == 3
    assert f"{poisoned}\tbad_samples\t" in report.read_text()
    assert UndecodableList(tmp_path / UndecodableList.NAME).problem(poisoned) is not None


def test_resampling_reader_refuses_poisoned_audio(toy_manifest, tmp_path, caplog):
    """The reader of audio of any rate (Common Voice's MP3S task) refuses it too."""
    manifest, poisoned, poisoned_id = poisoned_copy(toy_manifest, tmp_path, float("nan"))
    data = audio_dataset([manifest], 8000, resample=True)
    with caplog.at_level(logging.WARNING):
        signals = {item["id"]: item["sig"] for item in data}
    assert signals[poisoned_id] is None and all(torch.isfinite(s).all() for s in signals.values() if s is not None)
    assert poisoned in caplog.text


def test_loud_but_real_audio_is_kept(toy_manifest, tmp_path):
    manifest, poisoned, poisoned_id = poisoned_copy(toy_manifest, tmp_path, MAX_ABS_SAMPLE / 2)
    data = audio_dataset([manifest], 16000, check_decoding=True)
    assert {item["id"]: item["sig"] for item in data}[poisoned_id] is not None


def test_a_duration_that_is_not_a_number_names_the_manifest_and_row(tmp_path):
    manifest = tmp_path / "train.csv"
    manifest.write_text("ID,duration,wav\nu1,1.5,/a.flac\nu2,abc,/b.flac\n")
    with pytest.raises(ValueError, match=r"train\.csv, line 3 \(ID 'u2'\): duration 'abc' is not a number"):
        read_manifests([manifest])


@pytest.mark.parametrize("column", ["ID", "wav"])
def test_a_manifest_without_a_needed_column_names_it(tmp_path, column):
    manifest = tmp_path / "train.csv"
    header = [name for name in ("ID", "duration", "wav") if name != column]
    manifest.write_text(",".join(header) + "\n" + ",".join(["x"] * len(header)) + "\n")
    with pytest.raises(ValueError, match=rf"manifest .*train\.csv has no '{column}' column"):
        audio_dataset([manifest], 16000)


def test_non_utf8_bytes_in_the_undecodable_list_are_read(toy_manifest, tmp_path):
    manifest, poisoned, _ = poisoned_copy(toy_manifest, tmp_path, float("nan"))
    listing = tmp_path / UndecodableList.NAME
    listing.write_bytes(b"/data/caf\xe9.flac\t10\t20\tcut \xff short\n")  # Latin-1 path, a stray byte
    data = audio_dataset([manifest], 16000, header_cache=tmp_path / "audio_headers.json")
    assert [item["sig"] for item in data if item["sig"] is None]  # the poisoned file, appended to the list
    text = listing.read_bytes()
    assert text.startswith(b"/data/caf\xe9.flac\t10\t20\tcut \xff short\n") and poisoned.encode() in text
    assert UndecodableList(listing).problem(poisoned) is not None


def test_a_good_file_reads_as_speechbrain_reads_it(toy_manifest):
    """The checked reader gives the same samples as SpeechBrain's read_audio for a good file."""
    data = audio_dataset([toy_manifest], 16000)
    first = data[0]
    np.testing.assert_array_equal(first["sig"].numpy(), sf.read(read_manifests([toy_manifest])[first["id"]]["wav"],
                                                                 dtype="float32")[0])
