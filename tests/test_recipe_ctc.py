"""The LibriSpeech CTC fine-tuning recipe and the transcriber it exports, run as a user runs them on toy corpora
(slow: subprocesses)."""

import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from test_recipe_bestrq import kill_after_checkpoint, saved_step

from speechbrain_ext.data.audio import read_audio_resampled
from speechbrain_ext.data.toy import write_toy_librispeech
from speechbrain_ext.inference import MixerASR
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



@pytest.mark.slow
def test_the_options_weighted_layers_layerwise_rates_frozen_cnn_and_encoder_warmup(corpus, tiny_encoder, tmp_path):
    out = tmp_path / "out"
    run(command(tiny_encoder, corpus, out, "--number_of_epochs=1", "--layer_output=weighted", "--freeze_cnn=True",
                "--layerwise_lr_decay=0.5", "--freeze_encoder_steps=2", "--beam_search_without_lm=True"))
    checkpoint = next((out / "save").glob("CKPT+*"))
    pretrained = torch.load(tiny_encoder / "encoder.ckpt", weights_only=True)
    tuned = torch.load(checkpoint / "encoder.ckpt", weights_only=True)
    assert all(torch.equal(tuned[key], value) for key, value in pretrained.items() if key.startswith("front_end."))
    assert not torch.equal(tuned["projection.weight"], pretrained["projection.weight"])
    optimizer = torch.load(checkpoint / "encoder_optimizer.ckpt", weights_only=True)
    groups = optimizer["param_groups"]
    assert [group["lr_scale"] for group in groups] == [0.5, 1.0]  # the projection below the one block
    assert [group["lr"] for group in groups] == pytest.approx([0.0005, 0.001])
    # 4 optimizer steps (8 utterances in batches of 2), the encoder's from step 3 on
    assert {int(state["step"]) for state in optimizer["state"].values()} == {2}
    assert (out / "hypotheses_test-clean_beam.csv").is_file()
    assert (out / "transcriber" / "layer_weights.ckpt").is_file()
    asr = MixerASR.from_hparams(source=str(out / "transcriber"))
    assert asr.mods.layer_weights.weights.shape == (2,)
    texts, _ = asr.transcribe_batch(torch.randn(2, 16000), torch.tensor([1.0, 0.7]))
    assert len(texts) == 2

# Fine-tuning the demo's encoder at the paper's settings but a toy-size head, rates a few hundred steps need, and
# no augmentation (on the toy corpus it slows learning several times over).
TOY_FINETUNING = ["--d_model=96", "--dnn_neurons=256", "--num_workers=0", "--log_interval=1000", "--lr=0.003",
                  "--lr_encoder=0.001", "--ckpt_interval_minutes=0", "--dev_splits=[dev-clean]",
                  "--test_splits=[dev-clean]", "--seed=5", "--augment=False", "--batch_size=2",
                  "--number_of_epochs=4"]


# Learning 3 utterances by heart (validated and tested on them), for the transcriber's test.
MEMORIZE = ["--d_model=96", "--dnn_neurons=256", "--lr=0.003", "--lr_encoder=0.001", "--batch_size=3",
            "--augment=False", "--dev_splits=[train-clean-100]", "--test_splits=[test-clean]",
            "--number_of_epochs=60", "--log_interval=1000"]


def held_out_sentences(root, speakers, utterances):
    """A toy corpus whose dev-clean holds the last sentence of every chapter of train-clean-100 (the same
    speakers: a few dozen utterances are too few for a recognizer of new voices)."""
    import shutil

    librispeech = write_toy_librispeech(root, splits=("train-clean-100",), speakers_per_split=speakers,
                                        chapters_per_speaker=2, utterances_per_chapter=utterances, seed=1986)
    for chapter in sorted((librispeech / "train-clean-100").glob("*/*")):
        transcript = chapter / f"{chapter.parent.name}-{chapter.name}.trans.txt"
        lines = transcript.read_text().splitlines()
        dev = librispeech / "dev-clean" / chapter.parent.name / chapter.name
        dev.mkdir(parents=True)
        shutil.move(chapter / f"{lines[-1].split()[0]}.flac", dev)
        (dev / transcript.name).write_text(lines[-1] + "\n")
        transcript.write_text("\n".join(lines[:-1]) + "\n")
    return root


@pytest.fixture(scope="module")
def finetuned(demo_run, tmp_path_factory):
    """The recipe on the demo's encoder as pretrained, kept frozen, and re-initialised (with its normalisation
    statistics), side by side: {name: (output folder, wall seconds)}."""
    import time

    demo, _ = demo_run
    pretrained = demo / "summarymixing" / "encoder"
    folders = tmp_path_factory.mktemp("finetuned")
    data = held_out_sentences(folders / "data", speakers=8, utterances=6)  # 80 training, 16 dev utterances
    loaded = SpeechEncoder.from_pretrained(pretrained)
    torch.manual_seed(0)
    fresh = SpeechEncoder(**loaded.config)
    state = fresh.state_dict()
    state.update({key: value for key, value in loaded.state_dict().items() if key.startswith("normalize.")})
    fresh.load_state_dict(state)
    fresh.save_pretrained(folders / "untrained_encoder")
    runs = {"finetuned": (pretrained, []), "frozen": (pretrained, ["--freeze_encoder_steps=1000000"]),
            "untrained": (folders / "untrained_encoder", [])}
    processes = {}
    for name, (encoder, extra) in runs.items():
        args = [sys.executable, str(RECIPE / "train.py"), str(RECIPE / "hparams" / "summarymixing.yaml"),
                f"--encoder_folder={encoder}", f"--data_folder={data}", f"--output_folder={folders / name}",
                *TOY_FINETUNING, *extra]
        processes[name] = (subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                           time.perf_counter())
    results = {}
    for name, (process, start) in processes.items():
        output, _ = process.communicate(timeout=1800)
        assert process.returncode == 0, output[-3000:]
        results[name] = (folders / name, time.perf_counter() - start)
    return results


