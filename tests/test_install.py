"""A non-editable install works away from the source tree (slow: builds a wheel, runs the demo)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def clean_copy(target: Path) -> Path:
    """The checkout's files as a fresh clone has them (tracked and new files, nothing git ignores)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


@pytest.mark.slow
def test_non_editable_install_runs_the_demo_from_another_folder(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy from")
    source = clean_copy(tmp_path / "clone")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # torch, speechbrain, ... from the environment running the tests (nothing downloaded again),
    # after the new environment's own site-packages, where speechbrain_ext is installed.
    Path(site, "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(source)],
                   check=True, env=env, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(source)  # nothing may be read from the source tree any more
    probe = ("import speechbrain_ext, speechbrain_ext.paths as p; "
             "from speechbrain_ext.data import prepare_librispeech; "
             "print(speechbrain_ext.__file__); print(p.recipes_dir())")
    out = subprocess.run([str(python), "-c", probe], check=True, env=env, cwd=elsewhere, capture_output=True,
                         text=True).stdout.split()
    assert out[0].startswith(site) and out[1].startswith(site)
    demo = subprocess.run([str(python), "-m", "speechbrain_ext.demo", "--epochs", "1", "--output", "demo"],
                          env=env, cwd=elsewhere, capture_output=True, text=True)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "final valid masked accuracy" in demo.stdout
    encoder = elsewhere / "demo" / "summarymixing" / "encoder"
    assert (encoder / "hyperparams.yaml").is_file() and (encoder / "README.md").is_file()
