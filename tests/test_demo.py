"""The README's demo and the CPU mixer timing, run as a user runs them (slow)."""

import subprocess
import sys

import pytest

from speechbrain_ext.bench import cpu_mixers
from speechbrain_ext.demo import read_curve, text_curve


@pytest.mark.slow
def test_demo_runs_the_recipe_and_draws_the_curve(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "speechbrain_ext.demo", "--mixer", "fastformer", "--epochs", "1",
         "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fastformer:" in result.stdout and "final valid masked accuracy" in result.stdout
    png = tmp_path / "curve_fastformer.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps, epochs = read_curve(tmp_path / "fastformer" / "train_log.txt")
    assert len(steps) > 5 and len(epochs) == 1
    assert text_curve(steps).count("\n") >= 4
    assert (tmp_path / "fastformer" / "encoder" / "encoder.ckpt").is_file()


def test_cpu_mixer_timing_table(tmp_path):
    report = cpu_mixers.run([16], batch=1, d_model=32, nhead=4, repeats=1, output=tmp_path / "table.md")
    lines = report.splitlines()
    assert any(line.startswith("| mhsa | 88.88M | ") and "(1.00x)" in line for line in lines)
    assert sum(line.startswith("| ") for line in lines) == 1 + len(cpu_mixers.MIXERS)
    assert (tmp_path / "table.md").read_text() == report