def valid_losses(train_log):
    return [float(v) for v in re.findall(r"valid loss: ([^,\s]+)", train_log)]


@pytest.mark.slow
def test_finetuning_the_demo_encoder_lowers_the_dev_loss_below_a_frozen_and_an_untrained_encoder(finetuned):
    """160 steps on 80 toy utterances: the dev CTC loss of the fine-tuned encoder falls every epoch and ends well
    below the frozen one's and the re-initialised one's. The dev CER stays at 100% for all three (blank outputs):
    on the toy corpus characters are read from about 200 steps on 144 utterances, and a few hundred steps on 240
    give the fine-tuned encoder 6% CER against 60% frozen and 100% re-initialised (recipe README)."""
    losses = {name: valid_losses((folder / "train_log.txt").read_text()) for name, (folder, _) in finetuned.items()}
    print(losses, {name: f"{seconds:.0f} s" for name, (_, seconds) in finetuned.items()})
    assert all(len(values) == 4 for values in losses.values())
    tuned = losses["finetuned"]
    assert all(later < earlier for earlier, later in zip(tuned, tuned[1:])), tuned
    assert tuned[-1] < losses["frozen"][-1] - 0.05
    assert tuned[-1] < losses["untrained"][-1] - 0.08
    assert min(losses["untrained"]) > 2.9  # a re-initialised encoder has not left the all-blank plateau


@pytest.fixture(scope="module")
def memorized(demo_run, tmp_path_factory):
    """The recipe after it learned 3 short utterances by heart (validated on them), tested on their 16 kHz mono
    versions of 44.1 kHz stereo files: (output folder, {utterance: stereo file}). Its transcripts are not empty."""
    folder = tmp_path_factory.mktemp("memorized")
    librispeech = write_toy_librispeech(folder / "data", splits=("train-clean-100",), speakers_per_split=1,
                                        chapters_per_speaker=1, utterances_per_chapter=3, seed=3, max_words=4)
    stereo = {}
    for original in sorted((librispeech / "train-clean-100").rglob("*.flac")):
        mono, rate = sf.read(original, dtype="float32")
        high = torchaudio.functional.resample(torch.from_numpy(mono), rate, 44100).numpy()
        side = 0.05 * np.sin(np.arange(high.size) / 7.0).astype("float32")  # cancels in the channel average
        stereo[original.stem] = folder / f"{original.stem}.wav"
        sf.write(stereo[original.stem], np.stack([high + side, high - side], axis=1), 44100, subtype="FLOAT")
        # The 16 kHz mono version, as any tool makes it (here: the package's reader), is what the recipe tests.
        version = librispeech / "test-clean" / original.relative_to(librispeech / "train-clean-100")
        version.parent.mkdir(parents=True, exist_ok=True)
        sf.write(version, read_audio_resampled(str(stereo[original.stem]), 16000).numpy(), 16000, subtype="PCM_24")
    for transcript in (librispeech / "train-clean-100").rglob("*.trans.txt"):
        (librispeech / "test-clean" / transcript.relative_to(librispeech / "train-clean-100")).write_text(
            transcript.read_text())
    run(command(demo_run[0] / "summarymixing" / "encoder", folder / "data", folder / "out", *MEMORIZE))
    return folder / "out", stereo


@pytest.mark.slow
def test_the_transcriber_reads_44k_stereo_files_as_the_recipe_decodes_16k_mono(memorized, tmp_path, monkeypatch):
    folder, stereo = memorized
    with open(folder / "hypotheses_test-clean_greedy.csv", newline="", encoding="utf-8") as handle:
        decoded = {row["ID"]: row["hypothesis"] for row in csv.DictReader(handle)}
    with open(folder / "test-clean.csv", newline="", encoding="utf-8") as handle:
        audio = {row["ID"]: row["wav"] for row in csv.DictReader(handle)}
    assert sorted(decoded) == sorted(stereo) and all(decoded.values()), decoded
    card = (folder / "transcriber" / "README.md").read_text()
    wer = json.loads((folder / "results.json").read_text())[0]
    assert wer["metric"] == "WER" and f"| test-clean | greedy | {wer['value']:.2f} |" in card

    monkeypatch.chdir(tmp_path)  # the weights come from the folder, never the working directory
    in_place = MixerASR.from_hparams(source=str(folder / "transcriber"))
    copied = MixerASR.from_hparams(source=str(folder / "transcriber"), savedir=str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "head.ckpt").is_file() and not (tmp_path / "head.ckpt").exists()
    for utterance, text in decoded.items():
        assert in_place.transcribe_file(stereo[utterance]) == text
        assert copied.transcribe_file(stereo[utterance]) == text
        assert in_place.transcribe_file(audio[utterance]) == text  # the recipe decoded it in a padded batch
    texts, _ = in_place.transcribe_batch(*batch_of([audio[utterance] for utterance in decoded]))
    assert texts == list(decoded.values())


def batch_of(paths):
    """Padded waveforms (B, S) and relative lengths (B,) of 16 kHz files."""
    signals = [torch.from_numpy(sf.read(path, dtype="float32")[0]) for path in paths]
    longest = max(len(signal) for signal in signals)
    wavs = torch.stack([torch.nn.functional.pad(signal, (0, longest - len(signal))) for signal in signals])
    return wavs, torch.tensor([len(signal) / longest for signal in signals])
