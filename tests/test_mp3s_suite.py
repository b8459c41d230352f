"""The MP3S recipes' bookkeeping (fast, without training): run identity, class counts, failures, tables, plots."""

import csv
import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext.data import toy
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.mp3s import suite
from speechbrain_ext.mp3s.brain import check_run_identity, encoder_digest, manifests_digest

NAMES = {recipe.task: recipe.name for recipe in suite.RECIPES}


def identity(digest="a" * 64, fold=1, task="IEMOCAP ER", head="linear", profile="paper"):
    return {"task": task, "head": head, "profile": profile, "encoder_digest": digest, "fold": fold, "encoder": "/enc"}


def test_a_run_folder_refuses_another_encoder_fold_profile_or_data(tmp_path):
    check_run_identity(tmp_path, identity())
    check_run_identity(tmp_path, identity())  # the same run resumes
    with pytest.raises(ValueError, match=r"encoder_digest: 'a+' there, 'b+' now.*another --output_folder"):
        check_run_identity(tmp_path, identity(digest="b" * 64))
    with pytest.raises(ValueError, match="fold: 1 there, 3 now"):
        check_run_identity(tmp_path, identity(fold=3))
    with pytest.raises(ValueError, match="profile: 'paper' there, 'mp3s' now"):
        check_run_identity(tmp_path, identity(profile="mp3s"))
    # The data's digest joins the identity once the manifests are written, and is then checked too.
    train = tmp_path / "train.csv"
    train.write_text("ID,duration,wav,emo\nu1,1.0,/a/u1.wav,hap\nu2,2.0,/a/u2.wav,sad\n")
    digest = manifests_digest([train])
    check_run_identity(tmp_path, {"data_digest": digest})
    train.write_text("ID,duration,wav,emo\nu1,1.0,/moved/u1.wav,hap\nu2,2.0,/moved/u2.wav,sad\n")
    assert manifests_digest([train]) == digest  # the same data on another disk
    check_run_identity(tmp_path, {"data_digest": manifests_digest([train])})
    train.write_text("ID,duration,wav,emo\nu1,1.0,/a/u1.wav,hap\nu3,2.0,/a/u3.wav,sad\n")
    with pytest.raises(ValueError, match=f"data_digest: '{digest}' there, '[0-9a-f]+' now"):
        check_run_identity(tmp_path, {"data_digest": manifests_digest([train])})
    assert json.loads((tmp_path / "run_identity.json").read_text()) == {**identity(), "data_digest": digest}


def test_encoder_digest_follows_the_weights(tmp_path):
    a = SpeechEncoder("fastformer", num_layers=1, d_model=16, d_ffn=32, nhead=2).save_pretrained(tmp_path / "a")
    b = SpeechEncoder("fastformer", num_layers=1, d_model=16, d_ffn=32, nhead=2).save_pretrained(tmp_path / "b")
    assert encoder_digest(a) == encoder_digest(a) != encoder_digest(b)


