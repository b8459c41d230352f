"""The README's snippets of "In another SpeechBrain project" (and the streaming one of
docs/streaming_and_export.md) run as written, and its layout is the tree."""

import re
from pathlib import Path

import numpy as np
import soundfile as sf
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext.models.speech_encoder import SpeechEncoder

README = Path(__file__).resolve().parents[1] / "README.md"
STREAMING_DOC = README.parent / "docs" / "streaming_and_export.md"


def section_blocks(language):
    text = README.read_text()
    section = text.split("## In another SpeechBrain project", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_the_section_shows_three_routes_and_the_inference_class():
    code = "\n".join(section_blocks("python"))
    for name in ("build_mixer", "MixerConformerEncoder", "replace_encoder", "replace_attention", "MixerEncoder"):
        assert name in code
    assert len(section_blocks("python")) == 4 and len(section_blocks("yaml")) == 1


def run_snippet(index):
    namespace = {}
    exec(compile(section_blocks("python")[index], f"README snippet {index}", "exec"), namespace)
    return namespace


def test_mixer_snippet_runs():
    namespace = run_snippet(0)
    assert namespace["out"].shape == (4, 100, 256)
    assert namespace["streaming"].causal


def test_encoder_snippet_runs():
    namespace = run_snippet(1)
    assert namespace["out"].shape == (2, 50, 256) and len(namespace["hidden"]) == 13
    assert type(namespace["asr"].encoder).__name__ == "MixerConformerEncoder"
    paper = namespace["paper"]
    assert (paper.d_model, len(paper.encoder.layers), paper.config["layerdrop_prob"]) == (474, 12, 0.05)
    assert namespace["frames"].shape == (2, 26, 474)


def test_replace_attention_snippet_runs():
    layers = run_snippet(2)["asr"].encoder.layers
    assert len(layers) == 12 and all(type(layer.mha_layer).__name__ == "SummaryMixing" for layer in layers)


def test_inference_snippet_runs(tmp_path, monkeypatch):
    folder = tmp_path / "runs" / "summarymixing" / "encoder"
    SpeechEncoder("summarymixing", num_layers=8, d_model=32, d_ffn=64, nhead=4).save_pretrained(folder)
    sf.write(tmp_path / "speech.flac", (0.1 * np.random.default_rng(0).standard_normal(24000)).astype("float32"),
             48000)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(section_blocks("python")[3], "README inference snippet", "exec"), namespace)
    assert namespace["layer6"].shape == namespace["last"].shape == (1, 13, 32)
    assert namespace["every"].shape == (9, 2, 51, 32)


def test_streaming_snippet_runs(tmp_path, monkeypatch):
    folder = tmp_path / "runs" / "summarymixing" / "encoder"
    SpeechEncoder("summarymixing", num_layers=2, d_model=32, d_ffn=64, nhead=4).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    (snippet,) = re.findall(r"```python\n(.*?)```", STREAMING_DOC.read_text(), flags=re.S)
    exec(compile(snippet, "docs/streaming_and_export.md snippet", "exec"), namespace)
    assert namespace["streamed"].shape == namespace["chunked"].shape == (1, 100, 256)
    assert (namespace["streamed"] - namespace["chunked"]).abs().max() < 1e-4
    assert namespace["rest"].shape[1] >= 1


def test_yaml_snippet_builds():
    hparams = load_hyperpyyaml(section_blocks("yaml")[0])
    layers = hparams["asr"].encoder.layers
    assert len(layers) == 2 and type(layers[0].mha_layer).__name__ == "SummaryMixing"


def test_layout_section_names_what_is_in_the_tree():
    """Every path the Layout section names exists, and every package module and recipe folder is named."""
    root = README.parent
    layout = README.read_text().split("## Layout", 1)[1]
    block = re.findall(r"```\n(.*?)```", layout, flags=re.S)[0]
    package = root / "speechbrain_ext"
    for path in sorted(package.iterdir()):
        if path.name.startswith("_") or path.suffix not in ("", ".py") or path.name == "recipes":
            continue
        assert path.stem in block, f"{path.name} is not in the README's layout"
    for folder in ("docs", "benchmarks", "tests", "recipes/LibriSpeech/BEST-RQ", "recipes/MP3S", "examples"):
        assert (root / folder).is_dir() and folder.split("/")[0] in block
    for doc in re.findall(r"(\w+\.md)", block.split("docs/", 1)[1].splitlines()[0]):
        assert (root / "docs" / doc).is_file(), doc
