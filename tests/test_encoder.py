"""MixerConformerEncoder: hidden states, padding invariance, positions, paper sizes."""

import re
from pathlib import Path

import pytest
import torch
from conftest import SMALL_MIXER_KWARGS
from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule

from speechbrain_ext.mixers import MIXERS
from speechbrain_ext.mixers.fastformer import Fastformer
from speechbrain_ext.models.encoder import MixerConformerEncoder, masked_convolution
from speechbrain_ext.sizes import PAPER_MIXERS, SIZES

ALL_MIXERS = list(MIXERS)
HPARAMS = Path(__file__).resolve().parents[1] / "recipes" / "LibriSpeech" / "BEST-RQ" / "hparams"
# The BEST-RQ paper's base widths, chosen to equalise parameters across mixers (one table: sizes.py).
PAPER_BASE_WIDTHS = {name: SIZES["base"].widths[name] for name in PAPER_MIXERS}


def small_encoder(name, num_layers=2, **kwargs):
    return MixerConformerEncoder(
        num_layers, 32, 64, 4, mixer=name, kernel_size=5, mixer_kwargs=SMALL_MIXER_KWARGS[name], **kwargs
    ).eval()


def padding_mask(lengths, max_len):
    return torch.arange(max_len).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_hidden_states_are_input_plus_every_block(name):
    encoder = small_encoder(name, num_layers=12, output_hidden_states=True)
    x = torch.randn(2, 25, 32)
    out, attentions, hidden = encoder(x)
    assert out.shape == x.shape
    assert attentions == [None] * 12
    assert len(hidden) == 13
    assert hidden[0] is x
    assert all(h.shape == x.shape for h in hidden)
    torch.testing.assert_close(out, encoder.norm(hidden[-1]))
    assert len(small_encoder(name)(x)) == 2  # (out, attentions), as SpeechBrain's ConformerEncoder


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_encoder_padding_invariance(name):
    encoder = small_encoder(name)
    lengths, max_len = [12, 31, 40], 40
    utterances = [torch.randn(1, n, 32) for n in lengths]
    batch = torch.randn(3, max_len, 32) * 50
    for row, utt in enumerate(utterances):
        batch[row, : utt.shape[1]] = utt[0]
    with torch.no_grad():
        batched, _ = encoder(batch, src_key_padding_mask=padding_mask(lengths, max_len))
        for row, utt in enumerate(utterances):
            torch.testing.assert_close(batched[row, : utt.shape[1]], encoder(utt)[0][0], atol=5e-5, rtol=1e-4)


def test_speechbrain_convolution_module_alone_leaks_padding():
    """Why the encoder masks inside the convolution module: the stock forward reads padding."""
    module = ConvolutionModule(16, kernel_size=5).eval()
    x = torch.randn(1, 10, 16)
    padded = torch.cat([x, torch.randn(1, 4, 16)], dim=1)
    mask = padding_mask([10], 14)
    with torch.no_grad():
        alone = module(x)
        stock = module(padded, mask.unsqueeze(-1))
        ours = masked_convolution(module, padded, mask)
    assert not torch.allclose(stock[:, :10], alone, atol=1e-5)
    torch.testing.assert_close(ours[:, :10], alone)


