"""Tests of prepare_slurp and the toy SLURP (layout, manifests, bad files, learnable scenarios)."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import must_not_run, read_csv, read_skipped, write_bad_audio

from speechbrain_ext.data import slurp
from speechbrain_ext.data.slurp import CSV_HEADER, OPT_FILE, SCENARIOS, SKIPPED_FILE, prepare_slurp
from speechbrain_ext.data.toy import write_toy_slurp

LOGGER = "speechbrain_ext.data.slurp"
SPLITS = ("train", "devel", "test")
TOY_SCENARIOS = ("alarm", "audio", "iot", "play", "transport", "weather")
PER_SCENARIO = {"train": 6, "devel": 2, "test": 6}
FIELDS = ("slurp_id", "sentence", "sentence_annotation", "intent", "action", "tokens", "scenario", "recordings")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A toy SLURP written once (6 scenarios); tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("pristine")
    write_toy_slurp(root, recordings_per_scenario=6, scenarios=TOY_SCENARIOS, seed=1, splits=["train", "test"])
    write_toy_slurp(root, recordings_per_scenario=2, scenarios=TOY_SCENARIOS, seed=1, splits=["devel"])
    return root


def read_jsonl(root, split):
    lines = (root / "dataset" / "slurp" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_scenario_list():
    assert len(SCENARIOS) == len(set(SCENARIOS)) == 18
    assert list(SCENARIOS) == sorted(SCENARIOS)
    assert {"alarm", "iot", "qa", "takeaway", "weather"} <= set(SCENARIOS)


def test_toy_layout_and_jsonl_format(pristine):
    assert sorted(p.name for p in pristine.iterdir()) == ["dataset", "slurp_real"]
    assert sorted(p.name for p in (pristine / "dataset" / "slurp").iterdir()) == [f"{s}.jsonl" for s in sorted(SPLITS)]
    all_ids, all_files = set(), set()
    for split in SPLITS:
        entries = read_jsonl(pristine, split)
        ids = [entry["slurp_id"] for entry in entries]
        assert all(isinstance(i, int) for i in ids) and not all_ids & set(ids)  # splits share no sentence
        all_ids |= set(ids)
        counts = {scenario: 0 for scenario in TOY_SCENARIOS}
        for entry in entries:
            assert all(field in entry for field in FIELDS)
            assert entry["scenario"] in TOY_SCENARIOS
            assert entry["intent"] == f"{entry['scenario']}_{entry['action']}"
            assert entry["sentence"] == entry["sentence"].lower()
            assert [t["surface"] for t in entry["tokens"]] == entry["sentence"].split()
            for entity in entry["entities"]:  # slots are annotated as "[type : value]"
                value = " ".join(entry["sentence"].split()[i] for i in entity["span"])
                assert f"[{entity['type']} : {value}]" in entry["sentence_annotation"]
            assert 1 <= len(entry["recordings"]) <= 2
            counts[entry["scenario"]] += len(entry["recordings"])
            for recording in entry["recordings"]:
                assert recording["file"].startswith("audio-") and recording["file"].endswith(".flac")
                info = sf.info(str(pristine / "slurp_real" / recording["file"]))
                assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
                assert 1.0 <= info.duration < 8.0
                all_files.add(recording["file"])
        assert counts == {scenario: PER_SCENARIO[split] for scenario in TOY_SCENARIOS}
    assert all_files == {p.name for p in (pristine / "slurp_real").iterdir()}
    keyword = {"alarm": "alarm", "audio": "volume", "iot": "lights", "play": "play", "weather": "weather"}
    for entry in read_jsonl(pristine, "train"):  # scenario keywords in every sentence
        assert keyword.get(entry["scenario"], "train") in entry["sentence"].split()


def test_toy_is_deterministic(tmp_path):
    a = write_toy_slurp(tmp_path / "a", recordings_per_scenario=1, scenarios=["music"], splits=["devel"], seed=4)
    b = write_toy_slurp(tmp_path / "b", recordings_per_scenario=1, scenarios=["music"], splits=["devel"], seed=4)
    jsonl = "dataset/slurp/devel.jsonl"
    assert (a / jsonl).read_bytes() == (b / jsonl).read_bytes()
    name = read_jsonl(a, "devel")[0]["recordings"][0]["file"]
    assert (a / "slurp_real" / name).read_bytes() == (b / "slurp_real" / name).read_bytes()
    with pytest.raises(ValueError, match="unknown SLURP scenario"):
        write_toy_slurp(tmp_path / "c", scenarios=["alarms"])


def test_rows_columns_and_durations(corpus, tmp_path):
    save = tmp_path / "save"
    csvs = prepare_slurp(corpus, save)
    assert csvs == {split: save / f"{split}.csv" for split in SPLITS}
    for split in SPLITS:
        header, rows = read_csv(csvs[split])
        assert header == list(CSV_HEADER) == ["ID", "duration", "wav", "scenario", "action", "intent", "transcript"]
        expected = {
            f"{entry['slurp_id']}_{rec['file'][:-5]}": (entry, rec["file"])
            for entry in read_jsonl(corpus, split)
            for rec in entry["recordings"]
        }
        assert len(rows) == len(expected) == PER_SCENARIO[split] * len(TOY_SCENARIOS)
        assert {row["ID"] for row in rows} == set(expected)
        order = [(int(row["ID"].split("_")[0]), row["ID"]) for row in rows]
        assert order == sorted(order)  # by slurp_id, then file
        for row in rows:
            entry, file = expected[row["ID"]]
            assert os.path.isabs(row["wav"]) and row["wav"] == str(corpus / "slurp_real" / file)
            info = sf.info(row["wav"])
            assert float(row["duration"]) == info.frames / info.samplerate
            assert (row["scenario"], row["action"], row["intent"]) == (
                entry["scenario"],
                entry["action"],
                entry["intent"],
            )
            assert row["transcript"] == entry["sentence"].upper()
    assert read_skipped(save / SKIPPED_FILE) == {}
    assert (save / OPT_FILE).is_file()


def test_synthetic_speech_and_audio_folder_of_the_slurp_repository(corpus, tmp_path):
    # SLURP's own download script leaves the audio in audio/slurp_real/ and audio/slurp_synth/.
    (corpus / "audio").mkdir()
    (corpus / "slurp_real").rename(corpus / "audio" / "slurp_real")
    entries = read_jsonl(corpus, "devel")[:2]
    (corpus / "audio" / "slurp_synth").mkdir()
    for entry in entries:
        for rec in entry["recordings"]:
            shutil.copy(corpus / "audio" / "slurp_real" / rec["file"], corpus / "audio" / "slurp_synth" / rec["file"])
    synthetic = corpus / "dataset" / "slurp" / "train_synthetic.jsonl"
    synthetic.write_text("".join(json.dumps(entry) + "\n" for entry in entries))

    _, real_only = read_csv(prepare_slurp(corpus, tmp_path / "a", splits=["train"])["train"])
    _, with_synth = read_csv(prepare_slurp(corpus, tmp_path / "b", splits=["train"], use_synthetic=True)["train"])
    assert len(real_only) == PER_SCENARIO["train"] * len(TOY_SCENARIOS)
    added = [row for row in with_synth if "_synth_" in row["ID"]]
    assert len(with_synth) == len(real_only) + len(added) and len(added) == sum(len(e["recordings"]) for e in entries)
    assert all(f"{os.sep}audio{os.sep}slurp_synth{os.sep}" in row["wav"] for row in added)
    assert all(f"{os.sep}audio{os.sep}slurp_real{os.sep}" in row["wav"] for row in real_only)

    shutil.rmtree(corpus / "audio" / "slurp_synth")
    with pytest.raises(FileNotFoundError, match="slurp_synth"):
        prepare_slurp(corpus, tmp_path / "c", splits=["train"], use_synthetic=True)


def test_rerun_skips_and_changed_options_rescan(corpus, tmp_path, caplog, monkeypatch):
    save = tmp_path / "save"
    csvs = prepare_slurp(corpus, save)
    mtimes = {split: path.stat().st_mtime_ns for split, path in csvs.items()}

    with monkeypatch.context() as patch:
        patch.setattr(slurp, "_scan_split", must_not_run("prepared splits were scanned again"))
        caplog.set_level(logging.INFO, logger=LOGGER)
        assert prepare_slurp(corpus, save) == csvs
    assert "already prepared" in caplog.text
    assert {split: path.stat().st_mtime_ns for split, path in csvs.items()} == mtimes

    # Other options: prepared again, and the result follows the new options.
    prepare_slurp(corpus, save, max_duration=2.5)
    _, rows = read_csv(csvs["train"])
    durations = [sf.info(str(p)).duration for p in (corpus / "slurp_real").iterdir()]
    assert rows and all(float(row["duration"]) <= 2.5 for row in rows)
    assert any(d > 2.5 for d in durations) and "too_long" in read_skipped(save / SKIPPED_FILE).values()


def test_bad_files_are_skipped_counted_and_listed(corpus, tmp_path, caplog):
    expected = write_bad_audio(corpus / "slurp_real", "audio-bad")  # {path: reason}
    entries = read_jsonl(corpus, "devel")
    good_ids = {f"{e['slurp_id']}_{r['file'][:-5]}" for e in entries for r in e["recordings"]}
    template = {**entries[0], "recordings": entries[0]["recordings"][:1]}
    extra = []
    for n, path in enumerate(expected, start=1):
        extra.append({**template, "slurp_id": 90000 + n, "recordings": [{"file": os.path.basename(path)}]})
    missing = str(corpus / "slurp_real" / "audio-404.flac")
    extra.append({**template, "slurp_id": 90100, "recordings": [{"file": "audio-404.flac"}]})
    expected[missing] = "missing_audio"
    unknown = corpus / "slurp_real" / template["recordings"][0]["file"]
    extra.append({**template, "slurp_id": 90101, "scenario": "smalltalk"})  # not one of the 18
    extra.append({**template})  # the same recordings again
    lines = [json.dumps(entry) for entry in entries + extra] + ['{"slurp_id": 90102, "sentence": "no more"']
    (corpus / "dataset" / "slurp" / "devel.jsonl").write_text("\n".join(lines) + "\n")

    save = tmp_path / "save"
    caplog.set_level(logging.INFO, logger=LOGGER)
    csvs = prepare_slurp(corpus, save)

    _, rows = read_csv(csvs["devel"])
    assert {row["ID"] for row in rows} == good_ids  # all good recordings remain, no bad one
    assert len(read_csv(csvs["train"])[1]) == PER_SCENARIO["train"] * len(TOY_SCENARIOS)
    skipped = [line.split("\t")[:2] for line in (save / SKIPPED_FILE).read_text().splitlines()[1:]]
    bad_line = f"{corpus / 'dataset' / 'slurp' / 'devel.jsonl'}:{len(lines)}"
    assert {path: reason for path, reason in skipped if path != str(unknown)} == {**expected, bad_line: "bad_record"}
    assert sorted(reason for path, reason in skipped if path == str(unknown)) == ["duplicate", "unknown_scenario"]
    assert len(skipped) == len(expected) + 3
    for count in ("bad_record=1", "duplicate=1", "empty=1", "missing_audio=1", "not_mono=1", "too_short=1"):
        assert count in caplog.text
    for count in ("unknown_scenario=1", "unreadable=1", "wrong_sample_rate=1"):
        assert count in caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "devel" in warnings[0].getMessage()


def test_audio_where_the_slurp_download_script_leaves_it(corpus, tmp_path):
    # The SLURP repository's scripts/download_audio.sh, run in scripts/, unpacks the archives into
    # scripts/audio/slurp_real/ and scripts/audio/slurp_synth/; data_folder is the repository root.
    audio = corpus / "scripts" / "audio"
    audio.mkdir(parents=True)
    (corpus / "slurp_real").rename(audio / "slurp_real")
    entries = read_jsonl(corpus, "devel")[:2]
    (audio / "slurp_synth").mkdir()
    for entry in entries:
        for rec in entry["recordings"]:
            shutil.copy(audio / "slurp_real" / rec["file"], audio / "slurp_synth" / rec["file"])
    (corpus / "dataset" / "slurp" / "train_synthetic.jsonl").write_text(
        "".join(json.dumps(entry) + "\n" for entry in entries))

    csvs = prepare_slurp(corpus, tmp_path / "a", use_synthetic=True)
    for split in ("train", "devel", "test"):
        _, rows = read_csv(csvs[split])
        assert rows and all(os.path.isfile(row["wav"]) for row in rows)
        real = [row for row in rows if "_synth_" not in row["ID"]]
        assert all(f"{os.sep}scripts{os.sep}audio{os.sep}slurp_real{os.sep}" in row["wav"] for row in real)
    _, train = read_csv(csvs["train"])
    assert sum("_synth_" in row["ID"] for row in train) == sum(len(e["recordings"]) for e in entries)
    shutil.rmtree(audio / "slurp_real")
    with pytest.raises(FileNotFoundError, match="scripts/audio/slurp_real"):
        prepare_slurp(corpus, tmp_path / "b")


def test_split_without_usable_audio_raises(corpus, tmp_path):
    for entry in read_jsonl(corpus, "test"):
        for rec in entry["recordings"]:
            (corpus / "slurp_real" / rec["file"]).write_bytes(b"")
    save = tmp_path / "save"
    with pytest.raises(ValueError, match=r"'test'.*no usable recording.*empty=36"):
        prepare_slurp(corpus, save)
    assert not (save / "test.csv").exists() and not (save / OPT_FILE).exists()


def test_missing_files_and_folders(corpus, tmp_path):
    save = tmp_path / "save"
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl.*dataset/slurp"):
        prepare_slurp(tmp_path / "nowhere", save)
    with pytest.raises(FileNotFoundError, match=r"train_synthetic\.jsonl"):
        prepare_slurp(corpus, save, use_synthetic=True)
    shutil.rmtree(corpus / "slurp_real")
    with pytest.raises(FileNotFoundError, match="slurp_real"):
        prepare_slurp(corpus, save)
    assert not save.exists()


def test_skip_prep_and_invalid_options(corpus, tmp_path):
    save = tmp_path / "save"
    assert prepare_slurp(tmp_path / "nowhere", save, skip_prep=True) == {s: save / f"{s}.csv" for s in SPLITS}
    assert not save.exists()
    with pytest.raises(ValueError, match="max_duration"):
        prepare_slurp(corpus, save, min_duration=2.0, max_duration=1.0)
    with pytest.raises(ValueError, match="splits"):
        prepare_slurp(corpus, save, splits=[])
    assert list(prepare_slurp(corpus, save, splits="devel")) == ["devel"]


def log_band_features(wav: np.ndarray, sample_rate: int = 16000, bands: int = 24) -> np.ndarray:
    """Log energies in `bands` bands, level-normalised per frame, averaged over thirds of the speech.

    The thirds keep a little of the word order; dividing out each frame's level leaves the
    spectral shape, which follows the sounds said.
    """
    n, hop = 400, 160
    frames = np.lib.stride_tricks.sliding_window_view(wav, n)[::hop] * np.hanning(n)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    edges = np.geomspace(100.0, sample_rate / 2, bands + 1)
    energy = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    log = np.log(energy + 1e-8)
    log = log[log.mean(1) > np.percentile(log.mean(1), 30)]  # speech, not the pauses
    log = log - log.mean(1, keepdims=True)
    return np.concatenate([part.mean(0) for part in np.array_split(log, 3)] + [log.std(0)])


def test_scenario_is_learnable_from_audio(corpus, tmp_path):
    """Nearest class mean on simple spectral features, held-out test speakers and recordings."""
    csvs = prepare_slurp(corpus, tmp_path / "save", splits=["train", "test"])

    def features(split):
        _, rows = read_csv(csvs[split])
        x = np.stack([log_band_features(sf.read(row["wav"], dtype="float32")[0]) for row in rows])
        return x, np.array([row["scenario"] for row in rows])

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    classes = sorted(set(y_train))
    centroids = np.stack([x_train[y_train == c].mean(0) for c in classes])
    distances = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = float((np.array(classes)[distances.argmin(1)] == y_test).mean())
    chance = 1.0 / len(classes)
    assert len(classes) == len(TOY_SCENARIOS) and len(y_test) == 36
    assert accuracy >= 3 * chance, f"scenario accuracy {accuracy:.2f}, chance {chance:.2f}"
