"""Global input normalisation as the paper's code runs it (issue 9, item 6).

Reference: SpeechBrain's ``InputNormalization(norm_type="global", update_until_epoch=4)`` as on
whettenr/speechbrain-fork (``speechbrain/processing/features.py``): per-utterance mean and
(unbiased) std over ``round(length * T)`` frames, averaged over the batch, folded into running
averages with weight 1 / (batches + 1), the first batch setting them; no update from the epoch
``update_until_epoch`` on.
"""

import math

import pytest
import torch

from speechbrain_ext.bestrq.model import BestRQ
from speechbrain_ext.checkpoints import AtomicCheckpointer
from speechbrain_ext.models.normalization import GlobalNormalization
from speechbrain_ext.models.speech_encoder import SpeechEncoder


def reference_statistics(batches, update_until_epoch):
    """The fork's running statistics after ``batches``: a list of (x, relative lengths, epoch)."""
    mean = std = None
    for count, (x, lengths, epoch) in enumerate(batches):
        means, stds = [], []
        for row, length in zip(x, lengths):
            frames = row[: int(torch.round(length * x.shape[1]))]
            means.append(frames.mean(dim=0))
            stds.append(frames.std(dim=0).clamp(min=1e-10))
        batch_mean, batch_std = torch.stack(means).mean(dim=0), torch.stack(stds).mean(dim=0)
        if count == 0:
            mean, std = batch_mean, batch_std
        elif epoch < update_until_epoch:
            weight = 1 / (count + 1)
            mean = (1 - weight) * mean + weight * batch_mean
            std = (1 - weight) * std + weight * batch_std
    return mean, std


def test_matches_the_forks_running_statistics_and_stops_at_its_epoch():
    torch.manual_seed(0)
    norm = GlobalNormalization(5, update_until_epoch=3).train()
    batches = []
    for epoch in (1, 1, 2, 2, 3, 3, 4):
        x = torch.randn(3, 40, 5) * torch.rand(5) * 4 + torch.randn(5)
        lengths = torch.tensor([1.0, 0.7, 0.35])
        batches.append((x, lengths, epoch))
        norm.set_epoch(epoch)
        before = norm.mean.clone()
        out = norm(x, lengths)
        if epoch >= 3:
            assert torch.equal(norm.mean, before)  # statistics frozen from epoch 3 on
        torch.testing.assert_close(out, (x - norm.mean) / norm.std)
    mean, std = reference_statistics(batches, update_until_epoch=3)
    torch.testing.assert_close(norm.mean, mean)
    torch.testing.assert_close(norm.std, std)
    assert int(norm.count) == 4  # the batches of epochs 1 and 2: frozen statistics are left untouched


def test_a_frozen_normaliser_in_training_mode_changes_nothing_even_without_statistics():
    """Downstream (MP3S's paper profile keeps the encoder in training mode) the statistics are frozen with
    ``set_epoch(math.inf)``: no batch changes them or their count, not even the first one of a fresh model."""
    norm = GlobalNormalization(5).train()
    norm.set_epoch(math.inf)
    state = {name: value.clone() for name, value in norm.state_dict().items()}
    norm(torch.randn(2, 30, 5) * 3 + 1, torch.tensor([1.0, 0.5]))
    assert all(torch.equal(norm.state_dict()[name], value) for name, value in state.items())


def test_no_update_in_eval_mode():
    norm = GlobalNormalization(4)
    norm(torch.randn(2, 10, 4), torch.ones(2))
    mean = norm.mean.clone()
    norm.eval()(torch.randn(2, 10, 4) + 5, torch.ones(2))
    assert torch.equal(norm.mean, mean)


def small_model(normalization="global"):
    encoder = SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4, normalization=normalization)
    return BestRQ(encoder, cb_vocab=64, quantizer_seed=0)


