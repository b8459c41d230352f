"""The shipped BEST-RQ YAMLs reproduce the paper's experiment code, and the modules' defaults are those YAMLs.

Every base/large YAML builds through hyperpyyaml (on the ``meta`` device: sizes only, nothing
allocated) and its total parameters (front-end + encoder + the 8192-way head) match those of the
experiment code, whettenr/brq-att-alt-exp ``hparams/*.yaml`` run on whettenr/speechbrain-fork,
listed in ``speechbrain_ext.sizes``; its encoder settings are the table's, and its schedule the
experiment code's.
"""

import math
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext.mixers import build_mixer
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.sizes import CODEBOOK_SIZE, PAPER_MIXERS, SIZES, paper_encoder_settings

HPARAMS = Path(__file__).resolve().parents[1] / "recipes" / "LibriSpeech" / "BEST-RQ" / "hparams"
SHIPPED = [(size, mixer) for size in SIZES for mixer in SIZES[size].widths]


def load_recipe(size: str, mixer: str, tmp_path: Path) -> dict:
    """The hparams of a shipped YAML, every module built on the meta device."""
    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out")}
    with torch.device("meta"):
        return load_hyperpyyaml((HPARAMS / size / f"{mixer}.yaml").read_text(), overrides)


def test_every_shipped_yaml_is_in_the_size_table():
    on_disk = sorted((path.parent.name, path.stem) for path in HPARAMS.glob("*/*.yaml"))
    assert on_disk == sorted(SHIPPED)


@pytest.mark.parametrize("size,mixer", [(s, m) for s, m in SHIPPED if m in SIZES[s].paper_parameters])
def test_parameters_match_the_experiment_code(size, mixer, tmp_path):
    """Within 0.1% of the fork's count for the same configuration (SummaryMixing's four: built from the
    fork's own TransformerASR, CNN front-end and Linear head)."""
    hparams = load_recipe(size, mixer, tmp_path)
    model = hparams["model"]
    assert len(model.heads) == 1 and model.heads[0].out_features == CODEBOOK_SIZE
    count = sum(p.numel() for p in model.parameters())
    paper = SIZES[size].paper_parameters[mixer]
    assert abs(count / paper - 1) < 0.001, f"{size} {mixer}: {count / 1e6:.3f}M vs the paper's {paper / 1e6:.3f}M"


@pytest.mark.parametrize("size,mixer", SHIPPED)
def test_encoder_settings_are_the_tables(size, mixer, tmp_path):
    hparams = load_recipe(size, mixer, tmp_path)
    config = hparams["speech_encoder"].config
    expected = paper_encoder_settings(size, mixer)
    assert {key: config[key] for key in expected} == expected


@pytest.mark.parametrize("size", list(SIZES))
def test_mhsa_flash_has_the_mhsa_budget(size, tmp_path):
    counts = {m: sum(p.numel() for p in load_recipe(size, m, tmp_path)["model"].parameters())
              for m in ("mhsa", "mhsa_flash")}
    assert abs(counts["mhsa_flash"] / counts["mhsa"] - 1) < 0.01, counts


@pytest.mark.parametrize("size,mixer", SHIPPED)
def test_schedule_is_the_experiment_codes(size, mixer, tmp_path):
    """hparams/brq.yaml and its siblings: 205k steps, 150 buckets, AdamW (0.9, 0.98) eps 1e-8 wd 0.01,
    Noam warm-up 25k at lr 8e-4, 400 s batches x 2 accumulation, 2-60 s utterances, one mask per batch."""
    hparams = load_recipe(size, mixer, tmp_path)
    assert hparams["optimizer_step_limit"] == 205000
    assert (hparams["avoid_if_shorter_than"], hparams["avoid_if_longer_than"]) == (2.0, 60.0)
    assert hparams["max_grad_norm"] == 10.0 and hparams["grad_accumulation_factor"] == 2
    # The run scripts' flags: run_summix*.sh (200 s, 70 buckets, fp16), run_mamba_bidirectional.sh (fp16).
    run_script = {"summarymixing_1head": (200, 70, "fp16"), "mamba": (400, 150, "fp16" if size == "base" else "bf16")}
    expected = run_script.get(mixer, (400, 150, "bf16"))
    assert (hparams["seconds_per_batch"], hparams["num_buckets"], hparams["precision"]) == expected
    assert hparams["seed"] == (84 if (size, mixer) == ("large", "mamba") else 1000)
    assert hparams["target_precision"] == "autocast"
    optimizer = hparams["optimizer"]
    assert optimizer.func is torch.optim.AdamW
    assert optimizer.keywords["lr"] == 8e-4 and optimizer.keywords["weight_decay"] == 0.01
    assert optimizer.keywords.get("eps", 1e-8) == 1e-8
    assert tuple(optimizer.keywords["betas"]) == (0.9, 0.98)
    assert hparams["lr_scheduler"].n_warmup_steps == 25000
    model = hparams["model"]
    assert model.per_utterance_mask is False
    assert (model.mask_prob, model.noise_std) == (0.15, 0.1)
    assert hparams["encoder_layerdrop"] == SIZES[size].layerdrop
    assert hparams["find_unused_parameters"] is True  # LayerDrop under DDP, as the paper's run scripts


