"""Installs speechbrain_ext: BEST-RQ with linear-complexity sequence mixers for SpeechBrain.

``install_requires`` holds compatible ranges, so that the package installs beside other projects;
``requirements.txt`` pins the exact versions the results were produced with. The recipes
(``recipes/``) are copied into the package at build time (``speechbrain_ext/recipes``), so the demo
and the MP3S suite find them after a non-editable ``pip install .`` (a checkout or an editable
install reads them in place: :func:`speechbrain_ext.paths.recipes_dir`).
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

here = Path(__file__).parent


class BuildWithRecipes(build_py):
    """build_py that also ships ``recipes/`` (train.py and YAML files) inside the package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads recipes/ from the checkout
        source = here / "recipes"
        target = Path(self.build_lib) / "speechbrain_ext" / "recipes"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=lambda folder, names: [
            name for name in names
            if not (Path(folder, name).is_dir() or name.endswith((".py", ".yaml", ".md", ".txt", ".csv")))
            or name in ("__pycache__", "results")
        ])


setup(
    name="speechbrain_ext",
    version="0.1.0",
    description="BEST-RQ pretraining with linear-complexity attention substitutes for SpeechBrain",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["speechbrain_ext", "speechbrain_ext.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<3",  # nn.RMSNorm; torchaudio must match torch's version exactly (pip picks them together)
        "torchaudio>=2.4,<3",
        "speechbrain>=1.1.2,<1.2",  # we build on its Conformer modules and Pretrained interface
        "hyperpyyaml>=1.2.2",
        "pyyaml>=6",
        "numpy>=1.24",
        "sentencepiece>=0.2",
        "soundfile>=0.12",
    ],
    extras_require={
        # Plots of the demo, the bench and the MP3S suite (skipped with a warning without it).
        "plot": ["matplotlib>=3.8"],
        # use_tensorboard=True in the BEST-RQ recipes.
        "tensorboard": ["tensorboard>=2.15"],
        # The selective scan's fused CPU kernels (a Mamba training step on the CPU about 1.5x faster);
        # without it, PyTorch ops.
        "cpu": ["numba>=0.60"],
        # Compiles CUDA kernels from source: only on a CUDA machine.
        "mamba": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        # KenLM n-gram language models in the MP3S ASR beam search (SpeechBrain's scorer needs pygtrie).
        "lm": ["kenlm>=0.2", "pygtrie>=2.5"],
        # python -m speechbrain_ext.export --format onnx (torch.onnx.export(dynamo=True) needs onnxscript);
        # onnxruntime runs the exported model.
        "onnx": ["onnx>=1.18", "onnxscript>=0.5", "onnxruntime>=1.20"],
        # kenlm compiles from source (about 2 minutes on 2 cores): the LM decoding test runs rather than skips.
        "dev": ["pytest>=8", "ruff>=0.6", "matplotlib>=3.8", "tensorboard>=2.15", "kenlm>=0.2", "pygtrie>=2.5",
                "numba>=0.60", "onnx>=1.18", "onnxscript>=0.5", "onnxruntime>=1.20"],
    },
    cmdclass={"build_py": BuildWithRecipes},
)
