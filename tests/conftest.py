"""Shared test helpers: small mixer configurations and a recorder of the largest tensor."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from speechbrain_ext.mixers import MIXERS, build_mixer

# Small but complete configurations of every registered mixer (width 32, 4 heads).
SMALL_MIXER_KWARGS = {
    "mhsa": {},
    "mhsa_flash": {},
    "hypermixing": {"hypernet_size": 64},
    "fastformer": {},
    "summarymixing": {"local_hidden": 24, "local_out": 24, "summary_hidden": 24},
    "mamba": {"d_state": 8},
}
# Mixers whose memory grows linearly with length: the linear ones and SDPA attention.
LINEAR_MEMORY_MIXERS = [name for name in MIXERS if name != "mhsa"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_mixer(name: str, d_model: int = 32, nhead: int = 4):
    """An eval-mode mixer of the registry with a small configuration."""
    return build_mixer(name, d_model, nhead, **SMALL_MIXER_KWARGS[name]).eval()


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.numel() > self.numel:
                self.numel, self.op = tensor.numel(), str(func)
        return out


def write_bad_audio(directory, prefix: str) -> dict:
    """Writes one file per kind of bad audio into ``directory``: {path: expected reason}."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    noise = 0.1 * rng.standard_normal(32000).astype(np.float32)
    paths = {reason: str(directory / f"{prefix}-{100 + i:04d}.flac") for i, reason in enumerate(BAD_AUDIO)}
    open(paths["empty"], "wb").close()
    with open(paths["unreadable"], "wb") as handle:
        handle.write(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    sf.write(paths["too_short"], noise[:1600], 16000, format="FLAC")  # 0.1 s
    sf.write(paths["wrong_sample_rate"], noise[:16000], 8000, format="FLAC")
    sf.write(paths["not_mono"], np.stack([noise, noise], axis=1), 16000, format="FLAC")
    return {path: reason for reason, path in paths.items()}


BAD_AUDIO = ("empty", "unreadable", "too_short", "wrong_sample_rate", "not_mono")


# Epochs of the demo run the slow tests share: enough for the masked accuracy to clear the share of the
# most frequent target code (it does from about epoch 5 on; benchmarks/results/demo/curve_summarymixing.png).
DEMO_EPOCHS = 12


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README's demo, run once as a user runs it: BEST-RQ on the toy corpus (summarymixing).

    Its exported encoder is the pretrained encoder of the MP3S tests.
    """
    import subprocess
    import sys

    output = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "speechbrain_ext.demo", "--mixer", "summarymixing", "--epochs", str(DEMO_EPOCHS),
         "--output", str(output)],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result.stdout


def read_skipped(path) -> dict:
    """{file: reason} of a preparation's list of skipped files (a comment line, then tab-separated rows)."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#")
    return {line.split("\t")[0]: line.split("\t")[1] for line in lines[1:]}


def must_not_run(what: str):
    """A stand-in for a function a rerun must not call: the test fails with ``what`` if it does."""

    def fail(*args, **kwargs):
        raise AssertionError(what)

    return fail


def read_csv(path):
    """Header and rows (dicts) of a CSV manifest."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


@pytest.fixture
def corpus(pristine, tmp_path):
    """A writable copy of the test module's ``pristine`` corpus, for tests that damage or extend it."""
    import shutil

    root = tmp_path / pristine.name
    shutil.copytree(pristine, root)
    return root


def kill_when(args: list[str], ready, what: str = "the point to kill it at") -> None:
    """Runs ``args`` and kills its process group (SIGKILL, as a crash or an OOM killer would) once ``ready()``."""
    import os
    import signal
    import subprocess
    import time

    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not ready():
            assert process.poll() is None, f"the run ended before {what}"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
