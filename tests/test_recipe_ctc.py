"""The LibriSpeech CTC fine-tuning recipe and the transcriber it exports, run as a user runs them on toy corpora
(slow: subprocesses)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_recipe_bestrq import kill_after_checkpoint, saved_step

from speechbrain_ext.data.toy import write_toy_librispeech
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.training import ResilientBrain

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "LibriSpeech" / "CTC"
TINY = [  # a tiny encoder and head: a few CPU steps per second
    "--d_model=32", "--dnn_neurons=64", "--num_workers=0", "--log_interval=1", "--lr=0.003",
    "--lr_encoder=0.001", "--batch_size=2", "--test_splits=[test-clean]", "--ckpt_interval_minutes=0",
]


def load_recipe():
    spec = importlib.util.spec_from_file_location("ctc_train", RECIPE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_librispeech(root, splits=("train-clean-100", "dev-clean", "test-clean"), speakers_per_split=2,
                          chapters_per_speaker=1, utterances_per_chapter=4, seed=3)
    return root


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    torch.manual_seed(0)
    encoder = SpeechEncoder("summarymixing", num_layers=1, d_model=32, d_ffn=64, nhead=4,
                            mixer_kwargs={"local_out": 32, "summary_out": 32})
    return encoder.save_pretrained(tmp_path_factory.mktemp("encoder"))


def command(encoder_folder, data_folder, output_folder, *extra, mixer="summarymixing"):
    """The recipe's command line: TINY settings, replaced or extended by ``extra`` ("--key=value")."""
    options = dict(arg.split("=", 1) for arg in TINY)
    options.update(arg.split("=", 1) for arg in extra)
    return [sys.executable, str(RECIPE / "train.py"), str(RECIPE / "hparams" / f"{mixer}.yaml"),
            f"--encoder_folder={encoder_folder}", f"--data_folder={data_folder}", f"--output_folder={output_folder}",
            *(f"{key}={value}" for key, value in options.items())]


def run(args, timeout=900):
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def logged_steps(train_log):
    """(optimizer step, loss) of every step line of train_log.txt."""
    return [(int(s), float(loss)) for s, loss in
            re.findall(r"^optimizer step: (\d+) - train loss: (\S+)$", train_log, re.M)]


def epoch_lines(train_log):
    return re.findall(r"^epoch: .*$", train_log, re.M)


def valid_cer(train_log):
    return [float(v) for v in re.findall(r"valid CER: ([^,\s]+)", train_log)]


def test_the_recipe_holds_its_brain_and_data_pipeline():
    recipe = load_recipe()
    assert issubclass(recipe.CTCFineTuneBrain, ResilientBrain)
    for method in ("compute_forward", "compute_objectives", "on_stage_end"):
        assert method in vars(recipe.CTCFineTuneBrain), method
    yamls = sorted(path.stem for path in (RECIPE / "hparams").glob("*.yaml"))
    assert yamls == ["fastformer", "hypermixing", "mamba", "mhsa", "summarymixing"]
    for name in yamls:
        header = (RECIPE / "hparams" / f"{name}.yaml").read_text().split("\n\n")[0]
        assert "finetune/ft_brq" in header and f"mixer: {name}" in (RECIPE / "hparams" / f"{name}.yaml").read_text()


@pytest.mark.parametrize(("mixer", "extra", "named"), [
    ("fastformer", [], "mixer 'summarymixing' (the YAML: 'fastformer')"),
    ("summarymixing", ["--d_model=632"], "d_model 32 (the YAML: 632)"),
])
def test_a_mismatched_encoder_folder_is_one_clear_error_before_any_data_work(tiny_encoder, tmp_path, mixer, extra,
                                                                             named):
    out = tmp_path / "out"
    args = command(tiny_encoder, tmp_path / "no-corpus", out, *extra, mixer=mixer)[2:]
    with pytest.raises(ValueError, match="does not match the YAML") as error:
        load_recipe().main(args)
    assert named in str(error.value) and str(tiny_encoder) in str(error.value)
    # Building the YAML's objects creates the save folder (SpeechBrain's Checkpointer); nothing else is written.
    assert not out.exists() or [p.name for p in out.rglob("*")] == ["save"]


def test_a_language_model_without_kenlm_says_what_to_install(tiny_encoder, tmp_path, monkeypatch):
    lm = tmp_path / "4-gram.arpa"
    lm.write_text("\\data\\\n")
    monkeypatch.setitem(sys.modules, "kenlm", None)  # as if the [lm] extra were not installed
    args = command(tiny_encoder, tmp_path / "no-corpus", tmp_path / "out", f"--kenlm_model_path={lm}")[2:]
    with pytest.raises(ImportError, match=r"needs KenLM .*pip install 'speechbrain_ext\[lm\]'"):
        load_recipe().main(args)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_recipe().check_language_model(str(tmp_path / "missing.arpa"))


@pytest.mark.slow
def test_kill_9_mid_epoch_then_rerun_logs_the_losses_of_a_run_never_killed(corpus, tiny_encoder, tmp_path):
    """Augmentation, dropout and both optimizers resume exactly: step by step and epoch by epoch, the resumed
    run logs what the uninterrupted one logs."""
    settings = ["--number_of_epochs=3", "--ckpt_interval_steps=2", "--seed=11"]
    reference = tmp_path / "reference"
    run(command(tiny_encoder, corpus, reference, *settings))
    uninterrupted = (reference / "train_log.txt").read_text()
    steps_per_epoch = int(epoch_lines(uninterrupted)[0].split("optimizer step: ")[1].split(",")[0])
    assert steps_per_epoch == 4  # 8 training utterances, batches of 2

    out = tmp_path / "out"
    kill_after_checkpoint(command(tiny_encoder, corpus, out, *settings, "--optimizer_step_limit=1000"),
                          out / "save", steps_per_epoch + 2)
    step_at_kill = saved_step(out / "save")
    assert steps_per_epoch < step_at_kill < 2 * steps_per_epoch, step_at_kill  # inside epoch 2
    run(command(tiny_encoder, corpus, out, *settings))
    train_log = (out / "train_log.txt").read_text()
    resumed = re.search(r"resumed at optimizer step: (\d+)", train_log)
    assert resumed and int(resumed.group(1)) == step_at_kill
    after = train_log.split(resumed.group(0))[1]
    assert logged_steps(after) == logged_steps(uninterrupted)[step_at_kill:]
    assert epoch_lines(after) == epoch_lines(uninterrupted)[1:]
    assert re.findall(r"^Epoch loaded.*$", after, re.M) == re.findall(r"^Epoch loaded.*$", uninterrupted, re.M)

