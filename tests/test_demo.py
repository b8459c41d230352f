"""The README's demo and the CPU mixer timing, run as a user runs them (slow)."""

import pytest
from conftest import DEMO_EPOCHS

from speechbrain_ext.bench import cpu_mixers
from speechbrain_ext.demo import read_curve, text_curve


@pytest.mark.slow
def test_demo_runs_the_recipe_and_draws_the_curve(demo_run):
    output, stdout = demo_run
    assert "summarymixing:" in stdout and "final valid masked accuracy" in stdout
    assert (output / "curve_summarymixing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps, epochs = read_curve(output / "summarymixing" / "train_log.txt")
    assert len(steps) > 20 and len(epochs) == DEMO_EPOCHS
    assert text_curve(steps).count("\n") >= 4
    assert epochs[-1][1] < epochs[0][1] - 0.3  # validation loss goes down
    _, _, accuracy, majority_share = epochs[-1]
    # It learns what a model without context cannot: the masked accuracy is well above always
    # predicting the most frequent target code (19% against 14% in this run on the development machine).
    assert 0.05 < majority_share < 0.5 and accuracy > 1.15 * majority_share, epochs[-1]
    assert "(always predicting the most frequent code: " in stdout
    assert (output / "summarymixing" / "encoder" / "encoder.ckpt").is_file()


def test_cpu_mixer_timing_table(tmp_path):
    report = cpu_mixers.run([16], batch=1, d_model=32, nhead=4, repeats=1, output=tmp_path / "table.md")
    lines = report.splitlines()
    assert any(line.startswith("| mhsa | 88.88M | ") and "(1.00x)" in line for line in lines)
    assert sum(line.startswith("| ") for line in lines) == 1 + len(cpu_mixers.MIXERS)
    assert (tmp_path / "table.md").read_text() == report

