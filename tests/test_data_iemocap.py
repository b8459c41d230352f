"""Tests of the toy IEMOCAP and of prepare_iemocap (with deliberately bad files)."""

import logging
import os
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from conftest import must_not_run, read_csv, read_skipped, write_bad_audio

from speechbrain_ext.data import iemocap
from speechbrain_ext.data.iemocap import OPT_FILE, SKIPPED_FILE, prepare_iemocap, speaker_number
from speechbrain_ext.data.toy import write_toy_iemocap

LOGGER = "speechbrain_ext.data.iemocap"
PER_EMOTION = 2
LABEL_LINE = re.compile(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(Ses0\d[FM]_\w+_[FM]\d{3})\t([a-z]{3})\t\[[\d., ]+\]$")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A toy corpus written once; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("pristine")
    write_toy_iemocap(root, utterances_per_emotion_per_speaker=PER_EMOTION, seed=1)
    return root


def read_labels(release):
    """{utterance: label} from the EmoEvaluation files, checking every consensus line's format."""
    labels = {}
    for label_file in sorted(release.glob("Session*/dialog/EmoEvaluation/*.txt")):
        lines = label_file.read_text().splitlines()
        assert lines[0].startswith("% [START_TIME - END_TIME] TURN_NAME EMOTION")
        for line in lines[1:]:
            if line.startswith("["):
                match = LABEL_LINE.match(line)
                assert match, line
                assert match.group(3).rsplit("_", 1)[0] == label_file.stem
                labels[match.group(3)] = match.group(4)
            else:
                assert line == "" or re.match(r"^[CA]-E\d:\t", line), line
    return labels


def test_toy_layout_like_iemocap(pristine):
    release = pristine / "IEMOCAP_full_release"
    assert sorted(p.name for p in release.iterdir()) == [f"Session{s}" for s in range(1, 6)]
    labels = read_labels(release)
    wavs = sorted(release.glob("Session*/sentences/wav/*/*.wav"))
    assert sorted(p.stem for p in wavs) == sorted(labels)
    for wav in wavs:
        session = int(wav.parts[-5][len("Session") :])
        assert wav.parent.name in (f"Ses{session:02d}F_impro01", f"Ses{session:02d}M_script01_1")
        assert wav.stem.startswith(wav.parent.name + "_")
        info = sf.info(str(wav))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)
        assert 1.0 <= info.duration <= 6.0
    per_speaker = Counter((speaker_number(utt), label) for utt, label in labels.items())
    for spk in range(1, 11):
        for label in ("neu", "hap", "sad", "ang"):
            assert per_speaker[spk, label] == PER_EMOTION
        for label in ("exc", "fru", "xxx"):
            assert per_speaker[spk, label] == 1
    assert sum(per_speaker.values()) == 10 * (4 * PER_EMOTION + 3)


