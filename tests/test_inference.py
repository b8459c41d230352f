"""Exported encoder folders are SpeechBrain pretrained models: from_hparams, encode_file, model card."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from speechbrain_ext.inference import MixerEncoder
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.mp3s.frozen_encoder import FrozenEncoder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    encoder = SpeechEncoder("summarymixing", num_layers=2, d_model=32, d_ffn=64, nhead=4,
                            mixer_kwargs={"local_out": 32, "summary_out": 32})
    folder = tmp_path_factory.mktemp("encoder")
    encoder.save_pretrained(folder, card={"optimizer_steps": 1234, "hours": 1.5, "masked_accuracy": 0.25,
                                          "command": "python train.py hparams/base/summarymixing.yaml"})
    return folder


def speech_like(seconds=2.0, rate=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((180, 360, 720, 1500, 3000)))
    return (0.2 * tone * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)).astype("float32")


def test_encode_file_of_44k_stereo_matches_frozen_encoder_on_16k_mono(exported, tmp_path):
    mono = speech_like()
    sf.write(tmp_path / "mono16k.wav", mono, 16000, subtype="FLOAT")
    high = torchaudio.functional.resample(torch.from_numpy(mono), 16000, 44100).numpy()
    side = 0.05 * np.sin(np.arange(high.size) / 7.0).astype("float32")  # cancels in the channel average
    sf.write(tmp_path / "stereo44k.wav", np.stack([high + side, high - side], axis=1), 44100, subtype="FLOAT")

    encoder = MixerEncoder.from_hparams(source=str(exported))
    frozen = FrozenEncoder.from_pretrained(exported)
    with torch.no_grad():
        expected, _ = frozen(torch.from_numpy(mono).unsqueeze(0), torch.ones(1))  # (L, 1, T, E)
    got = encoder.encode_file(tmp_path / "stereo44k.wav", output="all")
    assert got.shape == expected.shape
    # Resampling there and back is not exact at the band edge: close, not equal.
    assert (got - expected).abs().mean() < 0.05 * expected.abs().mean()
    torch.testing.assert_close(encoder.encode_file(tmp_path / "mono16k.wav", output="all"), expected,
                               atol=1e-5, rtol=1e-4)


def test_outputs_one_layer_weighted_sum_and_last(exported):
    encoder = MixerEncoder.from_hparams(source=str(exported))
    wavs = torch.from_numpy(np.stack([speech_like(seed=1), speech_like(seed=2)]))
    lens = torch.tensor([1.0, 0.6])
    every = encoder.encode_batch(wavs, lens, output="all")
    assert every.shape[0] == encoder.num_layers == 3
    torch.testing.assert_close(encoder.encode_batch(wavs, lens, output=1), every[1])
    weights = torch.tensor([0.0, 1.0, -1.0])
    expected = (every * weights.softmax(0).view(-1, 1, 1, 1)).sum(0)
    torch.testing.assert_close(encoder.encode_batch(wavs, lens, output="weighted", layer_weights=weights), expected)
    last = encoder.encode_batch(wavs, lens)
    torch.testing.assert_close(last, encoder.mods.encoder.encoder.norm(every[-1]))
    with pytest.raises(ValueError, match="layer 3 does not exist"):
        encoder.encode_batch(wavs, lens, output=3)
    with pytest.raises(ValueError, match="layer_weights of shape"):
        encoder.encode_batch(wavs, lens, output="weighted")


def test_weights_load_strictly_and_weights_only(exported, tmp_path, monkeypatch):
    calls = []
    original = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    MixerEncoder.from_hparams(source=str(exported))
    assert calls == [True]
    monkeypatch.undo()
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in exported.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    state = torch.load(broken / "encoder.ckpt", weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, broken / "encoder.ckpt")
    with pytest.raises(RuntimeError, match="Missing key"):
        MixerEncoder.from_hparams(source=str(broken))


def test_from_hparams_reads_the_folder_in_place(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    MixerEncoder.from_hparams(source=str(exported))
    assert not (tmp_path / "pretrained_models").exists()
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "encoder.ckpt", "encoder_config.json",
                                                           "hyperparams.yaml"]


def test_model_card(exported):
    card = (exported / "README.md").read_text()
    for text in ("summarymixing", "| layers | 2 |", "| d_model | 32 |", "| optimizer steps | 1234 |",
                 "| hours of training audio (one epoch) | 1.5 |", "final masked accuracy (validation) | 0.25 |",
                 "`python train.py hparams/base/summarymixing.yaml`", "- speechbrain ", "- torch ",
                 "MixerEncoder.from_hparams"):
        assert text in card, text
    params = sum(p.numel() for p in SpeechEncoder.from_pretrained(exported).parameters())
    assert f"| parameters | {params:,}" in card


def test_weights_come_from_the_loaded_folder_never_the_working_directory(exported, tmp_path, monkeypatch):
    """A folder without weights is refused even when the working directory holds an encoder.ckpt, and a folder
    loaded with another ``savedir`` from another working directory gives the same encoder."""
    monkeypatch.chdir(tmp_path)
    other = SpeechEncoder("fastformer", num_layers=2, d_model=32, d_ffn=64, nhead=4)
    torch.save(other.state_dict(), tmp_path / "encoder.ckpt")
    without_weights = tmp_path / "without_weights"
    without_weights.mkdir()
    for name in ("hyperparams.yaml", "encoder_config.json", "README.md"):
        (without_weights / name).write_bytes((exported / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="missing encoder.ckpt"):
        MixerEncoder.from_hparams(source=str(without_weights))

    in_place = MixerEncoder.from_hparams(source=str(exported))
    copied = MixerEncoder.from_hparams(source=str(exported), savedir=str(tmp_path / "saved"))
    wavs = torch.randn(1, 16000)
    torch.testing.assert_close(copied.encode_batch(wavs), in_place.encode_batch(wavs))
    assert (tmp_path / "saved" / "encoder.ckpt").exists()


@pytest.mark.parametrize("key,value", [("activation", "gelu"), ("sample_rate", 8000)])
def test_disagreeing_settings_files_are_refused_by_both_loaders(exported, tmp_path, key, value):
    folder = tmp_path / "edited"
    folder.mkdir()
    for item in exported.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "encoder_config.json").read_text())
    config[key] = value
    (folder / "encoder_config.json").write_text(json.dumps(config))
    for load in (lambda: MixerEncoder.from_hparams(source=str(folder)), lambda: SpeechEncoder.from_pretrained(folder)):
        with pytest.raises(ValueError, match=f"describe different encoders \\({key}: "):
            load()


@pytest.mark.parametrize(("fill", "words"), [(float("nan"), "non-finite"), (float("inf"), "non-finite"),
                                             (1e30, "absurd")])
def test_encode_file_refuses_poisoned_samples_naming_the_file(exported, tmp_path, fill, words):
    signal = speech_like()
    signal[12345] = fill
    path = tmp_path / "poisoned.wav"
    sf.write(path, signal, 16000, subtype="FLOAT")
    encoder = MixerEncoder.from_hparams(source=str(exported))
    with pytest.raises(ValueError, match=f"{path}: {words} samples"):
        encoder.encode_file(path)
