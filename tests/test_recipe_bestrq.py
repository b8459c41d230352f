"""The LibriSpeech BEST-RQ recipe: its parts, then runs as a user runs it, on a toy corpus (slow: subprocesses)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import kill_when, write_bad_audio

from speechbrain_ext.data.librispeech import prepare_librispeech
from speechbrain_ext.data.toy import write_toy_librispeech
from speechbrain_ext.mixers import MIXERS
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.training import ResilientBrain, optimizer_state_digest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "LibriSpeech" / "BEST-RQ"
TINY = [  # a model small enough for a few CPU steps per test
    "--d_model=32", "--num_encoder_layers=1", "--d_ffn=64", "--nhead=4", "--cb_vocab=64",
    "--precision=fp32", "--num_workers=0", "--seconds_per_batch=12", "--num_buckets=2",
    "--grad_accumulation_factor=1", "--avoid_if_shorter_than=1.0", "--log_interval=1",
    "--warmup_steps=10", "--lr=0.003", "--train_splits=[train-clean-100]", "--valid_splits=[dev-clean]",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_librispeech(root, splits=("train-clean-100", "dev-clean"), speakers_per_split=2,
                          chapters_per_speaker=2, utterances_per_chapter=3, seed=3)
    return root


def load_recipe():
    spec = importlib.util.spec_from_file_location("bestrq_train", RECIPE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recipe_holds_its_brain_and_data_pipeline():
    recipe = load_recipe()
    assert issubclass(recipe.BestRQBrain, ResilientBrain)
    for method in ("compute_forward", "compute_objectives", "on_stage_end"):
        assert method in vars(recipe.BestRQBrain), method
    assert callable(recipe.dataio_prepare) and callable(recipe.main)
    assert (RECIPE / "README.md").is_file()


def test_dataio_prepare_gives_the_audio_of_the_splits_and_leaves_out_short_files(tmp_path):
    root = write_toy_librispeech(tmp_path / "data", speakers_per_split=1, chapters_per_speaker=1,
                                 utterances_per_chapter=4, seed=5)
    out = tmp_path / "out"
    prepare_librispeech(root, out, splits=("train-clean-100", "dev-clean"))
    durations = sorted(float(line.split(",")[1]) for line in (out / "dev-clean.csv").read_text().splitlines()[1:])
    hparams = {"output_folder": str(out), "sample_rate": 16000, "train_splits": ["train-clean-100"],
               "valid_splits": ["dev-clean"], "avoid_if_shorter_than": (durations[0] + durations[1]) / 2,
               "avoid_if_longer_than": 60.0, "check_decoding": False}
    train, valid = load_recipe().dataio_prepare(hparams)
    assert len(train) >= 1 and len(valid) == 3  # the shortest validation file is left out, and listed
    assert (out / "skipped_audio.txt").read_text().count("\n") >= 1
    assert [valid.data[valid[i]["id"]]["duration"] for i in range(3)] == durations[1:]  # sorted by duration
    assert valid[0]["sig"].dim() == 1


def command(mixer, data_folder, output_folder, *extra, launcher=(sys.executable,)):
    """The recipe's command line: TINY settings, replaced or extended by ``extra`` ("--key=value")."""
    options = dict(arg.split("=", 1) for arg in TINY)
    options.update(arg.split("=", 1) for arg in extra)
    return [*launcher, str(RECIPE / "train.py"), str(RECIPE / "hparams" / "base" / f"{mixer}.yaml"),
            f"--data_folder={data_folder}", f"--output_folder={output_folder}",
            *(f"{key}={value}" for key, value in options.items())]


def run(args, timeout=600):
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def logged_steps(train_log):
    """(optimizer step, loss, masked accuracy) of every step line of train_log.txt."""
    pattern = r"^optimizer step: (\d+), lr: \S+ - train loss: (\S+), train masked_accuracy: (\S+)$"
    return [(int(s), float(loss), float(acc)) for s, loss, acc in re.findall(pattern, train_log, re.M)]


