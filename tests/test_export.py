"""torch.export and ONNX exports of the encoder equal eager for every mixer at lengths unseen at export; the CLI."""

import functools
import importlib.util
import json

import numpy as np
import pytest
import torch

from speechbrain_ext import export
from speechbrain_ext.export import ExportableEncoder, export_encoder, export_program, main, onnx_program
from speechbrain_ext.inference import MixerEncoder
from speechbrain_ext.models.speech_encoder import SpeechEncoder

EXPORTED_MIXERS = ["mhsa", "hypermixing", "fastformer", "summarymixing", "mamba"]
SMALL = {"num_layers": 2, "d_model": 32, "d_ffn": 64, "nhead": 4, "cnn_channels": (8, 8)}
SMALL_MIXER_KWARGS = {"hypermixing": {"hypernet_size": 64}, "mamba": {"d_state": 8},
                      "summarymixing": {"local_hidden": 24, "local_out": 24, "summary_hidden": 24}}
# Export traces a batch of two 1 s waveforms; these differ in batch size and length, with and without padding.
CASES = [([1.0, 0.8, 0.55], 12345), ([1.0], 23456)]


def waveforms(relative_lengths, samples, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(relative_lengths), samples, generator=generator), torch.tensor(relative_lengths)


@functools.cache
def exported(mixer):
    """A small encoder of ``mixer`` (eval mode) and its torch.export program, shared by the tests of a mixer."""
    torch.manual_seed(0)
    encoder = SpeechEncoder(mixer, mixer_kwargs=SMALL_MIXER_KWARGS.get(mixer), **SMALL).eval()
    return encoder, export_program(encoder)


def eager(encoder, wavs, lens, output="last"):
    with torch.no_grad():
        return ExportableEncoder(encoder, output).eval()(wavs, lens)


@pytest.mark.parametrize("mixer", EXPORTED_MIXERS)
def test_torch_export_equals_eager_at_unseen_lengths(mixer, tmp_path):
    encoder, program = exported(mixer)
    torch.export.save(program, tmp_path / "encoder.pt2")
    run = torch.export.load(tmp_path / "encoder.pt2").module()
    for relative_lengths, samples in CASES:
        wavs, lens = waveforms(relative_lengths, samples)
        expected_out, expected_lengths = eager(encoder, wavs, lens)
        out, lengths = run(wavs, lens)
        assert out.shape == expected_out.shape
        torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-4)
        assert lengths.tolist() == expected_lengths.tolist()
    if mixer == "mamba":  # the traced scan (one step repeated), not the chunked scan unrolled for one length
        assert any(node.target is torch.ops.higher_order.scan for node in program.graph.nodes)


