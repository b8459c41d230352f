"""Bad sizes refused when the model is built; padding that holds anything never reaches valid frames; casts."""

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import SMALL_MIXER_KWARGS

from speechbrain_ext.bestrq.model import BestRQ
from speechbrain_ext.mixers import MIXERS
from speechbrain_ext.models.encoder import MixerConformerEncoder
from speechbrain_ext.models.speech_encoder import SpeechEncoder

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "LibriSpeech" / "BEST-RQ"
SMALL = {"num_layers": 1, "d_model": 32, "d_ffn": 64, "nhead": 4}


@pytest.mark.parametrize(("option", "value", "message"), [
    ("d_model", 0, "d_model must be a positive integer, got 0"),
    ("num_layers", -1, "num_layers must be a positive integer, got -1"),
    ("num_layers", 0, "num_layers must be a positive integer, got 0"),
    ("d_ffn", 0, "d_ffn must be a positive integer, got 0"),
    ("nhead", 0, "nhead must be a positive integer, got 0"),
    ("kernel_size", 4, "kernel_size must be odd"),
    ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
])
def test_each_bad_encoder_size_is_one_clear_error(option, value, message):
    with pytest.raises(ValueError, match=message):
        SpeechEncoder("fastformer", **{**SMALL, option: value})


@pytest.mark.parametrize(("mixer", "kwargs", "message"), [
    ("mamba", {"d_state": 0}, "mamba: d_state must be a positive integer"),
    ("mamba", {"expand": 0}, "mamba: expand must be a positive integer"),
    ("hypermixing", {"hypernet_size": 0}, "hypermixing: hypernet_size must be a positive integer"),
])
def test_bad_mixer_sizes_are_refused(mixer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeechEncoder(mixer, **SMALL, mixer_kwargs=kwargs)


@pytest.mark.parametrize(("option", "value"), [("cb_vocab", 0), ("cb_dim", 0), ("num_codebooks", 0),
                                               ("mask_prob", 0.0), ("noise_std", -1.0)])
def test_bad_bestrq_settings_are_refused(option, value):
    with pytest.raises(ValueError, match=option):
        BestRQ(SpeechEncoder("fastformer", **SMALL), **{option: value})


def recipe_main():
    spec = importlib.util.spec_from_file_location("bestrq_train", RECIPE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(("override", "message"), [
    ("--conv_kernel_size=4", "kernel_size must be odd"),
    ("--num_encoder_layers=-1", "num_layers must be a positive integer"),
    ("--seconds_per_batch=0", "seconds_per_batch must be a positive number, got 0"),
    ("--num_buckets=0", "num_buckets must be a positive integer"),
])
def test_the_recipe_refuses_bad_sizes_before_any_data_work(override, message, tmp_path):
    out = tmp_path / "out"
    small = {"--d_model": "32", "--num_encoder_layers": "1", "--d_ffn": "64", "--nhead": "4", "--cb_vocab": "16"}
    small.update([override.split("=")])
    with pytest.raises(ValueError, match=message):
        recipe_main()([str(RECIPE / "hparams" / "base" / "fastformer.yaml"), f"--data_folder={tmp_path / 'none'}",
                       f"--output_folder={out}", *(f"{key}={value}" for key, value in small.items())])
    # Nothing prepared, nothing written (building the YAML's checkpointer makes its empty folder).
    assert not [path for path in out.rglob("*") if path.is_file()]


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("fill", [float("inf"), float("-inf"), float("nan"), 1e30])
def test_nothing_in_padding_reaches_valid_frames(name, fill):
    encoder = MixerConformerEncoder(2, 32, 64, 4, mixer=name, kernel_size=5,
                                    mixer_kwargs=SMALL_MIXER_KWARGS[name]).eval()
    x = torch.randn(2, 20, 32)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[1, 12:] = True
    clean, _ = encoder(x.masked_fill(mask.unsqueeze(-1), 0.0), src_key_padding_mask=mask)
    dirty, _ = encoder(x.masked_fill(mask.unsqueeze(-1), fill), src_key_padding_mask=mask)
    assert torch.isfinite(dirty[~mask]).all()
    torch.testing.assert_close(dirty[~mask], clean[~mask])


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_mixer_encoder_runs_after_a_cast(name, dtype):
    encoder = MixerConformerEncoder(2, 32, 64, 4, mixer=name, kernel_size=5,
                                    mixer_kwargs=SMALL_MIXER_KWARGS[name]).eval()
    x = torch.randn(2, 20, 32)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[1, 12:] = True
    reference, _ = encoder(x, src_key_padding_mask=mask)
    out, _ = encoder.to(dtype)(x.to(dtype), src_key_padding_mask=mask)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # Outputs are layer-normed (unit scale): half precision stays within a few hundredths.
    assert (out.float() - reference)[~mask].abs().mean() < 0.05


@pytest.mark.parametrize("fill", [float("inf"), float("-inf"), float("nan"), 1e30])
def test_nothing_in_waveform_padding_reaches_valid_frames(fill):
    """Garbage beyond ``wav_lens`` in the waveform changes no valid fbank frame and no valid encoder frame."""
    torch.manual_seed(0)
    encoder = SpeechEncoder("fastformer", **SMALL).eval()
    wavs = 0.1 * torch.randn(2, 16000)
    wav_lens = torch.tensor([1.0, 0.55])
    wavs[1, 8800:] = 0.0
    dirty_wavs = wavs.clone()
    dirty_wavs[1, 8800:] = fill
    with torch.no_grad():
        clean_feats, lengths = encoder.features(wavs, wav_lens)
        dirty_feats, dirty_lengths = encoder.features(dirty_wavs, wav_lens)
        assert torch.equal(lengths, dirty_lengths)
        assert torch.isfinite(dirty_feats).all()
        torch.testing.assert_close(dirty_feats, clean_feats)
        clean, dirty = encoder(wavs, wav_lens), encoder(dirty_wavs, wav_lens)
    valid = ~clean.padding_mask
    assert torch.isfinite(dirty.out[valid]).all()
    torch.testing.assert_close(dirty.out[valid], clean.out[valid])
