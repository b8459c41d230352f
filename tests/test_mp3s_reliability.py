"""The MP3S recipes under interruption and bad data: exact resumption, poisoned audio, other data, bad options.

Each run is a recipe's own ``train.py`` in a subprocess (as a user runs it), on a toy corpus and a one-block
encoder, so that the whole file takes about a minute.
"""

import csv
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import kill_when

from speechbrain_ext.data import toy
from speechbrain_ext.data.commonvoice import prepare_commonvoice
from speechbrain_ext.data.iemocap import prepare_iemocap
from speechbrain_ext.data.librispeech import prepare_librispeech
from speechbrain_ext.data.slurp import prepare_slurp
from speechbrain_ext.data.voxceleb import prepare_voxceleb1
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.mp3s.suite import RECIPES


def recipe_of(task, head):
    return next(r for r in RECIPES if (r.task, r.head) == (task, head))


def command(recipe, encoder, data, out, *options, profile="paper"):
    return [sys.executable, str(recipe.train_py), str(recipe.hparams(profile)), f"--ssl_folder={encoder}",
            f"--data_folder={data}", f"--output_folder={out}", "--noprogressbar", *options]


def run(args):
    completed = subprocess.run(args, capture_output=True, text=True)
    output = completed.stdout + completed.stderr  # SpeechBrain logs a recipe's traceback to stdout
    traceback = output[output.rfind("Traceback"):]
    assert completed.returncode == 0, traceback[-3000:]
    return completed


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    return SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4).save_pretrained(folder)


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    return toy.write_toy_iemocap(tmp_path_factory.mktemp("iemocap"), utterances_per_emotion_per_speaker=2)


def checkpoints(save_folder):
    """(epoch, intra-epoch, folder) of each whole checkpoint in ``save_folder``."""
    found = []
    for folder in save_folder.glob("CKPT+*"):
        try:
            meta = yaml.safe_load((folder / "CKPT.yaml").read_text())
            epoch = int((folder / "counter.ckpt").read_text())
        except (FileNotFoundError, ValueError, TypeError):
            continue  # being written or rotated away
        found.append((epoch, bool(meta.get("brain_intra_epoch_ckpt")), folder))
    return found


def kill_in_epoch(args, save_folder, epoch):
    """Runs ``args`` and kills it (SIGKILL) once a mid-epoch checkpoint of ``epoch`` exists."""
    kill_when(args, lambda: any(e == epoch and intra for e, intra, _ in checkpoints(save_folder)),
              f"a mid-epoch checkpoint of epoch {epoch}")


def epoch_lines(train_log):
    return re.findall(r"^epoch: .*$", train_log, re.M)


@pytest.mark.slow
@pytest.mark.parametrize("kill_epoch", [2, 3])
def test_a_head_killed_mid_epoch_resumes_to_the_losses_of_a_run_never_killed(kill_epoch, encoder, iemocap,
                                                                            tmp_path):
    """The paper profile draws the encoder's dropout masks while the head trains and IEMOCAP's loader
    shuffles: a run killed in the middle of epoch 2 or 3 logs, epoch by epoch, what an uninterrupted run logs."""
    recipe = recipe_of("IEMOCAP", "linear")
    options = ("--number_of_epochs=4", "--batch_size=4", "--ckpt_interval_minutes=0", "--ckpt_interval_steps=3")
    reference = tmp_path / "reference"
    run(command(recipe, encoder, iemocap, reference, *options))
    uninterrupted = (reference / "train_log.txt").read_text()
    assert len(epoch_lines(uninterrupted)) == 4

    out = tmp_path / "out"
    kill_in_epoch(command(recipe, encoder, iemocap, out, *options), out / "save", kill_epoch)
    assert len(epoch_lines((out / "train_log.txt").read_text())) == kill_epoch - 1
    run(command(recipe, encoder, iemocap, out, *options))
    train_log = (out / "train_log.txt").read_text()
    assert epoch_lines(train_log) == epoch_lines(uninterrupted)
    assert (out / "results.json").read_text() == (reference / "results.json").read_text().replace(
        str(reference), str(out))


PREPARE = {
    "LibriSpeech": lambda data, save: prepare_librispeech(data, save, splits=("train-clean-100",))["train-clean-100"],
    "CommonVoice": lambda data, save: prepare_commonvoice(data, save)["train"],
    "IEMOCAP": lambda data, save: prepare_iemocap(data, save, test_spk_id=1)["train"],
    "SLURP": lambda data, save: prepare_slurp(data, save, splits=("train",))["train"],
    "VoxCeleb1": lambda data, save: prepare_voxceleb1(data, save)["train"],
}
HEADS = {"LibriSpeech": "LSTM", "CommonVoice": "linear", "IEMOCAP": "linear", "SLURP": "linear",
         "VoxCeleb1": "Xvectors"}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {
        "LibriSpeech": toy.write_toy_librispeech(
            root / "ls", splits=("train-clean-100", "dev-clean", "test-clean", "test-other"),
            speakers_per_split=1, chapters_per_speaker=1, utterances_per_chapter=3),
        "CommonVoice": toy.write_toy_commonvoice(root / "cv", clips_per_split=3),
        "VoxCeleb1": toy.write_toy_voxceleb1(root / "vox", num_speakers=3, test_speakers=2, videos_per_speaker=2,
                                             utterances_per_video=3),
        "IEMOCAP": toy.write_toy_iemocap(root / "iemocap", utterances_per_emotion_per_speaker=1),
        "SLURP": toy.write_toy_slurp(root / "slurp", recordings_per_scenario=3, scenarios=("alarm", "music")),
    }


