"""Masks honoured or refused: causal variants never read later frames; the others raise on a mask."""

import pytest
import torch
from conftest import SMALL_MIXER_KWARGS, small_mixer
from speechbrain.lobes.models.transformer.Transformer import get_lookahead_mask

from speechbrain_ext.mixers import build_mixer
from speechbrain_ext.sizes import paper_mixer_kwargs

D, H, T = 32, 4, 30
CAUSAL_MIXERS = ["summarymixing", "fastformer", "mamba"]


def causal_variants():
    """(id, mixer, use_mask): every causal-capable mixer in its default and its paper form,
    made causal by ``causal=True`` and by SpeechBrain's causal attn_mask; mhsa by the mask."""
    out = [("mhsa-mask", small_mixer("mhsa"), True)]
    for name in CAUSAL_MIXERS:
        for form, kwargs in (("default", SMALL_MIXER_KWARGS[name]), ("paper", paper_mixer_kwargs(name, D))):
            kwargs = dict(kwargs)
            if name == "summarymixing" and form == "paper":
                kwargs.update(local_hidden=16, local_out=16, summary_hidden=16)
            out.append((f"{name}-{form}-option", build_mixer(name, D, H, causal=True, **kwargs).eval(), False))
            if name != "mamba":
                out.append((f"{name}-{form}-mask", build_mixer(name, D, H, **kwargs).eval(), True))
            else:
                out.append((f"{name}-{form}-option+mask", build_mixer(name, D, H, causal=True, **kwargs).eval(), True))
    lite = build_mixer("summarymixing", D, H, mode="lite", summary_out=24, causal=True).eval()
    out.append(("summarymixing-lite-option", lite, False))
    return out


VARIANTS = causal_variants()


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("padded", [False, True])
def test_output_at_t_ignores_later_frames(variant, padded):
    _, mixer, use_mask = variant
    torch.manual_seed(0)
    x = torch.randn(2, T, D)
    padding = None
    if padded:
        padding = torch.arange(T).unsqueeze(0) >= torch.tensor([[T], [T - 7]])
    mask = get_lookahead_mask(x) if use_mask else None
    with torch.no_grad():
        reference, _ = mixer(x, x, x, attn_mask=mask, key_padding_mask=padding)
        for t in (0, 5, 17):
            changed = x.clone()
            changed[:, t + 1:] = torch.randn_like(changed[:, t + 1:]) * 50
            out, _ = mixer(changed, changed, changed, attn_mask=mask, key_padding_mask=padding)
            torch.testing.assert_close(out[:, : t + 1], reference[:, : t + 1], atol=1e-5, rtol=1e-4)
            assert not torch.allclose(out[:, t + 1:], reference[:, t + 1:])


@pytest.mark.parametrize("name", CAUSAL_MIXERS)
def test_non_causal_forms_see_the_future(name):
    """The default (non-causal) forms really are full-context, so the test above checks something."""
    mixer = small_mixer(name)
    x = torch.randn(1, T, D)
    changed = x.clone()
    changed[:, -1] += 10
    with torch.no_grad():
        assert not torch.allclose(mixer(x, x, x)[0][:, 0], mixer(changed, changed, changed)[0][:, 0])


def test_causal_fastformer_survives_huge_future_logits():
    """The cumulative softmax is taken in the log domain: a huge later logit cannot underflow earlier frames."""
    mixer = build_mixer("fastformer", D, H, causal=True).eval()
    x = torch.randn(1, T, D)
    changed = x.clone()
    changed[:, 10:] = 1e4
    with torch.no_grad():
        a, b = mixer(x, x, x)[0], mixer(changed, changed, changed)[0]
    assert torch.isfinite(b).all()
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=1e-5, rtol=1e-4)


def test_causal_mixers_train():
    for name in CAUSAL_MIXERS:
        mixer = build_mixer(name, D, H, causal=True, **SMALL_MIXER_KWARGS[name])
        x = torch.randn(2, T, D)
        mixer(x, x, x)[0].square().mean().backward()
        for pname, p in mixer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, pname)


@pytest.mark.parametrize("name", ["hypermixing", "mhsa_flash", "mamba"])
def test_mixers_that_cannot_honour_a_causal_mask_refuse_it(name):
    mixer = small_mixer(name)
    x = torch.randn(1, T, D)
    with pytest.raises(ValueError, match=f"{name}.*cannot honour this attn_mask.*causal mask"):
        mixer(x, x, x, attn_mask=get_lookahead_mask(x))


@pytest.mark.parametrize("name", CAUSAL_MIXERS + ["hypermixing"])
def test_other_masks_are_refused_with_what_is_supported(name):
    causal = {} if name == "hypermixing" else {"causal": True}
    mixer = build_mixer(name, D, H, **causal, **SMALL_MIXER_KWARGS[name])
    x = torch.randn(1, T, D)
    chunks = torch.ones(T, T, dtype=torch.bool)
    for start in range(0, T, 8):  # dynamic-chunk style: full context inside chunks of 8
        chunks[start:start + 8, : start + 8] = False
    # SpeechBrain's chunk mask is read as its DynChunkTrainConfig (tests/test_streaming.py), which these refuse
    with pytest.raises(ValueError, match="cannot run in chunks|causal=True reads frames 0..t only"):
        mixer(x, x, x, attn_mask=chunks)
    lookahead = torch.ones(T, T, dtype=torch.bool).triu(3)  # two frames of look-ahead
    with pytest.raises(ValueError, match="neither empty nor causal.*supports"):
        mixer(x, x, x, attn_mask=lookahead)
    soft = torch.randn(T, T)
    with pytest.raises(ValueError, match="finite non-zero"):
        mixer(x, x, x, attn_mask=soft)


@pytest.mark.parametrize("name", ["hypermixing", "summarymixing", "fastformer", "mamba", "mhsa_flash"])
def test_an_empty_mask_is_full_context(name):
    mixer = small_mixer(name)
    x = torch.randn(1, T, D)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, x, x, attn_mask=torch.zeros(T, T))[0], mixer(x, x, x)[0])


def test_causal_mamba_has_one_direction_and_refuses_concat():
    assert build_mixer("mamba", D, 1, causal=True).backward_block is None
    with pytest.raises(ValueError, match="merge must be 'add'"):
        build_mixer("mamba", D, 1, causal=True, merge="concat")


def test_every_mixer_shares_the_sequence_mixer_checks():
    from speechbrain_ext.mixers import MIXERS
    from speechbrain_ext.mixers._common import SequenceMixer

    x = torch.randn(1, 5, D)
    for name, cls in MIXERS.items():
        assert issubclass(cls, SequenceMixer), name
        mixer = small_mixer(name)
        assert mixer.mixer_name.startswith(name), name
        with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(batch, time\)"):
            mixer(x, x, x, key_padding_mask=torch.zeros(1, 4, dtype=torch.bool))