def test_toy_is_deterministic(tmp_path):
    a = write_toy_iemocap(tmp_path / "a", utterances_per_emotion_per_speaker=1, seed=4)
    b = write_toy_iemocap(tmp_path / "b", utterances_per_emotion_per_speaker=1, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 10 * 7 + 5 * 2 * 2
    assert all((a / rel).read_bytes() == (b / rel).read_bytes() for rel in files)
    with pytest.raises(ValueError, match="utterances_per_emotion_per_speaker"):
        write_toy_iemocap(tmp_path / "c", utterances_per_emotion_per_speaker=0)


@pytest.mark.parametrize(("test_spk", "valid_spk"), [(1, 2), (8, 7)])
def test_fold_split_rows_and_columns(pristine, tmp_path, test_spk, valid_spk):
    save = tmp_path / "save"
    csvs = prepare_iemocap(pristine, save, test_spk_id=test_spk)
    assert csvs == {name: save / f"{name}.csv" for name in ("train", "valid", "test")}
    labels = read_labels(pristine / "IEMOCAP_full_release")
    expected_spk = {"test": {test_spk}, "valid": {valid_spk}, "train": set(range(1, 11)) - {test_spk, valid_spk}}
    all_ids = []
    for name, path in csvs.items():
        header, rows = read_csv(path)
        assert header == ["ID", "duration", "wav", "spk_id", "emo"]
        assert [row["ID"] for row in rows] == sorted(row["ID"] for row in rows)
        assert {int(row["spk_id"]) for row in rows} == expected_spk[name]
        # 2 of each class per speaker, plus the exc utterance counted as hap
        counts = Counter(row["emo"] for row in rows)
        n_spk = len(expected_spk[name])
        assert counts == {"neu": 2 * n_spk, "hap": 3 * n_spk, "sad": 2 * n_spk, "ang": 2 * n_spk}
        for row in rows:
            assert row["emo"] == {"exc": "hap"}.get(labels[row["ID"]], labels[row["ID"]])
            session, sex = int(row["ID"][3:5]), row["ID"].rsplit("_", 1)[1][0]
            assert int(row["spk_id"]) == 2 * session - (sex == "F")
            assert os.path.isabs(row["wav"]) and row["wav"].endswith(
                f"IEMOCAP_full_release/Session{session}/sentences/wav/{row['ID'].rsplit('_', 1)[0]}/{row['ID']}.wav"
            )
            info = sf.info(row["wav"])
            assert float(row["duration"]) == info.frames / info.samplerate
        all_ids += [row["ID"] for row in rows]
    assert len(all_ids) == len(set(all_ids)) == 90
    assert read_skipped(save / SKIPPED_FILE) == {}
    assert (save / OPT_FILE).is_file()


def test_merge_and_drop_are_counted(pristine, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    prepare_iemocap(pristine, tmp_path / "save")
    assert "90 utterances of the 4 classes (neu=20, hap=30, sad=20, ang=20; exc merged into hap)" in caplog.text
    assert "dropped 20 with other labels (fru=10, xxx=10)" in caplog.text


def test_accepts_the_release_folder_itself(pristine, tmp_path):
    a = prepare_iemocap(pristine, tmp_path / "a", test_spk_id=5)
    b = prepare_iemocap(pristine / "IEMOCAP_full_release", tmp_path / "b", test_spk_id=5)
    assert all(a[name].read_text() == b[name].read_text() for name in a)


def test_rerun_skips_and_other_fold_prepares_again(pristine, tmp_path, caplog, monkeypatch):
    save = tmp_path / "save"
    csvs = prepare_iemocap(pristine, save, test_spk_id=1)
    mtimes = {name: path.stat().st_mtime_ns for name, path in csvs.items()}

    with monkeypatch.context() as patch:
        patch.setattr(iemocap, "_collect", must_not_run("a prepared corpus was scanned again"))
        caplog.set_level(logging.INFO, logger=LOGGER)
        assert prepare_iemocap(pristine, save, test_spk_id=1) == csvs
    assert "already prepared" in caplog.text
    assert {name: path.stat().st_mtime_ns for name, path in csvs.items()} == mtimes
    prepare_iemocap(pristine, save, test_spk_id=10)
    assert {row["spk_id"] for row in read_csv(csvs["test"])[1]} == {"10"}
    assert {row["spk_id"] for row in read_csv(csvs["valid"])[1]} == {"9"}


def test_bad_files_are_skipped_counted_and_listed(corpus, tmp_path, caplog):
    release = corpus / "IEMOCAP_full_release"
    dialog = "Ses02F_impro01"
    wav_dir = release / "Session2" / "sentences" / "wav" / dialog
    label_file = release / "Session2" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
    bad = {}
    lines = []
    for i, (path, reason) in enumerate(sorted(write_bad_audio(tmp_path, "bad").items())):
        utterance = f"{dialog}_F{100 + i:03d}"
        shutil.move(path, wav_dir / f"{utterance}.wav")
        bad[str(wav_dir / f"{utterance}.wav")] = reason
        lines.append(f"[{i}.0000 - {i}.5000]\t{utterance}\tang\t[1.5000, 1.5000, 1.5000]\n")
    # A broken file with a dropped label is never read, so never reported.
    shutil.copy(wav_dir / f"{dialog}_F100.wav", wav_dir / f"{dialog}_F200.wav")
    lines.append(f"[9.0000 - 9.5000]\t{dialog}_F200\tfru\t[2.0000, 2.0000, 2.0000]\n")
    # A label line without its audio, and audio without a label line.
    lines.append(f"[9.0000 - 9.5000]\t{dialog}_M300\tsad\t[2.0000, 2.0000, 2.0000]\n")
    bad[str(wav_dir / f"{dialog}_M300.wav")] = "missing_audio"
    shutil.copy(wav_dir / f"{dialog}_F000.wav", wav_dir / f"{dialog}_M301.wav")
    bad[str(wav_dir / f"{dialog}_M301.wav")] = "no_label"
    with open(label_file, "a") as f:
        f.writelines(lines)

    save = tmp_path / "save"
    caplog.set_level(logging.INFO, logger=LOGGER)
    csvs = prepare_iemocap(corpus, save, test_spk_id=3)
    assert read_skipped(save / SKIPPED_FILE) == bad
    _, test_rows = read_csv(csvs["test"])
    assert len(test_rows) == 9 and not {row["wav"] for row in test_rows} & set(bad)
    for text in ("empty=1", "missing_audio=1", "no_label=1", "not_mono=1", "too_short=1", "unreadable=1"):
        assert text in caplog.text
    assert "wrong_sample_rate=1" in caplog.text and "fru=11" in caplog.text


def test_missing_folders_and_invalid_options(corpus, tmp_path):
    save = tmp_path / "save"
    with pytest.raises(FileNotFoundError, match=r"Session1/sentences/wav.*IEMOCAP_full_release/"):
        prepare_iemocap(tmp_path / "nowhere", save)
    shutil.rmtree(corpus / "IEMOCAP_full_release" / "Session3" / "dialog")
    with pytest.raises(FileNotFoundError, match=r"\['Session3/dialog/EmoEvaluation'\]"):
        prepare_iemocap(corpus, save)
    for spk in (0, 11):
        with pytest.raises(ValueError, match="test_spk_id"):
            prepare_iemocap(corpus, save, test_spk_id=spk)
    assert not save.exists()
    assert prepare_iemocap(corpus, save, skip_prep=True)["valid"] == save / "valid.csv"
    assert not save.exists()


def test_malformed_utterance_name_is_reported(corpus, tmp_path):
    label_file = corpus / "IEMOCAP_full_release" / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    n_lines = len(label_file.read_text().splitlines())
    with open(label_file, "a") as f:
        f.write("[1.0000 - 2.0000]\tSes01F_impro01_X000\tneu\t[2.5000, 2.5000, 2.5000]\n")
    with pytest.raises(ValueError, match=rf"Ses01F_impro01\.txt:{n_lines + 1}:.*Ses01F_impro01_X000"):
        prepare_iemocap(corpus, tmp_path / "save")


def test_speaker_numbers():
    assert [speaker_number(f"Ses0{s}F_impro01_{x}000") for s in (1, 5) for x in "FM"] == [1, 2, 9, 10]
    assert speaker_number("Ses03M_script02_2_F011") == 5  # who speaks, not who wears the markers
    with pytest.raises(ValueError, match="Ses06F_impro01_F000"):
        speaker_number("Ses06F_impro01_F000")


def _prosody(wav: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """Log level of the loud frames, their median log f0 and its spread, the loud-frame share."""
    n = int(0.04 * sample_rate)
    frames = np.lib.stride_tricks.sliding_window_view(wav, n)[:: n // 2]
    energy = (frames**2).mean(axis=1)
    loud = energy > 0.1 * energy.max()
    windowed = frames[loud] * np.hanning(n)
    ac = np.fft.irfft(np.abs(np.fft.rfft(windowed, 2 * n, axis=1)) ** 2, axis=1)[:, :n]
    lo, hi = sample_rate // 400, sample_rate // 60
    lag = lo + ac[:, lo:hi].argmax(axis=1)
    log_f0 = np.log(sample_rate / lag[ac[np.arange(len(lag)), lag] > 0.4 * ac[:, 0]])
    return np.array([0.5 * np.log(energy[loud].mean()), np.median(log_f0), log_f0.std(), loud.mean()])


def test_emotions_are_learnable_across_speakers(pristine, tmp_path):
    """Nearest class mean on speaker-normalised prosody, leave-one-session-out, well above chance."""
    csvs = prepare_iemocap(pristine, tmp_path / "save")
    rows = [row for name in ("train", "valid", "test") for row in read_csv(csvs[name])[1]]
    feats = np.stack([_prosody(sf.read(row["wav"])[0]) for row in rows])
    speakers = np.array([int(row["spk_id"]) for row in rows])
    emotions = np.array([row["emo"] for row in rows])
    for spk in set(speakers):  # per-speaker normalisation (no labels used), as usual in emotion recognition
        feats[speakers == spk] -= feats[speakers == spk].mean(0)
    classes = sorted(set(emotions))
    correct = 0
    for session in range(1, 6):
        held_out = (speakers + 1) // 2 == session
        train = ~held_out
        z = feats / (feats[train].std(0) + 1e-8)
        centres = np.stack([z[train & (emotions == c)].mean(0) for c in classes])
        guess = np.array(classes)[((z[held_out, None] - centres[None]) ** 2).sum(-1).argmin(1)]
        correct += int((guess == emotions[held_out]).sum())
    accuracy = correct / len(rows)
    assert accuracy > 0.6, accuracy  # chance: about 1/4