@pytest.mark.parametrize("task", ["VoxCeleb1", "SLURP"])
def test_class_count_of_a_partial_corpus_comes_from_its_training_data(task, tmp_path, caplog):
    """Loading a recipe's YAML prepares the data and sizes the head by the classes of the training manifest."""
    if task == "VoxCeleb1":
        data = toy.write_toy_voxceleb1(tmp_path / "data", num_speakers=3, test_speakers=2, videos_per_speaker=2,
                                       utterances_per_video=2)
    else:
        data = toy.write_toy_slurp(tmp_path / "data", recordings_per_scenario=2, scenarios=("alarm", "music", "iot"))
    recipe = next(r for r in suite.RECIPES if r.task == task and r.head != "Xvectors")
    encoder = SpeechEncoder("fastformer", num_layers=1, d_model=16, d_ffn=32, nhead=2).save_pretrained(tmp_path / "e")
    overrides = {"ssl_folder": str(encoder), "data_folder": str(data), "output_folder": str(tmp_path / "out")}
    with caplog.at_level("WARNING"), open(recipe.hparams(), encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    assert hparams["num_classes"] == 3
    assert hparams["head"](torch.randn(2, 10, 16), torch.ones(2)).shape == (2, 3)
    assert f"the MP3S standard corpus {hparams['mp3s_num_classes']}" in caplog.text
    assert (tmp_path / "out" / "train.csv").is_file()


def fake_rows(task, head, encoder, value, fold=None):
    return [{"task": NAMES[task], "head": head, "profile": "paper", "test_set": "test", "metric": "accuracy",
             "value": value, "epochs": 2, "encoder": str(encoder), "mixer": "mamba", "fold": fold}]


def test_suite_records_a_failing_recipe_and_still_writes_every_table(tmp_path, monkeypatch):
    encoder = SpeechEncoder("fastformer", num_layers=1, d_model=16, d_ffn=32, nhead=2).save_pretrained(tmp_path / "e")

    def fake_run_recipe(recipe, enc, data_folder, output, extra, profile):
        if recipe.task == "SLURP":
            stderr = ("speechbrain.core - WARNING - a harmless warning\nTraceback (most recent call last):\n"
                      '  File "train.py", line 9, in <module>\nFileNotFoundError: SLURP file(s) not found in /x\n')
            raise suite.RecipeFailed("SLURP failed", suite.error_summary(stderr))
        fold = next(int(o.split("=")[1]) for o in extra if o.startswith("--test_spk_id="))
        output.mkdir(parents=True)
        (output / "layer_weights.json").write_text(json.dumps(
            {"task": "IEMOCAP ER", "head": recipe.head, "encoder": str(enc), "mixer": "mamba", "fold": fold,
             "layer_weights": [0.5, 0.3, 0.2]}))
        return fake_rows("IEMOCAP", recipe.head, enc, 0.5 + fold / 100, fold)

    monkeypatch.setattr(suite, "run_recipe", fake_run_recipe)
    rows = suite.run_suite([encoder], {"IEMOCAP": [("", "/iemocap")], "SLURP": [("", "/slurp")]}, tmp_path / "out",
                           [], folds=(1, 3))
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 2 and {row["head"] for row in failed} == {"linear", "LSTM_linear"}
    assert {row["task"] for row in failed} == {"SLURP IC"}  # the name in the recipe's YAML
    assert failed[0]["error"].endswith("FileNotFoundError: SLURP file(s) not found in /x")
    assert "harmless warning" not in failed[0]["error"]
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 6 and {row["fold"] for row in written if row["status"] == "ok"} == {"1", "3"}
    assert [row["status"] for row in written].count("failed") == 2
    wide = (tmp_path / "out" / "results_wide.md").read_text()
    assert "IEMOCAP ER linear accuracy (test)" in wide and "0.5200 ± 0.0141 (2 folds)" in wide
    with open(tmp_path / "out" / "results_wide.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["mixer"] == "mamba" and row["profile"] == "paper"
    assert math.isclose(float(row["IEMOCAP ER linear accuracy (test)"]), 0.52)
    plots = sorted(p.name for p in (tmp_path / "out" / "layer_weights").glob("*.png"))
    assert plots == [f"mamba-{encoder_digest(encoder)[:8]}-IEMOCAP_ER-{h}.png" for h in ("ecapa_tdnn", "linear")]
    # Each run has a folder of its own, named by the encoder's digest and the fold.
    assert {row["fold"] for row in rows if row["status"] == "ok"} == {1, 3}


def test_suite_never_shares_a_run_folder_between_encoders(tmp_path, monkeypatch):
    encoders = [SpeechEncoder("fastformer", num_layers=1, d_model=16, d_ffn=32, nhead=2).save_pretrained(tmp_path / n)
                for n in ("a", "b")]
    outputs = []

    def fake_run_recipe(recipe, enc, data_folder, output, extra, profile):
        outputs.append(output)
        return fake_rows("SLURP", recipe.head, enc, 0.7)

    monkeypatch.setattr(suite, "run_recipe", fake_run_recipe)
    suite.run_suite(encoders[:1], {"SLURP": [("", "/slurp")]}, tmp_path / "out", [])
    suite.run_suite(encoders[1:], {"SLURP": [("", "/slurp")]}, tmp_path / "out", [])
    suite.run_suite(encoders[1:], {"SLURP": [("", "/slurp")]}, tmp_path / "out", [], profile="mp3s")
    assert len(set(outputs)) == 6


def test_folds_option():
    assert suite._folds("1-3,7") == (1, 2, 3, 7)
    with pytest.raises(Exception, match="1-10"):
        suite._folds("0,11")


def test_set_overrides_one_key_of_one_task(tmp_path, monkeypatch):
    calls = {}

    def fake_run_suite(encoders, data, output, extra, quick=False, task_overrides=None, folds=(), profile="paper",
                       finetune=False):
        calls.update(data=data, extra=extra, task_overrides=task_overrides, folds=folds, profile=profile,
                     finetune=finetune)
        (output / "results_wide.md").parent.mkdir(parents=True, exist_ok=True)
        (output / "results_wide.md").write_text("")
        return []

    monkeypatch.setattr(suite, "run_suite", fake_run_suite)
    suite.main(["--encoder", str(tmp_path), "--iemocap", "/iemocap", "--slurp", "/slurp", "--epochs", "3",
                "--set", "SLURP.lr=0.01", "--set", "SLURP.batch_size=8", "--folds", "1-2", "--output", str(tmp_path)])
    assert calls["task_overrides"] == {"SLURP": ["--lr=0.01", "--batch_size=8"]}
    assert calls["extra"] == ["--number_of_epochs=3"] and calls["folds"] == (1, 2)
    assert calls["data"] == {"IEMOCAP": [("", "/iemocap")], "SLURP": [("", "/slurp")]}
    assert calls["profile"] == "paper"
    suite.main(["--encoder", str(tmp_path), "--commonvoice", "cy=/cv/cy", "--profile", "mp3s", "--output",
                str(tmp_path)])
    assert calls["profile"] == "mp3s" and calls["data"] == {"CommonVoice": [("cy", "/cv/cy")]}


@pytest.mark.parametrize("arguments, message", [
    (["--set", "SLURP.lr"], "--set expects TASK.KEY=VALUE"),
    (["--set", "Slurp.lr=0.5"], "no task 'Slurp'; the tasks are CTC, CommonVoice, IEMOCAP, LibriSpeech, SLURP, "
                                "VoxCeleb1"),
    (["--set", "SLURP.learning_rate=0.5"], "the SLURP YAMLs have no key 'learning_rate'; they have .*lr_weights"),
    (["--epochs", "0"], "must be a positive integer"),
    (["--epochs", "-3"], "must be a positive integer"),
    (["--commonvoice", "cy"], "--commonvoice expects LANG=folder"),
    (["--commonvoice", "x/../../..=/cv"], "LANG must be a language code"),
    (["--profile", "upstream"], "invalid choice: 'upstream'"),
])
def test_suite_refuses_bad_arguments_with_a_usage_message(arguments, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: pytest.fail("the suite ran"))
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--encoder", str(tmp_path), "--slurp", "/slurp", *arguments])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_every_recipe_of_the_suite_is_a_task_folder_with_its_head_yaml():
    for recipe in suite.RECIPES:
        assert recipe.train_py.is_file() and recipe.hparams().is_file() and recipe.hparams("mp3s").is_file()
        assert recipe.train_py.parent == recipe.hparams().parent.parent == suite.RECIPES_DIR / recipe.task
        assert recipe.hparams("mp3s").parent == recipe.hparams().parent / "mp3s"
        assert (recipe.train_py.parent / "README.md").is_file()
        text = recipe.train_py.read_text()
        assert re.search(r"^class \w+\(DownstreamBrain\):", text, flags=re.M) and "\ndef dataio_prepare(" in text
        for method in ("compute_forward", "compute_objectives", "on_stage_end"):
            assert f"    def {method}(self" in text, (recipe.task, method)
    heads = {path.parent.parent.name: [] for path in suite.RECIPES_DIR.glob("*/hparams/*.yaml")}
    for path in suite.RECIPES_DIR.glob("*/hparams/*.yaml"):
        heads[path.parent.parent.name].append(path.stem)
    assert sorted((task, head) for task, names in heads.items() for head in names) == sorted(
        (recipe.task, recipe.head) for recipe in suite.RECIPES)


def test_finetuning_runs_the_ctc_recipe_of_each_encoders_mixer_and_joins_the_tables(tmp_path, monkeypatch):
    encoder = SpeechEncoder("mamba", num_layers=1, d_model=24, d_ffn=32, nhead=1).save_pretrained(tmp_path / "e")
    commands = []

    def fake_subprocess_run(command, capture_output, text):
        commands.append(command)
        output = Path(next(arg for arg in command if arg.startswith("--output_folder=")).split("=", 1)[1])
        output.mkdir(parents=True)
        (output / "results.json").write_text(json.dumps([
            {"task": "LibriSpeech ASR", "head": "CTC fine-tuned", "test_set": test_set, "decoding": decoding,
             "metric": "WER", "value": value, "encoder": str(encoder), "mixer": "mamba"}
            for test_set, decoding, value in (("test-clean", "greedy", 9.0), ("test-clean", "beam_lm", 7.0),
                                              ("test-other", "greedy", 20.0))]))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(suite, "run_recipe", lambda *args, **kwargs: [])  # the MP3S heads: not this test
    monkeypatch.setattr(suite.subprocess, "run", fake_subprocess_run)
    rows = suite.run_suite([encoder], {"LibriSpeech": [("", "/ls")]}, tmp_path / "out", [], finetune=True,
                           task_overrides=suite.task_overrides_from(["CTC.kenlm_model_path=/lm/4-gram.arpa"]))
    (command,) = commands
    recipe = suite.FINETUNING_DIR
    assert command[1:3] == [str(recipe / "train.py"), str(recipe / "hparams" / "mamba.yaml")]
    assert {"--d_model=24", f"--encoder_folder={encoder}", "--data_folder=/ls",
            "--kenlm_model_path=/lm/4-gram.arpa"} <= set(command)
    assert {(row["test_set"], row["metric"], row["value"]) for row in rows} == {
        ("test-clean", "WER", 9.0), ("test-clean", "WER_beam_lm", 7.0), ("test-other", "WER", 20.0)}
    wide = (tmp_path / "out" / "results_wide.md").read_text()
    assert "LibriSpeech CTC fine-tuning CTC WER_beam_lm (test-clean)" in wide and "| 7.0000 |" in wide
