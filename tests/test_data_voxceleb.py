"""Tests of the toy VoxCeleb1 and of prepare_voxceleb1 (with deliberately bad files)."""

import logging
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import must_not_run, read_csv, read_skipped, write_bad_audio

from speechbrain_ext.data import voxceleb
from speechbrain_ext.data.toy import write_toy_voxceleb1
from speechbrain_ext.data.voxceleb import OPT_FILE, SKIPPED_FILE, prepare_voxceleb1, utt_id

LOGGER = "speechbrain_ext.data.voxceleb"
DEV = [f"id1000{i}" for i in range(1, 7)]
TEST = ["id10270", "id10271", "id10272"]
VIDEO = re.compile(r"^[A-Za-z0-9_-]{11}$")
TRIAL = re.compile(r"^([01]) (id\d{5}/[A-Za-z0-9_-]{11}/\d{5}\.wav) (id\d{5}/[A-Za-z0-9_-]{11}/\d{5}\.wav)$")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A toy corpus written once; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("pristine")
    return write_toy_voxceleb1(root, num_speakers=6, test_speakers=3, seed=1)


@pytest.fixture(scope="module")
def prepared(pristine, tmp_path_factory):
    save = tmp_path_factory.mktemp("prepared")
    return prepare_voxceleb1(pristine, save), save


def read_trials(vox):
    return [line.split() for line in (vox / "meta" / "veri_test2.txt").read_text().splitlines()]


def test_toy_layout_like_voxceleb1(pristine):
    assert pristine.name == "VoxCeleb1"
    assert sorted(p.name for p in pristine.iterdir()) == ["meta", "wav"]
    assert sorted(p.name for p in (pristine / "wav").iterdir()) == DEV + TEST
    for spk_dir in (pristine / "wav").iterdir():
        videos = sorted(spk_dir.iterdir())
        assert len(videos) == 2 and all(VIDEO.match(v.name) for v in videos)
        for video in videos:
            assert sorted(p.name for p in video.iterdir()) == ["00001.wav", "00002.wav", "00003.wav"]
            for wav in video.iterdir():
                info = sf.info(str(wav))
                assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)
                assert 1.0 <= info.duration <= 7.0
    lines = (pristine / "meta" / "veri_test2.txt").read_text().splitlines()
    assert all(TRIAL.match(line) for line in lines), lines[:3]
    trials = read_trials(pristine)
    assert len(trials) == 2 * 3 * 6  # a target and a non-target trial per test utterance
    for label, enrol, test in trials:
        assert (pristine / "wav" / enrol).is_file() and (pristine / "wav" / test).is_file()
        assert enrol.split("/")[0] in TEST and test.split("/")[0] in TEST
        assert (label == "1") == (enrol.split("/")[0] == test.split("/")[0])
        assert enrol != test
    meta = [line.split("\t") for line in (pristine / "meta" / "vox1_meta.csv").read_text().splitlines()]
    assert meta[0] == ["VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set"]
    assert {row[0]: row[4] for row in meta[1:]} == {**dict.fromkeys(DEV, "dev"), **dict.fromkeys(TEST, "test")}


def test_toy_is_deterministic(tmp_path):
    sizes = dict(num_speakers=1, test_speakers=2, videos_per_speaker=1, utterances_per_video=2)
    a = write_toy_voxceleb1(tmp_path / "a", seed=5, **sizes)
    b = write_toy_voxceleb1(tmp_path / "b", seed=5, **sizes)
    c = write_toy_voxceleb1(tmp_path / "c", seed=6, **sizes)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 * 2 + 2
    assert all((a / rel).read_bytes() == (b / rel).read_bytes() for rel in files)
    assert sorted(p.relative_to(c) for p in c.rglob("*.wav")) != [f for f in files if f.suffix == ".wav"]
    with pytest.raises(ValueError, match="test_speakers"):
        write_toy_voxceleb1(tmp_path / "d", test_speakers=1)