@pytest.mark.slow
@pytest.mark.parametrize("mixer", list(MIXERS))
def test_recipe_end_to_end_for_every_mixer(mixer, corpus, tmp_path):
    out = tmp_path / "out"
    run(command(mixer, corpus, out, "--number_of_epochs=1", "--optimizer_step_limit=4"))
    train_log = (out / "train_log.txt").read_text()
    steps = logged_steps(train_log)
    assert [s for s, _, _ in steps] == [1, 2, 3, 4]
    assert "valid loss" in train_log and "valid masked_accuracy" in train_log
    encoder = SpeechEncoder.from_pretrained(out / "encoder")
    assert encoder.config["mixer"] == mixer and encoder.config["d_model"] == 32
    assert encoder(torch.randn(1, 16000), torch.ones(1)).out.shape == (1, 26, 32)  # 101 fbank frames / 4


@pytest.mark.slow
def test_short_run_lowers_the_loss_and_logs_codebook_health(corpus, tmp_path):
    out = tmp_path / "out"
    run(command("summarymixing", corpus, out, "--number_of_epochs=3", "--seed=7", "--d_model=64",
                "--num_encoder_layers=2", "--d_ffn=128", "--cb_vocab=512"))
    train_log = (out / "train_log.txt").read_text()
    losses = [loss for _, loss, _ in logged_steps(train_log)]
    assert sum(losses[-10:]) / 10 < 0.85 * sum(losses[:5]) / 5
    valid_losses = [float(v) for v in re.findall(r"valid loss: ([^,\s]+)", train_log)]
    assert len(valid_losses) == 3 and valid_losses[-1] < valid_losses[0]
    # Beating the most frequent code takes more epochs (tests/test_demo.py); here the accuracy and the bar of a
    # model that always predicts the most frequent code are logged side by side.
    accuracies = [float(v) for v in re.findall(r"valid masked_accuracy: ([^,\s]+)", train_log)]
    assert len(accuracies) == 3 and all(0.0 < accuracy <= 1.0 for accuracy in accuracies)
    shares = [float(v) for v in re.findall(r"valid majority_code_share: (\S+)$", train_log, re.M)]
    assert len(shares) == 3 and all(1 / 512 <= share <= 1.0 for share in shares)
    # codebook health: the toy targets spread over many codes, and the predictions are not one code
    usage = [float(v) for v in re.findall(r"valid codebook_usage: ([^,\s]+)", train_log)]
    target_entropy = [float(v) for v in re.findall(r"valid target_entropy: ([^,\s]+)", train_log)]
    prediction_entropy = [float(v) for v in re.findall(r"valid prediction_entropy: ([^,\s]+)", train_log)]
    assert len(usage) == len(target_entropy) == len(prediction_entropy) == 3
    assert all(0.1 < u <= 1.0 for u in usage) and all(3.0 < h <= 9.0 for h in target_entropy)
    assert all(0.0 <= h <= 9.0 for h in prediction_entropy)


def latest_checkpoint(save_folder):
    """The newest checkpoint folder, as SpeechBrain picks it (any ``CKPT+*`` folder holding a CKPT.yaml)."""
    checkpoints = [c for c in save_folder.glob("CKPT+*") if (c / "CKPT.yaml").is_file()]
    return max(checkpoints, key=lambda c: c.stat().st_mtime) if checkpoints else None


def saved_step(save_folder):
    """The optimizer step of the newest checkpoint, None while there is none (or it was just rotated away)."""
    checkpoint = latest_checkpoint(save_folder)
    try:
        return yaml.safe_load((checkpoint / "brain.ckpt").read_text())["optimizer_step"] if checkpoint else None
    except FileNotFoundError:
        return None


def kill_after_checkpoint(args, save_folder, step):
    """Runs ``args`` and kills it (SIGKILL) as soon as a checkpoint of ``step`` or later exists."""
    kill_when(args, lambda: (saved_step(save_folder) or 0) >= step, f"a checkpoint of step {step}")


def epoch_lines(train_log):
    return re.findall(r"^epoch: .*$", train_log, re.M)


