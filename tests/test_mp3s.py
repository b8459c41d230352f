"""MP3S: frozen encoder loading, layer weights, and every recipe end to end on toy corpora."""

import json

import pytest
import torch
from conftest import SMALL_MIXER_KWARGS, write_bad_audio

from speechbrain_ext.data import toy
from speechbrain_ext.mixers import MIXERS
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.mp3s.frozen_encoder import FrozenEncoder, WeightedEncoderFeatures, WeightedLayerSum
from speechbrain_ext.mp3s.suite import RECIPES, plot_comparison, run_recipe, write_tables


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_frozen_encoder_loads_every_mixer_and_stays_frozen(mixer, tmp_path):
    SpeechEncoder(mixer, num_layers=2, d_model=32, d_ffn=64, nhead=4,
                  mixer_kwargs=SMALL_MIXER_KWARGS[mixer]).save_pretrained(tmp_path)
    features = WeightedEncoderFeatures.from_pretrained(tmp_path)
    features.train()  # a parent in training mode must not unfreeze the encoder
    assert not features.encoder.encoder.training
    trainable = [name for name, p in features.named_parameters() if p.requires_grad]
    assert trainable == ["weighted.weights"]
    feats, lengths = features(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    feats.sum().backward()
    assert features.weighted.weights.grad is not None
    assert all(p.grad is None for p in features.encoder.parameters())
    assert feats.shape == (2, 26, 32) and lengths[0] == 1.0


def test_frozen_encoder_refuses_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported encoder"):
        FrozenEncoder.from_pretrained(tmp_path)


def test_weighted_layer_sum_starts_equal_and_checks_layers():
    weighted = WeightedLayerSum(4)
    assert weighted.layer_weights() == pytest.approx([0.25] * 4)
    hidden = torch.randn(4, 2, 5, 3)
    torch.testing.assert_close(weighted(hidden), hidden.mean(dim=0))
    assert WeightedLayerSum(4, layernorm=True)(hidden * 100).abs().max() < 10
    with pytest.raises(ValueError, match="4 weights but got 3 layers"):
        weighted(hidden[:3])


@pytest.fixture(scope="module")
def encoder(demo_run):
    """The encoder the demo pretrained: with a random encoder the toy emotions are not learnable."""
    return demo_run[0] / "summarymixing" / "encoder"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {
        "LibriSpeech": toy.write_toy_librispeech(
            root / "ls", splits=("train-clean-100", "dev-clean", "test-clean", "test-other"),
            speakers_per_split=1, chapters_per_speaker=1, utterances_per_chapter=4),
        "CommonVoice": toy.write_toy_commonvoice(root / "cv", clips_per_split=4),
        "VoxCeleb1": toy.write_toy_voxceleb1(root / "vox", num_speakers=4, test_speakers=3,
                                             videos_per_speaker=3, utterances_per_video=6),
        "IEMOCAP": toy.write_toy_iemocap(root / "iemocap", utterances_per_emotion_per_speaker=8),
        "SLURP": toy.write_toy_slurp(root / "slurp", recordings_per_scenario=8,
                                     scenarios=("alarm", "music", "weather", "email")),
    }


# Fast settings for toy runs; the classification heads get a higher rate to learn in a few epochs.
# VoxCeleb1 holds out a quarter of each training speaker's utterances (16 in all): with MP3S's 10 %
# the toy held-out set was one utterance per speaker, so its accuracy moved in steps of 0.25 and a
# single utterance decided between chance and a pass (the flaky VoxCeleb1 ECAPA run).
TOY = {
    "LibriSpeech": ["--number_of_epochs=1"],
    "CommonVoice": ["--number_of_epochs=1"],
    "VoxCeleb1": ["--number_of_epochs=8", "--lr=0.002", "--batch_size=8", "--valid_ratio=0.25"],
    "IEMOCAP": ["--number_of_epochs=8", "--batch_size=8"],
    "SLURP": ["--number_of_epochs=8", "--lr=0.01", "--batch_size=8"],
}
# Per head: the learning checks use our standardised pooling options where MP3S's linear heads learn
# too slowly on a few toy epochs (a linear layer on mean-pooled layer-normalised frames); MP3S's own
# heads also run in test_suite_runs_iemocap_over_folds_and_records_a_failing_task. The
# MP3S Xvectors loss hardly trains at all (test_mp3s_heads.py), so its option nll_loss is learnt here.
TOY_HEAD = {
    ("IEMOCAP", "linear"): ["--lr=0.01", "--pool_std=True", "--normalize=True"],
    # MP3S's own loss (softmax cross-entropy) at Adam 0.003, ascending order: 0.76 test accuracy with the
    # 12-epoch demo encoder (the additive-margin option we used before fell to 0.39 with it: a bar of 0.40
    # on 33 utterances; it had given 0.52 with the 4-epoch encoder).
    ("IEMOCAP", "ecapa_tdnn"): ["--lr=0.003", "--sorting=ascending"],
    ("SLURP", "linear"): ["--pool_std=True", "--normalize=True"],
    # Adam at 0.01 (the linear heads' toy rate) throws the BiLSTM about: 0.34 test accuracy with one seed;
    # at 0.003 it learns with every seed tried (0.69 / 0.78 / 0.94 for seeds 3 / 1 / 2).
    ("SLURP", "LSTM_linear"): ["--normalize=True", "--lr=0.003"],
    ("VoxCeleb1", "Xvectors"): ["--compute_cost=!name:torch.nn.functional.nll_loss"],
}
CHANCE = {"VoxCeleb1": 0.25, "IEMOCAP": 0.25, "SLURP": 0.25}  # 4 speakers, emotions, scenarios


def toy_options(recipe) -> list[str]:
    """The task's toy settings, then the recipe's small sizes, then the head's own settings (last one wins)."""
    options = TOY[recipe.task] + list(recipe.quick) + TOY_HEAD.get((recipe.task, recipe.head), [])
    return [f"{key}={value}" for key, value in dict(option.split("=", 1) for option in options).items()]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.task}-{r.head}")
