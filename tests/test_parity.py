"""Our mixers against the SpeechBrain modules they reproduce, loaded with the same weights."""

import pytest
import torch
from speechbrain.lobes.models.transformer.Transformer import PositionalEncoding
from speechbrain.nnet.attention import RelPosEncXL, RelPosMHAXL, RoPEMHA
from speechbrain.nnet.hypermixing import HyperMixing as SpeechBrainHyperMixing

from speechbrain_ext.mixers._common import absolute_sinusoids, relative_sinusoids
from speechbrain_ext.mixers.hypermixing import HyperMixing
from speechbrain_ext.mixers.mhsa import RelPosMHSA
from speechbrain_ext.mixers.mhsa_flash import FlashMHSA


def padding_mask(lengths, max_len):
    return torch.arange(max_len).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


@pytest.mark.parametrize("length", [1, 17, 2999])
def test_positions_match_speechbrain_tables(length):
    torch.testing.assert_close(
        absolute_sinusoids(length, 64, torch.device("cpu")), PositionalEncoding(64, 3000).pe[:, :length]
    )
    torch.testing.assert_close(relative_sinusoids(length, 64, torch.device("cpu")), RelPosEncXL(64).make_pe(length))


@pytest.mark.parametrize("tied,fix_tm_hidden_size", [(False, False), (True, False), (False, True)])
def test_hypermixing_matches_speechbrain(tied, fix_tm_hidden_size):
    reference = SpeechBrainHyperMixing(48, 96, tied=tied, num_heads=4, fix_tm_hidden_size=fix_tm_hidden_size)
    ours = HyperMixing(48, 4, hypernet_size=96, tied=tied, fix_tm_hidden_size=fix_tm_hidden_size)
    ours.load_state_dict(reference.state_dict())  # strict: SpeechBrain's position table is dropped
    x = torch.randn(3, 70, 48)
    mask = padding_mask([70, 52, 9], 70)
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": mask}):
            expected, _ = reference(x, x, x, **kwargs)
            out, attn = ours(x, x, x, **kwargs)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
            assert attn is None


def test_hypermixing_runs_past_speechbrain_position_limit():
    ours = HyperMixing(16, 4, hypernet_size=32)
    x = torch.randn(1, 5000, 16)
    with torch.no_grad():
        out, _ = ours(x, x, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(RuntimeError):  # SpeechBrain's table has 3000 rows
        SpeechBrainHyperMixing(16, 32, num_heads=4)(x, x, x)


def test_mhsa_matches_relposmhaxl():
    reference = RelPosMHAXL(embed_dim=48, num_heads=4, dropout=0.1).eval()
    ours = RelPosMHSA(48, 4).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 45, 48)
    mask = padding_mask([45, 30, 2], 45)
    pos_embs = RelPosEncXL(48)(x)
    with torch.no_grad():
        expected, _ = reference(x, x, x, pos_embs, key_padding_mask=mask)
        given, attn = ours(x, x, x, key_padding_mask=mask, pos_embs=pos_embs)
        computed, _ = ours(x, x, x, key_padding_mask=mask)  # positions made by the mixer itself
    torch.testing.assert_close(given, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(computed, expected, atol=1e-5, rtol=1e-5)
    assert attn is None


@pytest.mark.parametrize("value_bias", [False, True])
def test_mhsa_flash_matches_ropemha_on_valid_frames(value_bias):
    reference = RoPEMHA(48, 4, vbias=value_bias).eval()
    if value_bias:
        torch.nn.init.normal_(reference.value_bias_weight)
    ours = FlashMHSA(48, 4, value_bias=value_bias).eval()
    ours.load_state_dict(reference.state_dict())  # strict: the same parameters
    x = torch.randn(3, 70, 48)
    mask = padding_mask([70, 41, 9], 70)
    with torch.no_grad():
        expected, _ = reference(x, x, x, key_padding_mask=mask)
        got, _ = ours(x, x, x, key_padding_mask=mask)
    valid = ~mask
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-4)


def test_ropemha_pays_quadratic_memory_for_padding_and_mhsa_flash_does_not():
    from conftest import LargestTensor

    length = 1024
    x = torch.randn(2, length, 32)
    mask = padding_mask([length, 1000], length)
    for module, quadratic in ((RoPEMHA(32, 4), True), (FlashMHSA(32, 4), False)):
        with torch.no_grad(), LargestTensor() as largest:
            module(x, x, x, key_padding_mask=mask)
        assert (largest.numel >= length * length) == quadratic, (type(module).__name__, largest.op)