@pytest.mark.slow
@pytest.mark.parametrize("task", list(PREPARE))
def test_a_poisoned_recording_is_named_left_out_and_the_head_still_trains(task, encoder, corpora, tmp_path):
    """A float recording holding a NaN (its header is fine) in the training set: the run names it, lists it
    as undecodable, leaves it out of its batch, and writes finite results."""
    data = tmp_path / "data"
    shutil.copytree(corpora[task], data)
    with open(PREPARE[task](data, tmp_path / "prepared"), newline="", encoding="utf-8") as handle:
        victim = next(csv.DictReader(handle))["wav"]
    samples, rate = sf.read(victim, dtype="float32", always_2d=True)
    samples[len(samples) // 2] = np.nan
    sf.write(victim, samples, rate, subtype="FLOAT", format="WAV")  # WAV content under the corpus's own name
    recipe = recipe_of(task, HEADS[task])
    out = tmp_path / "out"
    # Batches of 2: the poisoned recording leaves one utterance in its batch, which the x-vector head (batch
    # normalisation) skips with a warning.
    completed = run(command(recipe, encoder, data, out, "--number_of_epochs=1", "--batch_size=2", *recipe.quick))
    assert victim in completed.stdout + completed.stderr
    if task == "VoxCeleb1":
        assert "training batch of one utterance" in completed.stdout + completed.stderr
    assert victim in (out / "audio_undecodable.tsv").read_text()
    rows = yaml.safe_load((out / "results.json").read_text())
    assert rows and all(np.isfinite(row["value"]) for row in rows)


@pytest.mark.slow
def test_a_rerun_on_another_corpus_is_refused_with_both_digests(encoder, corpora, tmp_path):
    recipe = recipe_of("SLURP", "linear")
    out = tmp_path / "out"
    run(command(recipe, encoder, corpora["SLURP"], out, "--number_of_epochs=1", "--batch_size=2"))
    other = toy.write_toy_slurp(tmp_path / "other", recordings_per_scenario=3, scenarios=("alarm", "weather"))
    completed = subprocess.run(command(recipe, encoder, other, out, "--number_of_epochs=1", "--batch_size=2"),
                               capture_output=True, text=True)
    assert completed.returncode != 0
    assert re.search(r"data_digest: '[0-9a-f]{64}' there, '[0-9a-f]{64}' now", completed.stdout + completed.stderr)


@pytest.mark.parametrize("option, message", [
    ("--number_of_epochs=0", "number_of_epochs must be a positive integer, got 0"),
    ("--number_of_epochs=-3", "number_of_epochs must be a positive integer, got -3"),
    ("--lr=abc", "lr must be a positive number, got 'abc'"),
    ("--lr_weights=0", "lr_weights must be a positive number, got 0"),
])
def test_a_recipe_refuses_an_untrainable_setting_before_any_data_work(option, message, encoder, tmp_path):
    recipe = recipe_of("IEMOCAP", "linear")
    out = tmp_path / "out"
    completed = subprocess.run(command(recipe, encoder, tmp_path / "no-data", out, option), capture_output=True,
                               text=True)
    assert completed.returncode != 0 and message in completed.stderr
    assert not (out / "run_identity.json").exists() and not (out / "train.csv").exists()


TOY_ARPA = """\\data\\
ngram 1=4
ngram 2=1

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t0
-1.0\t</s>\t0
-0.5\tTHE\t0

\\2-grams:
-0.1\t<s> THE

\\end\\
"""


@pytest.mark.slow
def test_librispeech_paper_profile_tests_greedily_and_again_with_the_4gram(encoder, corpora, tmp_path):
    pytest.importorskip("kenlm", reason="the [lm] extra (kenlm) is not installed")
    pytest.importorskip("pygtrie", reason="the [lm] extra (pygtrie) is not installed")
    lm = tmp_path / "4-gram.arpa"
    lm.write_text(TOY_ARPA)
    recipe = recipe_of("LibriSpeech", "LSTM")
    out = tmp_path / "out"
    run(command(recipe, encoder, corpora["LibriSpeech"], out, "--number_of_epochs=1", "--batch_size=2",
                "--hidden_size=16", f"--ngram_lm_path={lm}"))
    rows = yaml.safe_load((out / "results.json").read_text())
    metrics = ("WER", "CER", "WER_lm", "CER_lm")
    assert {(row["test_set"], row["metric"]) for row in rows} == {
        (test_set, metric) for test_set in ("test-clean", "test-other") for metric in metrics}
    assert {row["profile"] for row in rows} == {"paper"}
    for test_set in ("test-clean", "test-other"):
        greedy = list(csv.DictReader(open(out / f"hypotheses_{test_set}.csv", encoding="utf-8")))
        with_lm = list(csv.DictReader(open(out / f"hypotheses_{test_set}_lm.csv", encoding="utf-8")))
        assert [row["ID"] for row in greedy] == [row["ID"] for row in with_lm] and len(greedy) == 3