@pytest.mark.slow
@pytest.mark.parametrize("mixer", EXPORTED_MIXERS)
def test_onnx_equals_eager_at_unseen_lengths(mixer, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    encoder, program = exported(mixer)
    path = tmp_path / "encoder.onnx"
    onnx_program(program).save(str(path))
    session = onnxruntime.InferenceSession(str(path))
    assert [value.name for value in session.get_inputs()] == ["wavs", "wav_lens"]
    for relative_lengths, samples in CASES:
        wavs, lens = waveforms(relative_lengths, samples, seed=1)
        expected_out, expected_lengths = eager(encoder, wavs, lens)
        out, lengths = session.run(None, {"wavs": wavs.numpy(), "wav_lens": lens.numpy()})
        np.testing.assert_allclose(out, expected_out.numpy(), atol=5e-4, rtol=1e-3)
        assert lengths.tolist() == expected_lengths.tolist()


def test_every_hidden_state_exports():
    encoder, _ = exported("fastformer")
    run = export_program(encoder, output="all").module()
    wavs, lens = waveforms([1.0, 0.7], 20000)
    expected = eager(encoder, wavs, lens, output="all")[0]
    out = run(wavs, lens)[0]
    assert out.shape == (SMALL["num_layers"] + 1, 2, expected.shape[2], SMALL["d_model"])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def demo_style_folder(tmp_path_factory):
    """An encoder folder of the demo's size (3 layers, d_model 96), written by ``save_pretrained``."""
    torch.manual_seed(0)
    encoder = SpeechEncoder.paper("base", "summarymixing", num_layers=3, d_model=96, d_ffn=256, nhead=4)
    return encoder.save_pretrained(tmp_path_factory.mktemp("runs") / "encoder")


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return exported("fastformer")[0].save_pretrained(tmp_path_factory.mktemp("small") / "encoder")


def check_export_runs(folder, out, fmt):
    """The export in ``out`` (its export.json and model) equals ``MixerEncoder`` on ``folder``."""
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == fmt and info["mixer"] == "summarymixing" and info["sample_rate"] == 16000
    assert [value["name"] for value in info["inputs"]] == ["wavs", "wav_lens"]
    assert [value["name"] for value in info["outputs"]] == ["out", "lengths"]
    assert info["frame_shift_ms"] == 40 and info["min_samples"] == 640  # two 40 ms encoder frames
    shortest = (torch.zeros(1, info["min_samples"]), torch.ones(1))
    reference = MixerEncoder.from_hparams(source=str(folder))
    wavs, lens = waveforms([0.6, 1.0], 30000, seed=2)
    expected = reference.encode_batch(wavs, lens)
    if fmt == "torch":
        run = torch.export.load(out / info["file"]).module()
        out_frames, lengths = run(wavs, lens)
        torch.testing.assert_close(out_frames, expected, atol=1e-5, rtol=1e-4)
        assert run(*shortest)[0].shape == (1, 2, 96)
        with pytest.raises(AssertionError, match="Guard failed"):
            run(torch.zeros(1, info["min_samples"] - 1), torch.ones(1))
    else:
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(str(out / info["file"]))
        assert session.get_outputs()[0].shape == ["batch", "frames", 96]
        out_frames, lengths = session.run(None, {"wavs": wavs.numpy(), "wav_lens": lens.numpy()})
        np.testing.assert_allclose(out_frames, expected.numpy(), atol=5e-4, rtol=1e-3)
        assert session.run(None, {"wavs": shortest[0].numpy(), "wav_lens": shortest[1].numpy()})[0].shape == (1, 2, 96)
    assert lengths.tolist() == eager(reference.mods.encoder, wavs, lens)[1].tolist()


@pytest.mark.parametrize("fmt", ["torch", pytest.param("onnx", marks=pytest.mark.slow)])
def test_cli_exports_a_demo_style_folder_and_the_result_runs(demo_style_folder, tmp_path, fmt):
    out = tmp_path / "exported"
    assert main([str(demo_style_folder), str(out), "--format", fmt]) == out
    assert sorted(path.name for path in out.iterdir()) == sorted(["export.json", export.FORMATS[fmt]])
    check_export_runs(demo_style_folder, out, fmt)


def test_a_failed_export_leaves_the_previous_folder_whole(small_folder, tmp_path, monkeypatch):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "previous.txt").write_text("kept")

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(export.torch.export, "save", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        export_encoder(small_folder, out)
    assert [path.name for path in out.iterdir()] == ["previous.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["exported"]  # no staging folder left


def test_clear_errors(demo_style_folder, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing"), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "missing is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an exported encoder: missing encoder_config.json"):
        export_encoder(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown format 'tflite'; valid: torch, onnx"):
        export_encoder(demo_style_folder, tmp_path / "out", format="tflite")
    with pytest.raises(SystemExit):
        main([str(demo_style_folder), str(tmp_path / "out"), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="would replace the encoder folder"):
        export_encoder(demo_style_folder, demo_style_folder.parent)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxscript" else real_find_spec(name, *args))
    with pytest.raises(ImportError, match=r"needs onnxscript .*pip install 'speechbrain_ext\[onnx\]'"):
        export_encoder(demo_style_folder, tmp_path / "out", format="onnx")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_demo_encoder_exports_to_onnx_and_runs(demo_run, tmp_path):
    output, _ = demo_run
    folder = next(output.rglob("encoder_config.json")).parent
    out = tmp_path / "exported"
    main([str(folder), str(out), "--format", "onnx"])
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(out / "encoder.onnx"))
    wavs, lens = waveforms([1.0, 0.5], 32000, seed=3)
    expected = MixerEncoder.from_hparams(source=str(folder)).encode_batch(wavs, lens)
    out_frames, _ = session.run(None, {"wavs": wavs.numpy(), "wav_lens": lens.numpy()})
    np.testing.assert_allclose(out_frames, expected.numpy(), atol=5e-4, rtol=1e-3)
