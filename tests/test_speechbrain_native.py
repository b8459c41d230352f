"""Our encoder and mixers inside SpeechBrain's own models: ConformerEncoder's interface and weights,
TransformerASR's encoder, replace_attention, and the replace_attention example (examples/) on toy LibriSpeech."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.lobes.models.transformer.Transformer import get_lookahead_mask
from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
from speechbrain.nnet.attention import RelPosEncXL
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

from speechbrain_ext.data.toy import write_toy_librispeech
from speechbrain_ext.mixers.fastformer import Fastformer
from speechbrain_ext.mixers.summary_mixing import SummaryMixing
from speechbrain_ext.models.encoder import MixerConformerEncoder
from speechbrain_ext.replace import replace_attention, replace_encoder

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "replace_attention"
D, H = 32, 4


def transformer_asr(**kwargs):
    settings = dict(tgt_vocab=10, input_size=20, d_model=D, nhead=H, num_encoder_layers=2, num_decoder_layers=1,
                    d_ffn=64, kernel_size=5, encoder_module="conformer", attention_type="RelPosMHAXL",
                    normalize_before=True, causal=False, dropout=0.0)
    settings.update(kwargs)
    return TransformerASR(**settings)


def assert_causal(encode, x):
    """encode(x) at frame t is unchanged when the frames after t change."""
    with torch.no_grad():
        reference = encode(x)
        for t in (0, 4, 9):
            changed = x.clone()
            changed[:, t + 1:] = torch.randn_like(changed[:, t + 1:]) * 10
            torch.testing.assert_close(encode(changed)[:, : t + 1], reference[:, : t + 1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention_type, mixer", [("RelPosMHAXL", "mhsa"), ("hypermixing", "hypermixing")])
def test_speechbrain_conformer_weights_load_strictly(attention_type, mixer):
    stock = ConformerEncoder(2, D, 64, H, kernel_size=5, attention_type=attention_type, dropout=0.0).eval()
    kwargs = {"hypernet_size": 64} if mixer == "hypermixing" else {}  # SpeechBrain sizes it by d_ffn
    ours = MixerConformerEncoder(2, D, 64, H, mixer=mixer, kernel_size=5, activation="swish", mixer_kwargs=kwargs,
                                 final_norm_eps=1e-6, mixer_output_dropout=False).eval()
    ours.load_state_dict(stock.state_dict(), strict=True)
    if mixer == "mhsa":
        x = torch.randn(2, 12, D)
        with torch.no_grad():
            expected, attentions = stock(x, pos_embs=RelPosEncXL(D)(x))
            got, ours_attentions = ours(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        assert len(ours_attentions) == len(attentions) == 2


def test_encoder_takes_speechbrain_conformer_arguments():
    encoder = MixerConformerEncoder(2, D, 64, H, mixer="summarymixing", kernel_size=5).eval()
    x = torch.randn(2, 10, D)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 7:] = True
    out, attentions = encoder(x, src_mask=None, src_key_padding_mask=padding, pos_embs=None, dynchunktrain_config=None)
    assert out.shape == x.shape and attentions == [None, None]
    out, attentions, hidden = encoder(x, src_key_padding_mask=padding, output_hidden_states=True)
    assert len(hidden) == 3
    chunked, _ = encoder(x, src_key_padding_mask=padding, dynchunktrain_config=DynChunkTrainConfig(4, 1))
    assert chunked.shape == x.shape  # dynamic chunks: tests/test_streaming.py
    with pytest.raises(ValueError, match="src_key_padding_mask="):
        encoder(x, padding)  # the old positional padding mask: SpeechBrain's second argument is src_mask
    with pytest.raises(ValueError, match="summarymixing cannot honour this attn_mask"):
        encoder(x, src_mask=torch.ones(10, 10, dtype=torch.bool).tril(-3))


@pytest.mark.parametrize("mixer", ["summarymixing", "fastformer", "mamba", "mhsa"])
def test_causal_encoder_in_a_causal_transformer_asr(mixer):
    asr = transformer_asr(causal=True)
    kwargs = {"d_state": 4} if mixer == "mamba" else {}
    encoder = MixerConformerEncoder(2, D, 64, H, mixer=mixer, kernel_size=5, causal=True, mixer_kwargs=kwargs)
    asr = replace_encoder(asr, encoder).eval()
    assert_causal(lambda x: asr.encode(x, torch.ones(2)), torch.randn(2, 16, 20))


@pytest.mark.parametrize("mixer", ["summarymixing", "fastformer", "mamba", "mhsa"])
def test_encoder_in_chunks_in_a_transformer_asr(mixer):
    """TransformerASR.encode(dynchunktrain_config=...) passes SpeechBrain's chunk mask and the config: no encoder
    frame reads a later chunk."""
    asr = transformer_asr(attention_type="RelPosMHAXL" if mixer == "mhsa" else "regularMHA")
    kwargs = {"d_state": 4} if mixer == "mamba" else {}
    asr = replace_encoder(asr, MixerConformerEncoder(2, D, 64, H, mixer=mixer, kernel_size=5, mixer_kwargs=kwargs))
    config = DynChunkTrainConfig(4, None)
    x = torch.randn(2, 16, 20)
    with torch.no_grad():
        reference = asr.eval().encode(x, torch.ones(2), dynchunktrain_config=config)
        changed = x.clone()
        changed[:, 8:] = torch.randn_like(changed[:, 8:]) * 10
        out = asr.encode(changed, torch.ones(2), dynchunktrain_config=config)
    torch.testing.assert_close(out[:, :8], reference[:, :8], atol=1e-5, rtol=0)
    assert not torch.allclose(out[:, 8:], reference[:, 8:])


def test_encoder_causality_is_checked():
    with pytest.raises(ValueError, match="causal=True.*HyperMixing has no causal form"):
        MixerConformerEncoder(1, D, 64, H, mixer="hypermixing", causal=True)
    with pytest.raises(ValueError, match="build the encoder with causal=True"):
        replace_encoder(transformer_asr(causal=True), MixerConformerEncoder(1, D, 64, H, mixer="fastformer"))
    with pytest.raises(ValueError, match="reads absolute positions, the model feeds relative"):
        replace_encoder(transformer_asr(), MixerConformerEncoder(1, D, 64, H, mixer="hypermixing"))


@pytest.mark.parametrize("encoder_module", ["conformer", "transformer"])
def test_replace_attention_swaps_every_encoder_layer(encoder_module):
    asr = transformer_asr(encoder_module=encoder_module, attention_type="regularMHA")
    replace_attention(asr, "fastformer", scoring="linear")
    attr = "mha_layer" if encoder_module == "conformer" else "self_att"
    mixers = [getattr(layer, attr) for layer in asr.encoder.layers]
    assert all(isinstance(m, Fastformer) and m.scoring == "linear" and m.nhead == H for m in mixers)
    assert not any(isinstance(m, Fastformer) for m in asr.decoder.modules())  # decoders keep their attention
    src, tgt = torch.randn(2, 12, 20), torch.randint(1, 10, (2, 5))
    encoded, decoded = asr(src, tgt, torch.tensor([1.0, 0.7]))
    (encoded.square().mean() + decoded.square().mean()).backward()
    assert all(p.grad is not None for m in mixers for p in m.parameters())


@pytest.mark.parametrize("mixer", ["summarymixing", "fastformer", "mamba", "mhsa"])
def test_replace_attention_in_a_causal_model_uses_the_causal_form(mixer):
    asr = replace_attention(transformer_asr(causal=True), mixer, **({"d_state": 4} if mixer == "mamba" else {}))
    if mixer != "mhsa":
        assert all(layer.mha_layer.causal for layer in asr.encoder.layers)
    assert_causal(lambda x: asr.eval().encode(x, torch.ones(2)), torch.randn(2, 16, 20))


def test_replace_attention_checks_positions_and_causality():
    with pytest.raises(ValueError, match="the model is causal, and HyperMixing has no causal form"):
        replace_attention(transformer_asr(causal=True, attention_type="regularMHA"), "hypermixing")
    with pytest.raises(ValueError, match="RelPosMHSA reads relative positions.*attention_type='RelPosMHAXL'"):
        replace_attention(transformer_asr(attention_type="regularMHA"), "mhsa")
    with pytest.raises(ValueError, match="HyperMixing reads absolute positions.*feeds relative"):
        replace_attention(transformer_asr(), "hypermixing")
    with pytest.raises(ValueError, match="no SpeechBrain ConformerEncoderLayer"):
        replace_attention(torch.nn.Linear(2, 2), "fastformer")
    # A causal mask the model did not announce still reaches the mixer, which honours or refuses it.
    asr = replace_attention(transformer_asr(attention_type="regularMHA"), "hypermixing")
    with pytest.raises(ValueError, match="hypermixing cannot honour this attn_mask"):
        asr.encoder(torch.randn(1, 6, D), src_mask=get_lookahead_mask(torch.zeros(1, 6)))


@pytest.fixture(scope="module")
def toy_librispeech(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr_data")
    write_toy_librispeech(root, speakers_per_split=2, chapters_per_speaker=1, utterances_per_chapter=4)
    return root


def run_example(yaml, data, out, *overrides):
    spec = importlib.util.spec_from_file_location("example_train", EXAMPLE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(EXAMPLE / "hparams" / yaml), f"--data_folder={data}", f"--output_folder={out}",
                        "--number_of_epochs=1", *overrides])


@pytest.mark.parametrize("yaml, overrides, mixer_class", [
    ("replace_attention.yaml", [], SummaryMixing),
    ("replace_attention.yaml", ["--causal=True"], SummaryMixing),
    ("mixer_encoder.yaml", [], SummaryMixing),
    ("mixer_encoder.yaml", ["--causal=True", "--mixer=fastformer"], Fastformer),
])
def test_transformer_asr_example_trains_on_toy_librispeech(yaml, overrides, mixer_class, toy_librispeech, tmp_path):
    brain = run_example(yaml, toy_librispeech, tmp_path / "out", *overrides)
    mixers = [m for m in brain.modules.asr.encoder.modules() if isinstance(m, mixer_class)]
    assert len(mixers) == 2
    assert all(m.causal == ("--causal=True" in overrides) for m in mixers)
    assert math.isfinite(brain.train_loss) and brain.optimizer_step == 2
    log = (tmp_path / "out" / "train_log.txt").read_text()
    assert "epoch: 1" in log and "CER" in log