def test_recipe_end_to_end_on_its_toy_corpus(recipe, encoder, corpora, tmp_path):
    options = toy_options(recipe)
    rows = run_recipe(recipe, encoder, str(corpora[recipe.task]), tmp_path / "out", options)
    assert rows and all(row["mixer"] == "summarymixing" and row["encoder"] == str(encoder) for row in rows)
    metrics = {(row["test_set"], row["metric"]): row["value"] for row in rows}
    if recipe.task in ("LibriSpeech", "CommonVoice"):
        assert {metric for _, metric in metrics} == {"WER", "CER"}
        assert all(value >= 0 for value in metrics.values())
    elif recipe.task == "VoxCeleb1":
        assert metrics["valid", "accuracy"] > CHANCE["VoxCeleb1"] + 0.15, metrics  # 16 held-out utterances
        assert 0.0 <= metrics["veri_test2", "EER"] <= 0.5  # unseen speakers: computed, not asserted good
    else:
        assert metrics["test", "accuracy"] > CHANCE[recipe.task] + 0.15, metrics  # ~32 held-out utterances
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == rows


def test_results_tables_and_plot(tmp_path):
    rows = [
        {"task": "IEMOCAP ER", "head": "linear", "test_set": "test", "metric": "accuracy", "value": v,
         "epochs": 3, "encoder": f"/runs/{m}/encoder", "mixer": m}
        for m, v in (("mamba", 0.61), ("mhsa", 0.58))
    ]
    csv_path, md_path = write_tables(rows, tmp_path)
    header = "task,head,test_set,metric,value,epochs,encoder,mixer,fold,status,error"
    assert csv_path.read_text().splitlines()[0] == header
    assert "| IEMOCAP ER | linear | test | accuracy | 0.6100 | 3 | /runs/mamba/encoder | mamba |" in md_path.read_text()
    assert plot_comparison(rows, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bad_audio_in_a_corpus_is_skipped_and_the_recipe_runs(encoder, corpora, tmp_path):
    import shutil

    data = tmp_path / "iemocap"
    shutil.copytree(corpora["IEMOCAP"], data)
    wav_dir = sorted((data / "Session2" / "sentences" / "wav").iterdir())[0]
    bad = write_bad_audio(wav_dir, "bad")
    recipe = next(r for r in RECIPES if r.task == "IEMOCAP" and r.head == "linear")
    run_recipe(recipe, encoder, str(data), tmp_path / "out", ["--number_of_epochs=1"])
    assert (tmp_path / "out" / "results.json").is_file()
    # A rerun into the same folder with another fold or another encoder must not report the old head.
    with pytest.raises(RuntimeError, match="fold: 1 there, 2 now"):
        run_recipe(recipe, encoder, str(data), tmp_path / "out", ["--number_of_epochs=1", "--test_spk_id=2"])
    other = SpeechEncoder("summarymixing", num_layers=1, d_model=32, d_ffn=64, nhead=4,
                          mixer_kwargs=SMALL_MIXER_KWARGS["summarymixing"]).save_pretrained(tmp_path / "other")
    with pytest.raises(RuntimeError, match="encoder_digest: '[0-9a-f]+' there, '[0-9a-f]+' now"):
        run_recipe(recipe, other, str(data), tmp_path / "out", ["--number_of_epochs=1"])
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["fold"] == 1
    with pytest.raises(RuntimeError, match="IEMOCAP/linear failed"):
        run_recipe(recipe, encoder, str(tmp_path / "nowhere"), tmp_path / "out2", ["--number_of_epochs=1"])
    assert "FileNotFoundError" in (tmp_path / "out2.log").read_text()
    assert bad  # written into the corpus; they carry no label line, so preparation never lists them


@pytest.mark.slow
def test_suite_runs_iemocap_over_folds_and_records_a_failing_task(encoder, corpora, tmp_path):
    from speechbrain_ext.mp3s.suite import run_suite

    out = tmp_path / "suite"
    rows = run_suite([encoder], {"IEMOCAP": [("", str(corpora["IEMOCAP"]))], "SLURP": [("", str(tmp_path / "none"))]},
                     out, ["--number_of_epochs=1"], quick=True, folds=(1, 2))
    ok = [row for row in rows if row["status"] == "ok"]
    assert {(row["head"], row["fold"]) for row in ok} == {(h, f) for h in ("linear", "ecapa_tdnn") for f in (1, 2)}
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 2 and all("FileNotFoundError" in row["error"] for row in failed)
    assert (out / "results.csv").is_file() and (out / "results.md").is_file()
    wide = (out / "results_wide.md").read_text()
    assert "summarymixing" in wide and "(2 folds)" in wide and "IEMOCAP ER linear accuracy (test)" in wide
    plots = list((out / "layer_weights").glob("summarymixing-*-IEMOCAP_ER-*.png"))
    assert len(plots) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    weights = json.loads((out / "layer_weights" / "layer_weights.json").read_text())
    assert all(record["runs"] == 2 and sum(record["layer_weights"]) == pytest.approx(1.0) for record in weights)