@pytest.mark.parametrize("name", ["mhsa", "hypermixing"])
def test_positions_are_built_for_any_length(name):
    encoder = small_encoder(name, num_layers=1)
    x = torch.randn(1, 3100, 32)  # past SpeechBrain's 2500- and 3000-row tables
    with torch.no_grad():
        out, _ = encoder(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_layerdrop_skips_blocks_only_in_training():
    encoder = small_encoder("fastformer", num_layers=4, layerdrop_prob=0.99, output_hidden_states=True)
    x = torch.randn(1, 8, 32)
    _, _, hidden = encoder.train()(x)
    assert sum(torch.equal(a, b) for a, b in zip(hidden, hidden[1:])) >= 2
    _, _, hidden = encoder.eval()(x)
    assert not any(torch.equal(a, b) for a, b in zip(hidden, hidden[1:]))
    with pytest.raises(ValueError, match="layerdrop_prob"):
        MixerConformerEncoder(1, 32, 64, 4, layerdrop_prob=1.0)


def test_mixer_given_as_a_class():
    encoder = MixerConformerEncoder(2, 32, 64, 4, mixer=Fastformer, mixer_kwargs={"share_query_value": False})
    mixers = [layer.mha_layer for layer in encoder.layers]
    assert all(isinstance(mixer, Fastformer) and mixer.value is not None for mixer in mixers)
    assert encoder(torch.randn(2, 5, 32))[0].shape == (2, 5, 32)


def test_encoder_refuses_bad_configurations():
    with pytest.raises(ValueError, match="unknown mixer 'attention'"):
        MixerConformerEncoder(2, 32, 64, 4, mixer="attention")
    with pytest.raises(ValueError, match="d_model=30 is not divisible by nhead=4"):
        MixerConformerEncoder(2, 30, 64, 4, mixer="mhsa")
    with pytest.raises(ValueError, match=r"\(batch, time\) = \(2, 5\)"):
        small_encoder("mamba")(torch.randn(2, 5, 32), src_key_padding_mask=torch.zeros(5, 2, dtype=torch.bool))


def recipe_settings(size, name):
    """num_encoder_layers, d_model, d_ffn, nhead of a shipped BEST-RQ recipe YAML."""
    text = (HPARAMS / size / f"{name}.yaml").read_text()
    keys = ("num_encoder_layers", "d_model", "d_ffn", "nhead")
    return [int(re.search(rf"^{key}: (\d+)", text, re.M).group(1)) for key in keys]


def count_parameters(size, name):
    layers, d_model, d_ffn, nhead = recipe_settings(size, name)
    with torch.device("meta"):  # sizes only: nothing is allocated
        encoder = MixerConformerEncoder(layers, d_model, d_ffn, nhead, mixer=name)
    return sum(p.numel() for p in encoder.parameters())


def test_recipe_widths_are_the_papers():
    widths = {name: recipe_settings("base", name)[1] for name in PAPER_BASE_WIDTHS}
    assert widths == PAPER_BASE_WIDTHS


@pytest.mark.parametrize("size", ["base", "large"])
@pytest.mark.parametrize("name", [n for n in MIXERS if n != "mhsa"])
def test_recipe_widths_equalise_parameters(size, name):
    reference = count_parameters(size, "mhsa")
    count = count_parameters(size, name)
    assert (85e6 < reference < 92e6) if size == "base" else (300e6 < reference < 340e6)
    assert abs(count / reference - 1) < 0.03, (name, count, reference)


def _layerdrop_worker(rank: int, world_size: int, port: int, seed: int, queue) -> None:
    """One DDP process: the blocks LayerDrop runs in three training steps (a block that ran is hooked)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(seed)  # the same seed on every rank, as SpeechBrain's seed_everything
        encoder = MixerConformerEncoder(12, 16, 32, 2, mixer="fastformer", kernel_size=3, layerdrop_prob=0.5).train()
        ran: list[int] = []
        for index, layer in enumerate(encoder.layers):
            layer.register_forward_hook(lambda module, args, out, index=index: ran.append(index))
        steps = []
        for _ in range(3):
            ran.clear()
            encoder(torch.randn(1, 6, 16))
            steps.append(list(ran))
        queue.put((rank, steps, torch.rand(()).item()))
    finally:
        dist.destroy_process_group()


def _layerdrop_run(seed: int, port: int) -> dict:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_layerdrop_worker, args=(2, port, seed, queue), nprocs=2, start_method="spawn")
    results = [queue.get() for _ in range(2)]
    return {rank: (steps, after) for rank, steps, after in results}


def test_layerdrop_draws_differ_across_ranks_and_repeat_across_reruns():
    """Under 2-process DDP each rank skips its own blocks (as the paper's per-GPU draws), the same ones
    again in a rerun with the seed, and the ranks' global random streams stay in step."""
    first = _layerdrop_run(seed=7, port=29561)
    again = _layerdrop_run(seed=7, port=29562)
    assert first == again
    (steps0, after0), (steps1, after1) = first[0], first[1]
    assert steps0 != steps1
    assert all(0 < len(ran) < 12 for ran in steps0 + steps1)
    assert after0 == after1  # both ranks consumed the same draws