def _first_mixer_kwargs(size: str, mixer: str, tmp_path: Path) -> tuple[int, dict]:
    hparams = load_recipe(size, mixer, tmp_path)
    return hparams["d_model"], dict(hparams["mixer_kwargs"] or {})


@pytest.mark.parametrize("size,mixer", SHIPPED)
def test_build_mixer_defaults_are_the_shipped_yamls_mixer(size, mixer, tmp_path):
    """``build_mixer(name, d_model, nhead)`` alone is the mixer the YAML builds with its explicit settings:
    the same parameters (a strict state-dict load) and the same outputs with those weights."""
    d_model, yaml_kwargs = _first_mixer_kwargs(size, mixer, tmp_path)
    settings = paper_encoder_settings(size, mixer)
    name, nhead = settings["mixer"], settings["nhead"]
    torch.manual_seed(0)
    default = build_mixer(name, d_model, nhead).eval()
    shipped = build_mixer(name, d_model, nhead, **yaml_kwargs).eval()
    shipped.load_state_dict(default.state_dict(), strict=True)
    x = torch.randn(2, 12, d_model)
    padding = torch.arange(12) >= torch.tensor([[12], [7]])
    with torch.no_grad():
        torch.testing.assert_close(default(x, x, x, key_padding_mask=padding)[0],
                                   shipped(x, x, x, key_padding_mask=padding)[0])


@pytest.mark.parametrize("size,mixer", SHIPPED)
def test_speech_encoder_paper_is_the_shipped_yamls_encoder(size, mixer, tmp_path):
    """``SpeechEncoder.paper(size, mixer)``: the YAML's parameter count at full size, and with one layer
    (to run it on the CPU) the YAML's parameters and outputs."""
    yaml_encoder = load_recipe(size, mixer, tmp_path)["speech_encoder"]
    with torch.device("meta"):
        paper = SpeechEncoder.paper(size, mixer)
    assert sum(p.numel() for p in paper.parameters()) == sum(p.numel() for p in yaml_encoder.parameters())
    assert paper.config == yaml_encoder.config

    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"), "num_encoder_layers": 1}
    one_layer = load_hyperpyyaml((HPARAMS / size / f"{mixer}.yaml").read_text(), overrides)["speech_encoder"]
    paper = SpeechEncoder.paper(size, mixer, num_layers=1)
    paper.load_state_dict(one_layer.state_dict(), strict=True)
    paper.set_epoch(math.inf)
    one_layer.set_epoch(math.inf)
    wavs = torch.randn(2, 8000)
    with torch.no_grad():
        expected = one_layer.eval()(wavs, torch.tensor([1.0, 0.6])).out
        torch.testing.assert_close(paper.eval()(wavs, torch.tensor([1.0, 0.6])).out, expected)


@pytest.mark.parametrize("mixer", PAPER_MIXERS)
def test_speech_encoder_defaults_are_the_papers_base_model(mixer):
    """A user's ``SpeechEncoder(mixer)`` is the paper's base encoder: same settings (its mixer's own
    defaults are the paper's, see above) and the same parameter count."""
    with torch.device("meta"):
        default, paper = SpeechEncoder(mixer), SpeechEncoder.paper("base", mixer)
    assert {k: v for k, v in default.config.items() if k != "mixer_kwargs"} == {
        k: v for k, v in paper.config.items() if k != "mixer_kwargs"}
    assert sum(p.numel() for p in default.parameters()) == sum(p.numel() for p in paper.parameters())
