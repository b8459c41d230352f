"""Installs speechbrain_ext: BEST-RQ with linear-complexity sequence mixers for SpeechBrain."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="speechbrain_ext",
    version="0.1.0",
    description="BEST-RQ pretraining with linear-complexity attention substitutes for SpeechBrain",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["speechbrain_ext", "speechbrain_ext.*"]),
    python_requires=">=3.10",
    install_requires=requirements,
    extras_require={
        # Compiles CUDA kernels from source: only on a CUDA machine.
        "mamba": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        # KenLM n-gram language models in the MP3S ASR beam search (SpeechBrain's scorer needs pygtrie).
        "lm": ["kenlm>=0.2", "pygtrie>=2.5"],
        "dev": ["pytest>=8", "ruff>=0.6", "tensorboard>=2.15"],
    },
)
