"""The README's demo and the CPU mixer timing, run as a user runs them (slow)."""

from collections import Counter

import pytest
import soundfile
import torch

from speechbrain_ext.bench import cpu_mixers
from speechbrain_ext.bestrq import RandomProjectionQuantizer, SpeechEncoder
from speechbrain_ext.demo import DEMO_SETTINGS, read_curve, run_demo, text_curve
from speechbrain_ext.mixers import MIXERS


@pytest.mark.slow
def test_demo_runs_the_recipe_and_draws_the_curve(demo_run):
    output, stdout = demo_run
    assert "summarymixing:" in stdout and "final valid masked accuracy" in stdout
    assert (output / "curve_summarymixing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps, epochs = read_curve(output / "summarymixing" / "train_log.txt")
    assert len(steps) > 20 and len(epochs) == 4
    assert text_curve(steps).count("\n") >= 4
    assert epochs[-1][1] < epochs[0][1]  # validation loss goes down
    assert epochs[-1][2] > 20 / 512  # masked accuracy far above chance (1/512 codes in the demo)
    assert (output / "summarymixing" / "encoder" / "encoder.ckpt").is_file()


def test_cpu_mixer_timing_table(tmp_path):
    report = cpu_mixers.run([16], batch=1, d_model=32, nhead=4, repeats=1, output=tmp_path / "table.md")
    lines = report.splitlines()
    assert any(line.startswith("| mhsa | 88.88M | ") and "(1.00x)" in line for line in lines)
    assert sum(line.startswith("| ") for line in lines) == 1 + len(cpu_mixers.MIXERS)
    assert (tmp_path / "table.md").read_text() == report


def most_frequent_code_share(encoder_folder, data_folder, seed):
    """Share of the dev-clean encoder frames whose target is the most frequent code: the accuracy of
    always predicting it. Targets as the recipe makes them: the exported encoder's features
    (its global statistics) through the quantizer the YAML seeds with ``seed``."""
    encoder = SpeechEncoder.from_pretrained(encoder_folder).eval()
    span = encoder.frames_per_token
    quantizer = RandomProjectionQuantizer(encoder.n_mels * span, 16, int(DEMO_SETTINGS["--cb_vocab"]), seed=seed)
    counts = Counter()
    with torch.no_grad():
        for path in sorted((data_folder / "LibriSpeech" / "dev-clean").rglob("*.flac")):
            audio, _ = soundfile.read(path, dtype="float32")
            feats, lengths = encoder.features(torch.from_numpy(audio).unsqueeze(0), torch.ones(1))
            tokens = int(lengths[0]) // span
            targets = quantizer(feats[:, : tokens * span].reshape(1, tokens, span * encoder.n_mels))
            counts.update(targets.flatten().tolist())
    return max(counts.values()) / sum(counts.values())


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "open (issue 9): on the toy corpus the most frequent code is ~15% of the targets; mhsa with the paper's "
    "settings reaches 13.6% after 3 epochs and 15.8% after 6 (one mask per batch), 19.7% after 6 with "
    "per_utterance_mask=True, 20% after 3 with the pre-issue-9 settings: not yet 2x"))
@pytest.mark.parametrize("mixer", list(MIXERS))
def test_demo_learns_with_every_mixer(mixer, tmp_path_factory):
    """Issue 9: with the paper's settings, every mixer's masked accuracy ends well above the share
    of the most frequent target code (the accuracy of always predicting it)."""
    output = tmp_path_factory.getbasetemp() / "demo_every_mixer"  # one toy corpus for all mixers
    summary = run_demo(mixer, epochs=3, output=output, seed=1986)
    share = most_frequent_code_share(summary["encoder"], output / "data", seed=1986)
    assert summary["valid_accuracy"] > 2 * share, (summary["valid_accuracy"], share)
