"""Every recipe is a SpeechBrain recipe: its train.py holds a Brain subclass with the three hooks and its
dataio_prepare, and its folder has a README."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FILES = sorted((ROOT / "recipes").rglob("train.py"))


def test_the_recipes_are_found():
    folders = {path.parent.relative_to(ROOT).as_posix() for path in TRAIN_FILES}
    assert "recipes/LibriSpeech/BEST-RQ" in folders
    tasks = ("LibriSpeech", "CommonVoice", "VoxCeleb1", "IEMOCAP", "SLURP")
    assert {f"recipes/MP3S/{task}" for task in tasks} <= folders


@pytest.mark.parametrize("train_py", TRAIN_FILES, ids=lambda path: path.parent.relative_to(ROOT).as_posix())
def test_train_py_holds_its_brain_and_data_pipeline(train_py):
    tree = ast.parse(train_py.read_text())
    brains = [node for node in tree.body if isinstance(node, ast.ClassDef)
              and any(ast.unparse(base).endswith("Brain") for base in node.bases)]
    assert brains, f"{train_py} defines no Brain subclass"
    methods = {item.name for brain in brains for item in brain.body if isinstance(item, ast.FunctionDef)}
    # a hook may come from a shared base class of the package; the recipe defines at least the forward pass
    assert "compute_forward" in methods and ("compute_objectives" in methods or "on_stage_end" in methods)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "dataio_prepare" in functions
    assert (train_py.parent / "README.md").is_file()
    for hparams in (train_py.parent / "hparams").rglob("*.yaml"):
        assert hparams.read_text().strip(), hparams