@pytest.mark.slow
@pytest.mark.parametrize("kill_epoch", [2, 3])
def test_a_run_killed_mid_epoch_2_or_3_logs_the_losses_of_one_never_killed(kill_epoch, corpus, tmp_path):
    """Each epoch has an order of its own; a run killed right after a checkpoint in epoch 2 or 3 resumes that
    order and logs, step by step and epoch by epoch, what the uninterrupted run logs (to the end of epoch 3)."""
    args = command("fastformer", corpus, tmp_path / "out", "--number_of_epochs=3", "--ckpt_interval_minutes=0",
                   "--ckpt_interval_steps=2", "--seed=11")
    reference = tmp_path / "reference"
    run(command("fastformer", corpus, reference, "--number_of_epochs=3", "--ckpt_interval_minutes=0",
                "--ckpt_interval_steps=2", "--seed=11"))
    uninterrupted = (reference / "train_log.txt").read_text()
    steps_per_epoch = int(epoch_lines(uninterrupted)[0].split("optimizer step: ")[1].split(",")[0])
    assert steps_per_epoch >= 4

    out = tmp_path / "out"
    first_step = (kill_epoch - 1) * steps_per_epoch
    kill_after_checkpoint(args + ["--optimizer_step_limit=1000"], out / "save", first_step + 2)
    step_at_kill = saved_step(out / "save")
    assert first_step < step_at_kill < first_step + steps_per_epoch, step_at_kill  # inside that epoch
    run(args)
    train_log = (out / "train_log.txt").read_text()
    resumed = re.search(r"resumed at optimizer step: (\d+)", train_log)
    assert resumed and int(resumed.group(1)) == step_at_kill
    after = train_log.split(resumed.group(0))[1]
    assert logged_steps(after) == logged_steps(uninterrupted)[step_at_kill:]
    assert epoch_lines(after) == epoch_lines(uninterrupted)[kill_epoch - 1:]  # that epoch's averages, and on


@pytest.mark.slow
def test_a_rerun_after_a_kill_during_export_leaves_a_whole_encoder_and_no_pending_hyperparams(corpus, tmp_path):
    out = tmp_path / "out"
    args = command("hypermixing", corpus, out, "--number_of_epochs=1")
    run(args)
    card = (out / "encoder" / "README.md").read_text()
    assert "| final masked accuracy (validation) | unknown |" not in card
    # What a kill during export leaves: a half-written staging folder, the previous export set aside.
    (out / "encoder").rename(out / ".replaced-encoder")
    (out / ".incomplete-encoder").mkdir()
    (out / ".incomplete-encoder" / "encoder.ckpt").write_bytes(b"half")
    run(args)  # nothing left to train: it exports again
    assert not (out / "hyperparams.pending.yaml").exists()
    assert not (out / ".incomplete-encoder").exists() and not (out / ".replaced-encoder").exists()
    assert (out / "encoder" / "README.md").read_text() == card or "unknown |" not in (
        out / "encoder" / "README.md").read_text().split("final masked accuracy")[1].splitlines()[0]
    assert SpeechEncoder.from_pretrained(out / "encoder").config["mixer"] == "hypermixing"
    assert not (out / ".run.lock").exists()  # released at exit


@pytest.mark.parametrize(("option", "name"), [
    ("--warmup_steps=0", "warmup_steps"),
    ("--grad_accumulation_factor=0", "grad_accumulation_factor"),
    ("--lr=abc", "lr"),
    ("--optimizer_step_limit=-5", "optimizer_step_limit"),
])
def test_a_bad_option_is_refused_before_anything_runs(option, name, tmp_path):
    out = tmp_path / "out"
    args = command("fastformer", tmp_path / "no-corpus", out, "--number_of_epochs=1", option)[2:]
    with pytest.raises(ValueError, match=rf"^{name} must be a positive"):
        load_recipe().main(args)
    # Building the YAML's objects creates the save folder (SpeechBrain's Checkpointer); nothing else is written.
    assert not out.exists() or [p.name for p in out.rglob("*")] == ["save"]


