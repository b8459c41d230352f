"""The mixers as the paper's code runs them, against references written here from its equations.

References (read, not copied): whettenr/speechbrain-fork branch summary-mixing,
``speechbrain/nnet/summary_mixing.py`` (SummaryMixing, ``_forward_mixing``) with
``speechbrain/lobes/models/VanillaNN.py`` (``ParallelLinear``); branch alt-attention,
``speechbrain/nnet/attention.py`` (``Fastattention``, ``MambaBlock`` / ``MambaWrapper`` in
mamba_ssm's ``Block``) and ``lobes/models/transformer/TransformerASR.py`` (``encode``: the
absolute sinusoid added at the encoder input). Each reference is a few lines of tensor algebra
that take the weights of our module, so the comparison is of the maths, not of the code.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LargestTensor
from speechbrain.lobes.models.transformer.Transformer import PositionalEncoding
from speechbrain.nnet.activations import Swish

from speechbrain_ext.mixers.fastformer import Fastformer
from speechbrain_ext.mixers.mamba import BidirectionalMamba
from speechbrain_ext.mixers.summary_mixing import SummaryMixing
from speechbrain_ext.models.encoder import MixerConformerEncoder
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.sizes import paper_mixer_kwargs

torch.manual_seed(0)
D, H = 32, 4


def paper_mixer(name, d_model=D, nhead=H):
    """A mixer with the paper's settings at a small width (SummaryMixing's 512s scaled down)."""
    kwargs = paper_mixer_kwargs(name, d_model)
    if name == "summarymixing":
        kwargs.update(local_hidden=16, local_out=16, summary_hidden=16)
    if name == "mamba":
        kwargs.update(d_state=8)
    cls = {"summarymixing": SummaryMixing, "fastformer": Fastformer, "mamba": BidirectionalMamba}[name]
    mixer = cls(d_model, nhead, **kwargs).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that the references test them
        for param_name, param in mixer.named_parameters():
            if "norm" in param_name or param_name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return mixer


def block_diagonal_linear(x, weight, bias):
    """x (..., G * I) through G separate I -> O maps (weight (G, I, O), bias (G, O), as the fork's
    ``ParallelLinear``): one loop per group."""
    groups, width_in, _ = weight.shape
    outs = [x[..., g * width_in:(g + 1) * width_in] @ weight[g] + bias[g] for g in range(groups)]
    return torch.cat(outs, dim=-1)


def summary_mixing_reference(mixer, x, valid):
    """y_t = act(W_c [LN_f(f(x_t)); LN_s(sum_t m_t s(x_t) / sum_t m_t)] + b_c), f and s two block-diagonal
    layers with an activation after each; ``valid`` (B, T, 1) is 1 on real frames."""
    act = Swish()

    def mlp(x, layers):
        for layer in layers:
            x = act(block_diagonal_linear(x, layer.weight, layer.bias))
        return x

    f = mlp(x, [mixer.local[0], mixer.local[2]])
    s = mlp(x, [mixer.summary[0], mixer.summary[2]])
    n = mixer.local_norm
    local = F.layer_norm(f * valid, n.normalized_shape, n.weight, n.bias, n.eps)
    mean = (s * valid).sum(dim=1) / valid.sum(dim=1)
    n = mixer.summary_norm
    summary = F.layer_norm(mean, n.normalized_shape, n.weight, n.bias, n.eps)
    merged = torch.cat([local, summary.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1)
    combiner = mixer.combiner[0]
    return act(merged @ combiner.weight.T + combiner.bias)


def fastformer_reference(mixer, x, padding=None):
    """Fastattention: q = W_q x; alpha = softmax_t((A_q q + a_q) / sqrt(E/H)) per head; global query
    per head sum_t alpha q; p = (W_k x) * global query; beta and the global key the same way from p with
    A_k; u = q * global key (value shares the query projection); out = W_o u + b_o + q."""
    batch, length, d_model = x.shape
    nhead = mixer.nhead
    head_dim = d_model // nhead

    def pool(content, attn):
        scores = (content @ attn.weight.T + attn.bias) / math.sqrt(head_dim)  # (B, T, H)
        if padding is not None:
            scores = scores.masked_fill(padding.unsqueeze(-1), -float("inf"))
        weights = scores.softmax(dim=1)
        per_head = content.view(batch, length, nhead, head_dim)
        return torch.einsum("bth,bthd->bhd", weights, per_head).reshape(batch, 1, d_model)

    q = x @ mixer.query.weight.T + mixer.query.bias
    global_query = pool(q, mixer.query_attn)
    p = (x @ mixer.key.weight.T + mixer.key.bias) * global_query
    global_key = pool(p, mixer.key_attn)
    u = q * global_key
    return u @ mixer.transform.weight.T + mixer.transform.bias + q


def mamba_reference(mixer, x):
    """mamba_ssm's Block around the bidirectional pair, on unpadded input:
    n = x / sqrt(mean(x^2) + eps) * w (RMSNorm); out = x + Mamba_fwd(n) + flip(Mamba_bwd(flip(n)))."""
    norm = mixer.norm
    n = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + norm.eps) * norm.weight
    backward = mixer.backward_block(n.flip(1)).flip(1)
    return x + mixer.forward_block(n) + backward


@torch.no_grad()
def test_summary_mixing_matches_the_papers_equations():
    mixer = paper_mixer("summarymixing")
    x = torch.randn(3, 17, D)
    expected = summary_mixing_reference(mixer, x, torch.ones(3, 17, 1))
    torch.testing.assert_close(mixer(x, x, x)[0], expected, atol=1e-5, rtol=1e-5)
    # With padding, the valid frames are those of the fork's masked sums.
    lengths = torch.tensor([17, 11, 4])
    padding = torch.arange(17).unsqueeze(0) >= lengths.unsqueeze(1)
    expected = summary_mixing_reference(mixer, x, (~padding).unsqueeze(-1).float())
    out = mixer(x, x, x, key_padding_mask=padding)[0]
    torch.testing.assert_close(out[~padding], expected[~padding], atol=1e-5, rtol=1e-5)


def test_summary_mixing_paper_parameters_per_block():
    """f: d->512->512, s: d->1024->d (the fork's ConformerEncoder defaults), both in 8 diagonal blocks;
    two LayerNorms; Linear(512 + d -> d)."""
    d_model = 632
    with torch.device("meta"):
        mixer = SummaryMixing(d_model, 8, **paper_mixer_kwargs("summarymixing", d_model))
    f = (d_model * 512 + 512 * 512) // 8 + 2 * 512
    s = (d_model * 1024 + 1024 * d_model) // 8 + 1024 + d_model
    expected = f + s + 2 * 512 + 2 * d_model + (512 + d_model) * d_model + d_model
    assert sum(p.numel() for p in mixer.parameters()) == expected


def test_summary_mixing_initialisation_is_the_forks():
    """ParallelLinear's 2-D biases are redrawn by TransformerASR's Xavier pass (std sqrt(2 / (G + O/G))),
    the dense merge layer's bias is zero (SummaryMixing._init_parameters), and so are LayerNorm biases."""
    torch.manual_seed(0)
    encoder = SpeechEncoder.paper("base", "summarymixing", num_layers=2)
    for layer in encoder.encoder.layers:
        mixer = layer.mha_layer
        for grouped, width in ((mixer.local[0], 512), (mixer.summary[0], 1024), (mixer.summary[2], 632)):
            assert grouped.bias.shape == (8, width // 8)
            expected = math.sqrt(2 / (8 + width // 8))
            assert abs(grouped.bias.std().item() / expected - 1) < 0.15, (width, grouped.bias.std().item())
        assert torch.count_nonzero(mixer.combiner[0].bias) == 0
        assert torch.count_nonzero(mixer.summary_norm.bias) == 0
    # Without the Xavier pass: kaiming_uniform(a=sqrt(5)) on the (G, O/G) bias, bound 1 / sqrt(O/G).
    mixer = SummaryMixing(632, 8)
    bias = mixer.summary[0].bias
    assert bias.abs().max() <= 1 / math.sqrt(128) and bias.abs().max() > 0.8 / math.sqrt(128)


@torch.no_grad()
def test_fastformer_matches_the_papers_equations():
    mixer = paper_mixer("fastformer")
    x = torch.randn(3, 17, D)
    torch.testing.assert_close(mixer(x, x, x)[0], fastformer_reference(mixer, x), atol=1e-5, rtol=1e-5)
    padding = torch.arange(17).unsqueeze(0) >= torch.tensor([[17], [9], [2]])
    out = mixer(x, x, x, key_padding_mask=padding)[0]
    torch.testing.assert_close(out[~padding], fastformer_reference(mixer, x, padding)[~padding], atol=1e-5, rtol=1e-5)


def test_fastformer_paper_initialisation_and_dropout():
    torch.manual_seed(1)
    mixer = Fastformer(256, 8, **paper_mixer_kwargs("fastformer", 256))
    linears = [mixer.query, mixer.key, mixer.transform, mixer.query_attn, mixer.key_attn]
    assert all(float(layer.bias.detach().abs().max()) == 0.0 for layer in linears)
    weights = torch.cat([layer.weight.detach().flatten() for layer in linears])
    assert abs(float(weights.std()) - 0.02) < 0.002 and abs(float(weights.mean())) < 0.001
    # Dropout acts on the pooled vectors only: in training, outputs vary between calls.
    x = torch.randn(2, 30, 256)
    mixer.train()
    assert not torch.equal(mixer(x, x, x)[0], mixer(x, x, x)[0])
    mixer.eval()
    assert torch.equal(mixer(x, x, x)[0], mixer(x, x, x)[0])


@torch.no_grad()
def test_mamba_block_matches_the_papers_equations():
    mixer = paper_mixer("mamba")
    x = torch.randn(2, 23, D)
    torch.testing.assert_close(mixer(x, x, x)[0], mamba_reference(mixer, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["summarymixing", "fastformer", "mamba"])
def test_paper_forms_keep_the_mixer_contract(name):
    """Padding of any length and content leaves valid frames unchanged; gradients reach every
    parameter; no T x T tensor; bf16 autocast works."""
    mixer = paper_mixer(name)
    x = torch.randn(2, 40, D)
    lengths = torch.tensor([40, 25])
    padding = torch.arange(40).unsqueeze(0) >= lengths.unsqueeze(1)
    with torch.no_grad():
        out = mixer(x, x, x, key_padding_mask=padding)[0]
        alone = mixer(x[1:, :25], x[1:, :25], x[1:, :25])[0]
        garbage = torch.cat([x[1:, :25], 100 * torch.randn(1, 60, D)], dim=1)
        long_pad = torch.arange(85).unsqueeze(0) >= 25
        padded_more = mixer(garbage, garbage, garbage, key_padding_mask=long_pad)[0]
    torch.testing.assert_close(out[1, :25], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_more[0, :25], alone[0], atol=1e-5, rtol=1e-5)

    mixer.train()
    length = 2000
    y = torch.randn(2, length, D, requires_grad=True)
    with LargestTensor() as largest:
        mixer(y, y, y)[0].pow(2).mean().backward()
    assert largest.numel < length * length
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = mixer.eval()(x, x, x, key_padding_mask=padding)[0]
    assert low.shape == x.shape and torch.isfinite(low).all()


@torch.no_grad()
def test_absolute_positions_at_the_encoder_input_are_speechbrains():
    """TransformerASR.encode: src + PositionalEncoding(d_model)(src) before the Conformer."""
    kwargs = {"mixer": "fastformer", "kernel_size": 3, "dropout": 0.0}
    torch.manual_seed(3)
    with_positions = MixerConformerEncoder(2, D, 64, H, input_positions="absolute", **kwargs).eval()
    torch.manual_seed(3)
    without = MixerConformerEncoder(2, D, 64, H, **kwargs).eval()
    x = torch.randn(2, 50, D)
    expected = without(x + PositionalEncoding(D, max_len=2500)(x))[0]
    torch.testing.assert_close(with_positions(x)[0], expected, atol=1e-5, rtol=1e-5)
    # Any length: past the fork's 2500-frame table.
    assert with_positions(torch.randn(1, 2600, D))[0].shape == (1, 2600, D)


def test_conformer_block_defaults_are_the_papers_code():
    encoder = MixerConformerEncoder(1, D, 64, H, mixer="mhsa")
    layer = encoder.layers[0]
    assert isinstance(layer.drop, torch.nn.Identity)
    assert any(isinstance(m, Swish) for m in layer.ffn_module1.modules())
    assert any(isinstance(m, Swish) for m in layer.convolution_module.modules())
    assert encoder.norm.norm.eps == 1e-6
    options = MixerConformerEncoder(1, D, 64, H, mixer="mhsa", activation="gelu", mixer_output_dropout=True,
                                    final_norm_eps=1e-5)
    assert isinstance(options.layers[0].drop, torch.nn.Dropout)
    assert any(isinstance(m, torch.nn.GELU) for m in options.layers[0].ffn_module1.modules())
    assert not any(isinstance(m, Swish) for m in options.modules())
    assert options.norm.norm.eps == 1e-5
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        MixerConformerEncoder(1, D, 64, H, activation="tanhh")
    with pytest.raises(ValueError, match="input_positions"):
        MixerConformerEncoder(1, D, 64, H, input_positions="relative")


def small_speech_encoder(**kwargs):
    settings = {"num_layers": 2, "d_model": D, "d_ffn": 64, "nhead": H, "kernel_size": 3}
    return SpeechEncoder(**{**settings, **kwargs})


def test_xavier_normal_init_covers_projection_and_encoder():
    """TransformerASR._init_params: xavier_normal_ on every parameter of two or more dimensions."""
    torch.manual_seed(0)
    encoder = SpeechEncoder("mamba", num_layers=1, d_model=256, d_ffn=1024, nhead=8, init="xavier_normal")
    for module_name in ("projection", "encoder"):
        for name, param in getattr(encoder, module_name).named_parameters():
            if param.dim() > 1 and param.numel() > 10000:
                fan_out, fan_in = param.shape[0], param[0].numel()
                receptive = param[0, 0].numel() if param.dim() > 2 else 1
                std = math.sqrt(2.0 / (fan_in + fan_out * receptive))
                assert abs(float(param.detach().std()) / std - 1) < 0.1, (module_name, name)
    # The fork redraws mamba_ssm's A_log too (a (d_inner, d_state) matrix): A no longer -(1..N).
    a_log = encoder.encoder.layers[0].mha_layer.forward_block.A_log
    assert not torch.allclose(a_log[0], torch.log(torch.arange(1.0, 17.0)))


@pytest.mark.parametrize("mixer", ["summarymixing", "fastformer", "mamba"])
def test_paper_encoder_exports_and_reloads(mixer, tmp_path):
    kwargs = paper_mixer_kwargs(mixer, D)
    if mixer == "summarymixing":
        kwargs.update(local_hidden=16, local_out=16, summary_hidden=16)
    encoder = small_speech_encoder(mixer=mixer, mixer_kwargs=kwargs, activation="swish", input_dropout=0.1,
                                   input_positions="absolute", mixer_output_dropout=False, final_norm_eps=1e-6,
                                   init="xavier_normal").eval()
    encoder.save_pretrained(tmp_path)
    loaded = SpeechEncoder.from_pretrained(tmp_path).eval()
    feats, lengths = torch.randn(2, 64, 80), torch.tensor([64, 40])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(feats, lengths).out, encoder.encode(feats, lengths).out)