def test_statistics_survive_a_checkpoint_and_resume(tmp_path):
    """Saved by the recipe's checkpointer with the model; a fresh process recovers them."""
    torch.manual_seed(0)
    model = small_model().train()
    model.set_epoch(1)
    for _ in range(3):
        model(torch.randn(2, 8000), torch.tensor([1.0, 0.6]))
    AtomicCheckpointer(tmp_path, recoverables={"model": model}).save_checkpoint()
    resumed = small_model()
    AtomicCheckpointer(tmp_path, recoverables={"model": resumed}).recover_if_possible()
    saved, restored = model.speech_encoder.normalize, resumed.speech_encoder.normalize
    for name in ("mean", "std", "count"):
        assert torch.equal(getattr(restored, name), getattr(saved, name))
    assert int(resumed.speech_encoder.normalize.count) == 3


def test_exported_encoder_gives_identical_features(tmp_path):
    torch.manual_seed(0)
    model = small_model().train()
    model.set_epoch(1)
    model(torch.randn(2, 8000) * 3, torch.tensor([1.0, 0.5]))
    encoder = model.speech_encoder.eval()
    encoder.save_pretrained(tmp_path)
    loaded = SpeechEncoder.from_pretrained(tmp_path)
    wavs, lengths = torch.randn(2, 12000), torch.tensor([1.0, 0.75])
    with torch.no_grad():
        expected, _ = encoder.features(wavs, lengths)
        got, _ = loaded.features(wavs, lengths)
        torch.testing.assert_close(got, expected)
        # In training mode downstream, the pretraining statistics still do not move.
        loaded.train().features(wavs * 10, lengths)
    assert loaded.normalize.epoch == math.inf
    torch.testing.assert_close(loaded.normalize.mean, encoder.normalize.mean)


def test_sentence_normalisation_is_an_option():
    assert SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4).config["normalization"] == "global"
    encoder = SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4, normalization="sentence")
    assert encoder.config["normalization"] == "sentence"
    assert not any("normalize" in key for key in encoder.state_dict())
    with pytest.raises(ValueError, match="unknown normalization 'batch'"):
        SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4, normalization="batch")


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), -float("inf")])
def test_statistics_never_take_in_a_non_finite_value(fill, caplog):
    torch.manual_seed(0)
    norm = GlobalNormalization(4).train()
    norm.set_epoch(1)
    norm(torch.randn(2, 10, 4), torch.ones(2))
    mean, std = norm.mean.clone(), norm.std.clone()
    poisoned = torch.randn(2, 10, 4)
    poisoned[1, 3, 2] = fill
    with caplog.at_level("WARNING"):
        norm(poisoned, torch.ones(2))
    assert torch.equal(norm.mean, mean) and torch.equal(norm.std, std) and int(norm.count) == 1
    assert "statistics update is skipped" in caplog.text
    # The first batch too: the statistics are never set from a poisoned one.
    fresh = GlobalNormalization(4).train()
    fresh(poisoned, torch.ones(2))
    assert int(fresh.count) == 0 and torch.equal(fresh.mean, torch.zeros(4)) and torch.equal(fresh.std, torch.ones(4))


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e30])
def test_padded_frames_never_reach_the_statistics(fill):
    x = torch.randn(2, 10, 4)
    lengths = torch.tensor([1.0, 0.6])
    clean, dirty = GlobalNormalization(4).train(), GlobalNormalization(4).train()
    clean(x, lengths)
    garbage = x.clone()
    garbage[1, 6:] = fill
    dirty(garbage, lengths)
    torch.testing.assert_close(dirty.mean, clean.mean)
    torch.testing.assert_close(dirty.std, clean.std)


def test_a_poisoned_waveform_leaves_the_models_statistics_finite():
    torch.manual_seed(0)
    model = small_model().train()
    model.set_epoch(1)
    model(torch.randn(2, 8000), torch.tensor([1.0, 0.6]))
    wavs = torch.randn(2, 8000)
    wavs[0, 100] = float("nan")
    model(wavs, torch.tensor([1.0, 0.6]))
    normalize = model.speech_encoder.normalize
    assert torch.isfinite(normalize.mean).all() and torch.isfinite(normalize.std).all() and int(normalize.count) == 1