@pytest.mark.slow
def test_kill_9_then_resume_continues_from_the_last_checkpoint_with_the_same_losses(corpus, tmp_path):
    out = tmp_path / "out"
    args = command("fastformer", corpus, out, "--number_of_epochs=50", "--ckpt_interval_minutes=0",
                   "--ckpt_interval_steps=3")
    kill_after_checkpoint(args + ["--optimizer_step_limit=1000"], out / "save", step=6)
    ckpt = latest_checkpoint(out / "save")
    step_at_kill = saved_step(out / "save")  # the checkpoint a resumed run picks is whole (AtomicCheckpointer)
    saved_digest = optimizer_state_digest(torch.load(ckpt / "optimizer.ckpt"))
    killed_at = max(s for s, _, _ in logged_steps((out / "train_log.txt").read_text()))
    assert killed_at >= step_at_kill >= 6

    run(args + [f"--optimizer_step_limit={step_at_kill + 4}"])
    train_log = (out / "train_log.txt").read_text()
    resumed = re.search(r"resumed at optimizer step: (\d+), optimizer state: (\S+)", train_log)
    assert resumed, train_log
    assert int(resumed.group(1)) == step_at_kill
    assert float(resumed.group(2)) == pytest.approx(saved_digest, rel=1e-6)
    after = logged_steps(train_log.split(resumed.group(0))[1])
    assert [s for s, _, _ in after] == list(range(step_at_kill + 1, step_at_kill + 5))
    assert (out / "encoder" / "encoder.ckpt").is_file()

    # The same run never interrupted: the resumed steps draw the same masks and noise, so log the same losses.
    reference = tmp_path / "reference"
    run(command("fastformer", corpus, reference, "--number_of_epochs=50", "--ckpt_interval_minutes=0",
                "--ckpt_interval_steps=3", f"--optimizer_step_limit={step_at_kill + 4}"))
    uninterrupted = logged_steps((reference / "train_log.txt").read_text())
    assert after == uninterrupted[step_at_kill:]
    assert logged_steps(train_log)[:step_at_kill] == uninterrupted[:step_at_kill]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(corpus, tmp_path):
    out = tmp_path / "out"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533")
    run(command("mamba", corpus, out, "--number_of_epochs=1", "--optimizer_step_limit=3",
                "--distributed_backend=gloo", launcher=launcher))
    train_log = (out / "train_log.txt").read_text()
    assert [s for s, _, _ in logged_steps(train_log)] == [1, 2, 3]
    assert (out / "encoder" / "encoder.ckpt").is_file()
    assert len(list((out / "save").glob("CKPT+*"))) == 1


@pytest.mark.slow
def test_bad_files_in_the_corpus_are_skipped_and_training_goes_on(corpus, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    chapter = sorted((data / "LibriSpeech" / "train-clean-100").glob("*/*"))[0]
    prefix = f"{chapter.parent.name}-{chapter.name}"
    bad = write_bad_audio(chapter, prefix)
    transcript = chapter / f"{prefix}.trans.txt"
    transcript.write_text(transcript.read_text() + "".join(f"{Path(p).stem} SOME WORDS\n" for p in bad))
    # Files whose header is fine but whose data is cut short: found only when decoded, in training and in
    # validation.
    truncated = []
    for split in ("train-clean-100", "dev-clean"):
        victim = sorted((data / "LibriSpeech" / split).glob("*/*/*.flac"))[1]
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
        truncated.append(victim)
    out = tmp_path / "out"
    result = run(command("hypermixing", data, out, "--number_of_epochs=1", "--use_tensorboard=True"))
    skipped = (out / "prepare_librispeech_skipped.txt").read_text()
    assert all(Path(path).name in skipped for path in bad)
    assert "skipped 5 file(s)" in result.stdout + result.stderr
    steps = [s for s, _, _ in logged_steps((out / "train_log.txt").read_text())]
    assert len(steps) >= 3 and steps == list(range(1, len(steps) + 1))  # the whole epoch
    assert "valid loss" in (out / "train_log.txt").read_text()  # validation met its broken file and went on
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    undecodable = (out / "audio_undecodable.tsv").read_text()
    assert all(str(path) in undecodable for path in truncated)
    # A rerun leaves them out before training, with the reason.
    rerun = run(command("hypermixing", data, out, "--number_of_epochs=2"))
    assert "could not decode" not in rerun.stdout + rerun.stderr
    assert sum(line.endswith("\tundecodable") or "\tundecodable\t" in line
               for line in (out / "skipped_audio.txt").read_text().splitlines()) >= 2