def test_manifests_rows_columns_and_speaker_separation(pristine, prepared):
    csvs, save = prepared
    assert csvs == {name: save / f"{name}.csv" for name in ("train", "valid", "test", "trials")}
    tables = {}
    for name in ("train", "valid", "test"):
        header, rows = read_csv(csvs[name])
        assert header == ["ID", "duration", "wav", "spk_id"]
        assert [row["ID"] for row in rows] == sorted(row["ID"] for row in rows)
        for row in rows:
            rel = os.path.relpath(row["wav"], pristine / "wav")
            assert os.path.isabs(row["wav"]) and row["ID"] == rel[:-4].replace("/", "--") == utt_id(rel)
            assert row["spk_id"] == rel.split("/")[0]
            info = sf.info(row["wav"])
            assert float(row["duration"]) == info.frames / info.samplerate
        tables[name] = rows
    speakers = {name: {row["spk_id"] for row in rows} for name, rows in tables.items()}
    # Speakers outside the trial list are split per utterance: each is in train and in valid.
    assert speakers["train"] == speakers["valid"] == set(DEV)
    assert speakers["test"] == set(TEST)
    train_ids, valid_ids = {r["ID"] for r in tables["train"]}, {r["ID"] for r in tables["valid"]}
    assert not train_ids & valid_ids
    dev_wavs = [p for spk in DEV for p in (pristine / "wav" / spk).rglob("*.wav")]
    assert len(train_ids | valid_ids) == len(dev_wavs) == 36
    assert len(valid_ids) == 6  # 5% of 6 utterances, rounded up to one per speaker

    header, trials = read_csv(csvs["trials"])
    assert header == ["label", "enrol", "test"]
    expected = [{"label": label, "enrol": utt_id(e), "test": utt_id(t)} for label, e, t in read_trials(pristine)]
    assert trials == expected
    test_ids = [row["ID"] for row in tables["test"]]
    assert set(test_ids) == {t[k] for t in trials for k in ("enrol", "test")}  # every trial ID, nothing else
    assert read_skipped(save / SKIPPED_FILE) == {}
    assert (save / OPT_FILE).is_file()


def test_valid_split_follows_seed_and_ratio(pristine, prepared, tmp_path):
    csvs, _ = prepared
    valid = {row["ID"] for row in read_csv(csvs["valid"])[1]}
    again = prepare_voxceleb1(pristine, tmp_path / "same")
    assert {row["ID"] for row in read_csv(again["valid"])[1]} == valid
    other = {
        seed: {row["ID"] for row in read_csv(prepare_voxceleb1(pristine, tmp_path / str(seed), seed=seed)["valid"])[1]}
        for seed in (1, 2)
    }
    assert other[1] != valid or other[2] != valid
    half = prepare_voxceleb1(pristine, tmp_path / "half", valid_ratio=0.5)
    _, rows = read_csv(half["valid"])
    assert sorted(row["spk_id"] for row in rows) == sorted(DEV * 3)


def test_trial_list_locations_and_missing_folders(corpus, tmp_path):
    reference = prepare_voxceleb1(corpus, tmp_path / "ref")["trials"].read_text()
    # veri_test2.txt beside wav/ instead of in meta/
    shutil.move(corpus / "meta" / "veri_test2.txt", corpus / "veri_test2.txt")
    assert prepare_voxceleb1(corpus, tmp_path / "root")["trials"].read_text() == reference
    # an explicit list anywhere
    elsewhere = tmp_path / "lists" / "my_trials.txt"
    elsewhere.parent.mkdir()
    shutil.move(corpus / "veri_test2.txt", elsewhere)
    explicit = prepare_voxceleb1(corpus, tmp_path / "explicit", verification_file=elsewhere)
    assert explicit["trials"].read_text() == reference
    with pytest.raises(FileNotFoundError, match=r"trial list not found.*meta/veri_test2\.txt"):
        prepare_voxceleb1(corpus, tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        prepare_voxceleb1(corpus, tmp_path / "none", verification_file=tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match=r"wav.*<speaker>/<video>"):
        prepare_voxceleb1(tmp_path / "nowhere", tmp_path / "none", verification_file=elsewhere)
    assert not (tmp_path / "none").exists()


def test_rerun_skips_and_changes_prepare_again(corpus, tmp_path, caplog, monkeypatch):
    save = tmp_path / "save"
    csvs = prepare_voxceleb1(corpus, save)
    mtimes = {name: path.stat().st_mtime_ns for name, path in csvs.items()}

    with monkeypatch.context() as patch:
        patch.setattr(voxceleb, "_scan", must_not_run("a prepared corpus was scanned again"))
        caplog.set_level(logging.INFO, logger=LOGGER)
        assert prepare_voxceleb1(corpus, save) == csvs
    assert "already prepared" in caplog.text
    assert {name: path.stat().st_mtime_ns for name, path in csvs.items()} == mtimes

    # An edited trial list at the same path is prepared again.
    trial_file = corpus / "meta" / "veri_test2.txt"
    trial_file.write_text("".join(f"1 {enrol} {test}\n" for label, enrol, test in read_trials(corpus) if label == "1"))
    prepare_voxceleb1(corpus, save)
    assert [row["label"] for row in read_csv(csvs["trials"])[1]] == ["1"] * 18
    # Keep only id10270's target trials: the other test speakers become training speakers.
    trial_file.write_text("".join(line + "\n" for line in trial_file.read_text().splitlines()[:6]))
    prepare_voxceleb1(corpus, save)
    assert len(read_csv(csvs["trials"])[1]) == 6
    assert {row["spk_id"] for row in read_csv(csvs["test"])[1]} == {"id10270"}
    assert {row["spk_id"] for row in read_csv(csvs["train"])[1]} == set(DEV) | {"id10271", "id10272"}


def test_bad_files_are_skipped_counted_and_trials_dropped(corpus, tmp_path, caplog):
    video = corpus / "wav" / "id10002" / "badVideo_01"
    video.mkdir()
    bad = {}
    for i, (path, reason) in enumerate(sorted(write_bad_audio(tmp_path, "bad").items())):
        target = video / f"{i + 100:05d}.wav"  # VoxCeleb names; soundfile reads by content
        shutil.move(path, target)
        bad[str(target)] = reason
    trials = read_trials(corpus)
    broken = trials[0][1]  # a test utterance used as enrolment and maybe as test
    (corpus / "wav" / broken).write_bytes(b"")
    bad[str(corpus / "wav" / broken)] = "empty"
    missing = "id10271/NoSuchVideo/00001.wav"
    bad[str(corpus / "wav" / missing)] = "missing_audio"
    with open(corpus / "meta" / "veri_test2.txt", "a") as f:
        f.write(f"0 {trials[0][2]} {missing}\n")
    n_dropped = sum(broken in trial for trial in trials) + 1

    save = tmp_path / "save"
    caplog.set_level(logging.INFO, logger=LOGGER)
    csvs = prepare_voxceleb1(corpus, save)

    assert read_skipped(save / SKIPPED_FILE) == bad
    listed = {row["wav"] for name in ("train", "valid", "test") for row in read_csv(csvs[name])[1]}
    assert not listed & set(bad) and len(listed) == 54 - 1  # every good file, no bad one
    _, kept = read_csv(csvs["trials"])
    assert len(kept) == len(trials) + 1 - n_dropped
    assert utt_id(broken) not in {t["enrol"] for t in kept} | {t["test"] for t in kept}
    for text in ("empty=2", "missing_audio=1", "not_mono=1", "too_short=1", "unreadable=1", "wrong_sample_rate=1"):
        assert text in caplog.text
    assert f"dropped {n_dropped} of {len(trials) + 1} trials" in caplog.text


def test_invalid_trial_lists_and_options(corpus, tmp_path):
    save = tmp_path / "save"
    assert prepare_voxceleb1(corpus, save, skip_prep=True)["trials"] == save / "trials.csv"
    assert not save.exists()
    with pytest.raises(ValueError, match="valid_ratio"):
        prepare_voxceleb1(corpus, save, valid_ratio=0.0)
    trial_file = corpus / "meta" / "veri_test2.txt"
    good = trial_file.read_text()
    for bad_line in ("2 id10270/a/00001.wav id10271/b/00001.wav", "1 id10270/00001.wav id10271/b/00001.wav"):
        trial_file.write_text(good + bad_line + "\n")
        with pytest.raises(ValueError, match=rf"veri_test2\.txt:{len(good.splitlines()) + 1}:"):
            prepare_voxceleb1(corpus, save)
    trial_file.write_text("\n")
    with pytest.raises(ValueError, match="no trial"):
        prepare_voxceleb1(corpus, save)


def _f0_and_spectrum(wav: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """Median log f0 of the periodic loud frames and the level-free long-term log spectrum."""
    n = int(0.04 * sample_rate)
    frames = np.lib.stride_tricks.sliding_window_view(wav, n)[:: n // 2]
    energy = (frames**2).mean(axis=1)
    frames = frames[energy > 0.1 * energy.max()] * np.hanning(n)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * n, axis=1)) ** 2, axis=1)[:, :n]
    lo, hi = sample_rate // 400, sample_rate // 60
    lag = lo + ac[:, lo:hi].argmax(axis=1)
    periodic = ac[np.arange(len(lag)), lag] > 0.4 * ac[:, 0]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    edges = np.geomspace(100.0, 7600.0, 21)  # every band holds FFT bins (25 Hz apart)
    bands = np.stack([power[:, (freqs >= a) & (freqs < b)].sum(1) for a, b in zip(edges, edges[1:])], 1)
    bands = np.log(bands + 1e-12)
    shape = (bands - bands.mean(axis=1, keepdims=True)).mean(axis=0)
    return np.concatenate([[np.median(np.log(sample_rate / lag[periodic]))], shape])


def test_speakers_are_learnable_across_videos(pristine):
    """Nearest speaker mean, learnt on one video of each speaker, recognises the other video."""
    wavs = sorted((pristine / "wav").rglob("*.wav"))
    feats = np.stack([_f0_and_spectrum(sf.read(str(p))[0]) for p in wavs])
    speakers = np.array([p.parts[-3] for p in wavs])
    first_video = np.array([p.parts[-2] == sorted(os.listdir(p.parent.parent))[0] for p in wavs])
    correct = 0
    for held_out in (first_video, ~first_video):
        train = ~held_out
        mean, std = feats[train].mean(0), feats[train].std(0) + 1e-8
        z = (feats - mean) / std
        names = sorted(set(speakers))
        centres = np.stack([z[train & (speakers == s)].mean(0) for s in names])
        guess = np.array(names)[((z[held_out, None] - centres[None]) ** 2).sum(-1).argmin(1)]
        correct += int((guess == speakers[held_out]).sum())
    accuracy = correct / len(wavs)
    assert accuracy > 0.4, accuracy  # chance: 1/9
