"""Dynamic chunks and streaming: no frame reads a later chunk (nor, with a limited left context, an earlier one
than allowed), streaming with the carried context equals the chunked forward, padding changes nothing, and a
mixer without a chunked form says so."""

import pytest
import torch
from conftest import SMALL_MIXER_KWARGS, LargestTensor, small_mixer
from speechbrain.core import Stage
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig, DynChunkTrainConfigRandomSampler

from speechbrain_ext.mixers import MIXERS
from speechbrain_ext.models.encoder import MixerConformerEncoder
from speechbrain_ext.models.speech_encoder import SpeechEncoder

D, H, T = 32, 4, 23
CHUNKED = ["summarymixing", "fastformer", "mamba", "mhsa"]
LIMITED = ["summarymixing", "mhsa"]  # the mixers that honour a limited left context too
# (chunk size, left context in chunks): 1-frame chunks, no left context, limited and unlimited ones; T = 23 leaves a
# shorter last chunk for every size but 1.
CONFIGS = [(1, None), (1, 2), (4, 0), (4, 2), (5, None), (8, 1)]


def configs_of(name):
    """The configurations a mixer honours (Mamba's forward scan and Fastformer's pooled queries carry the whole
    past: unlimited left context only)."""
    return [DynChunkTrainConfig(c, left) for c, left in CONFIGS if name in LIMITED or left is None]


CASES = [(name, config) for name in CHUNKED for config in configs_of(name)]
IDS = [f"{name}-{config.chunk_size}x{config.left_context_size}" for name, config in CASES]


def tiny_encoder(name, **kwargs):
    """Two blocks, a short convolution kernel; absolute input positions for the linear mixers (as the paper's)."""
    positions = None if name == "mhsa" else "absolute"
    return MixerConformerEncoder(2, D, 64, H, mixer=name, kernel_size=7, mixer_kwargs=SMALL_MIXER_KWARGS[name],
                                 input_positions=positions, **kwargs).eval()


def stream(encoder, x, config, sizes=None):
    """x (B, T, E) through ``forward_streaming`` in chunks of ``config.chunk_size`` frames."""
    context = encoder.make_streaming_context(config)
    step = config.chunk_size
    outs = [encoder.forward_streaming(x[:, i:i + step], context)[0] for i in range(0, x.shape[1], step)]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("name,config", CASES, ids=IDS)
def test_streaming_equals_the_chunked_forward(name, config):
    encoder = tiny_encoder(name)
    x = torch.randn(2, T, D)
    with torch.no_grad():
        chunked, _ = encoder(x, dynchunktrain_config=config)
        streamed = stream(encoder, x, config)
    torch.testing.assert_close(streamed, chunked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,config", CASES, ids=IDS)
def test_no_frame_reads_a_later_chunk(name, config):
    encoder = tiny_encoder(name)
    x = torch.randn(1, T, D)
    with torch.no_grad():
        reference, _ = encoder(x, dynchunktrain_config=config)
        chunks = -(-T // config.chunk_size)
        for chunk in sorted({0, chunks // 2, chunks - 2}):
            end = (chunk + 1) * config.chunk_size
            changed = x.clone()
            changed[:, end:] = torch.randn_like(changed[:, end:]) * 30
            out, _ = encoder(changed, dynchunktrain_config=config)
            torch.testing.assert_close(out[:, :end], reference[:, :end], atol=1e-5, rtol=0)
            assert not torch.allclose(out[:, end:], reference[:, end:])
        # Within its chunk a frame reads later frames (chunks are not causality).
        if config.chunk_size > 1:
            changed = x.clone()
            changed[:, config.chunk_size - 1] += 5 * torch.randn(D)
            assert not torch.allclose(encoder(changed, dynchunktrain_config=config)[0][:, 0], reference[:, 0])


@pytest.mark.parametrize("name", LIMITED)
@pytest.mark.parametrize("chunk,left", [(1, 0), (3, 1), (4, 2)])
def test_a_limited_left_context_is_the_limit(name, chunk, left):
    """A mixer's output in chunk c does not change with frames before chunk c - left, and does with those after."""
    mixer = small_mixer(name)
    config = DynChunkTrainConfig(chunk, left)
    x = torch.randn(1, T, D)
    with torch.no_grad():
        reference, _ = mixer(x, x, x, dynchunktrain_config=config)
        c = T // chunk - 1
        first = (c - left) * chunk  # the first frame chunk c may read
        changed = x.clone()
        changed[:, :first] = torch.randn_like(changed[:, :first]) * 30
        out, _ = mixer(changed, changed, changed, dynchunktrain_config=config)
        torch.testing.assert_close(out[:, c * chunk:(c + 1) * chunk], reference[:, c * chunk:(c + 1) * chunk],
                                   atol=1e-5, rtol=0)
        changed = x.clone()
        changed[:, first] += 5 * torch.randn(D)
        out, _ = mixer(changed, changed, changed, dynchunktrain_config=config)
        assert not torch.allclose(out[:, c * chunk], reference[:, c * chunk])


@pytest.mark.parametrize("name", ["summarymixing", "mhsa"])
@pytest.mark.parametrize("chunk,left", [(1, None), (4, 1), (5, None)])
def test_a_chunk_reads_what_full_context_would_over_its_window(name, chunk, left):
    """SummaryMixing and attention over the allowed frames are the full-context mixer on those frames alone."""
    mixer = small_mixer(name)
    x = torch.randn(1, T, D)
    with torch.no_grad():
        out, _ = mixer(x, x, x, dynchunktrain_config=DynChunkTrainConfig(chunk, left))
        for c in range(-(-T // chunk)):
            first = 0 if left is None else max(0, (c - left) * chunk)
            window = x[:, first:min((c + 1) * chunk, T)]
            alone, _ = mixer(window, window, window)
            torch.testing.assert_close(out[:, c * chunk:(c + 1) * chunk], alone[:, c * chunk - first:],
                                       atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CHUNKED)
def test_one_chunk_with_unlimited_context_is_full_context(name):
    encoder = tiny_encoder(name)
    x = torch.randn(2, T, D)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x, dynchunktrain_config=DynChunkTrainConfig(T, None))[0],
                                   encoder(x)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,config", CASES, ids=IDS)
def test_chunks_are_padding_invariant(name, config):
    """An utterance encodes the same alone as beside a longer one, whatever its padding holds."""
    encoder = tiny_encoder(name)
    short, long = torch.randn(1, 13, D), torch.randn(1, T, D)
    batch = torch.cat([torch.cat([short, torch.full((1, T - 13, D), 1e4)], dim=1), long])
    padding = torch.arange(T).unsqueeze(0) >= torch.tensor([[13], [T]])
    with torch.no_grad():
        alone, _ = encoder(short, dynchunktrain_config=config)
        padded, _ = encoder(batch, src_key_padding_mask=padding, dynchunktrain_config=config)
    torch.testing.assert_close(padded[:1, :13], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CHUNKED)
def test_chunked_training_reaches_every_parameter_and_runs_in_autocast(name):
    encoder = tiny_encoder(name).train()
    config = DynChunkTrainConfig(4, 1 if name in LIMITED else None)
    out, _ = encoder(torch.randn(2, T, D), dynchunktrain_config=config)
    out.square().mean().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = encoder(torch.randn(2, T, D), dynchunktrain_config=config)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", ["summarymixing", "fastformer", "mamba"])
def test_linear_mixers_in_chunks_allocate_nothing_quadratic(name):
    mixer = small_mixer(name).train()
    length = 600
    x = torch.randn(1, length, D, requires_grad=True)
    with LargestTensor() as recorder:
        mixer(x, x, x, dynchunktrain_config=DynChunkTrainConfig(8, 2 if name in LIMITED else None))[0].sum().backward()
    assert recorder.numel < length * length, recorder.op


def test_srcmask_from_transformerasr_is_accepted():
    """TransformerASR.encode passes SpeechBrain's chunk mask beside the config: the same chunks."""
    encoder = tiny_encoder("summarymixing")
    x, config = torch.randn(1, T, D), DynChunkTrainConfig(4, 1)
    with torch.no_grad():
        masked, _ = encoder(x, src_mask=make_transformer_src_mask(x, dynchunktrain_config=config),
                            dynchunktrain_config=config)
        torch.testing.assert_close(masked, encoder(x, dynchunktrain_config=config)[0])
    with pytest.raises(ValueError, match="chunk mask"):
        encoder(x, src_mask=make_transformer_src_mask(x, dynchunktrain_config=DynChunkTrainConfig(2, 1)),
                dynchunktrain_config=config)


def test_mixers_without_a_chunked_form_say_so():
    x = torch.randn(1, T, D)
    config = DynChunkTrainConfig(4, 1)
    with pytest.raises(ValueError, match="hypermixing cannot run in chunks.*no chunked form; chunked mixers: "
                                         "fastformer, mamba, mhsa, summarymixing"):
        small_mixer("hypermixing")(x, x, x, dynchunktrain_config=config)
    with pytest.raises(ValueError, match="hypermixing cannot run in chunks"):
        MixerConformerEncoder(1, D, 64, H, mixer="hypermixing", mixer_kwargs={"hypernet_size": 64})(
            x, dynchunktrain_config=config)
    with pytest.raises(ValueError, match="mhsa_flash cannot run in chunks"):
        small_mixer("mhsa_flash")(x, x, x, dynchunktrain_config=config)
    for name in ("mamba", "fastformer"):
        with pytest.raises(ValueError, match=f"{name}.*only unlimited left context"):
            small_mixer(name)(x, x, x, dynchunktrain_config=config)
    with pytest.raises(ValueError, match=r"causal=True\) cannot also run in chunks"):
        MixerConformerEncoder(1, D, 64, H, mixer="fastformer", causal=True)(x, dynchunktrain_config=config)
    with pytest.raises(ValueError, match="either an attn_mask or a dynchunktrain_config"):
        small_mixer("summarymixing")(x, x, x, attn_mask=torch.zeros(T, T, dtype=torch.bool),
                                     dynchunktrain_config=config)
    declared = {name: cls.dynchunk_left_contexts for name, cls in MIXERS.items()}
    assert declared == {"mhsa": ("limited", "unlimited"), "mhsa_flash": (), "hypermixing": (),
                        "fastformer": ("unlimited",), "summarymixing": ("limited", "unlimited"),
                        "mamba": ("unlimited",)}


def test_a_stream_takes_full_chunks_until_a_shorter_last_one():
    encoder = tiny_encoder("summarymixing")
    context = encoder.make_streaming_context(DynChunkTrainConfig(4, 1))
    with pytest.raises(ValueError, match="1 to chunk_size=4 frames"):
        encoder.forward_streaming(torch.randn(1, 5, D), context)
    encoder.forward_streaming(torch.randn(1, 3, D), context)
    with pytest.raises(ValueError, match="ended this stream"):
        encoder.forward_streaming(torch.randn(1, 4, D), context)


def test_the_cost_per_chunk_of_a_linear_mixer_does_not_grow():
    """The carried context of a linear mixer has the same size after 3 chunks as after 30; MHSA's unlimited one
    grows with the stream."""
    def context_numel(name, chunks):
        encoder = tiny_encoder(name)
        context = encoder.make_streaming_context(DynChunkTrainConfig(4, None))
        with torch.no_grad():
            for _ in range(chunks):
                encoder.forward_streaming(torch.randn(1, 4, D), context)
        tensors = []

        def collect(value):
            if isinstance(value, torch.Tensor):
                tensors.append(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    collect(item)
            elif hasattr(value, "__dataclass_fields__"):
                for key in value.__dataclass_fields__:
                    collect(getattr(value, key))
        collect(context.layers)
        return sum(t.numel() for t in tensors)

    for name in ("summarymixing", "fastformer", "mamba"):
        assert context_numel(name, 2) == context_numel(name, 8), name
    assert context_numel("mhsa", 8) > 2 * context_numel("mhsa", 2)


@pytest.mark.parametrize("name", CHUNKED)
def test_a_speech_encoder_streams_audio_in_pieces_of_any_size(name):
    """Waveform pieces of any size in: the frames of the chunked forward over the whole recording out."""
    encoder = SpeechEncoder(name, num_layers=2, d_model=D, d_ffn=64, nhead=H,
                            mixer_kwargs=SMALL_MIXER_KWARGS[name]).eval()
    encoder.normalize.mean.normal_()
    encoder.normalize.std.uniform_(0.5, 2.0)
    wav = torch.randn(1, 16000 + 123)
    config = DynChunkTrainConfig(3, 1 if name in LIMITED else None)
    with torch.no_grad():
        reference = encoder(wav, torch.ones(1), dynchunktrain_config=config).out
        context = encoder.make_streaming_context(config)
        outs, start = [], 0
        for size in (100, 1000, 37, 5000, 0, 3000, 640, 4000):
            outs.append(encoder.forward_streaming(wav[:, start:start + size], context))
            start += size
        outs.append(encoder.forward_streaming(wav[:, start:], context, final=True))
    torch.testing.assert_close(torch.cat(outs, dim=1), reference, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="has ended"):
        encoder.forward_streaming(wav[:, :10], context)
    with pytest.raises(ValueError, match="eval mode"):
        encoder.train().forward_streaming(wav[:, :10], encoder.make_streaming_context(config))


def test_speechbrains_sampler_drives_the_chunks():
    """The recipe's sampler: a random configuration per training batch, full context in validation and test."""
    sampler = DynChunkTrainConfigRandomSampler(chunkwise_prob=1.0, chunk_size_min=2, chunk_size_max=6,
                                               limited_left_context_prob=0.5, left_context_chunks_min=1,
                                               left_context_chunks_max=3)
    encoder = tiny_encoder("summarymixing").train()
    for _ in range(3):
        config = sampler(Stage.TRAIN)
        assert 2 <= config.chunk_size <= 6
        encoder(torch.randn(1, T, D), dynchunktrain_config=config)
    assert sampler(Stage.VALID) is None and sampler(Stage.TEST) is None


def test_the_exported_encoder_streams(tmp_path):
    """MixerEncoder (an exported folder) streams: encode_stream equals the chunked encode of the whole recording."""
    from speechbrain_ext.inference import MixerEncoder

    speech_encoder = SpeechEncoder("summarymixing", num_layers=2, d_model=D, d_ffn=64, nhead=H,
                                   mixer_kwargs=SMALL_MIXER_KWARGS["summarymixing"])
    speech_encoder.normalize.mean.normal_()
    folder = speech_encoder.save_pretrained(tmp_path / "encoder")
    encoder = MixerEncoder.from_hparams(source=str(folder))
    config = DynChunkTrainConfig(4, 2)
    assert encoder.get_chunk_size_frames(config) == 4 * 640
    wav = torch.randn(1, 24000)
    with torch.no_grad():
        reference = encoder.mods.encoder(wav, torch.ones(1), dynchunktrain_config=config).out
    torch.testing.assert_close(encoder.encode_stream(wav, config), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode_stream(wav[0], config, piece=999), reference, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("mixer", CHUNKED)
def test_streaming_recipe_trains_exports_and_the_export_streams(mixer, tmp_path):
    """hparams/base/streaming/<mixer>.yaml trains a few steps on the toy corpus (every batch in chunks), exports,
    and the exported encoder streams as it encodes in chunks."""
    import subprocess
    import sys
    from pathlib import Path

    from speechbrain_ext.data.toy import write_toy_librispeech
    from speechbrain_ext.inference import MixerEncoder

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "LibriSpeech" / "BEST-RQ"
    corpus = write_toy_librispeech(tmp_path / "toy", splits=("train-clean-100", "dev-clean"), speakers_per_split=1,
                                   chapters_per_speaker=1, utterances_per_chapter=3, seed=3)
    out = tmp_path / "out"
    tiny = ["--d_model=32", "--num_encoder_layers=1", "--d_ffn=64", "--nhead=4", "--cb_vocab=64", "--precision=fp32",
            "--num_workers=0", "--seconds_per_batch=12", "--num_buckets=2", "--grad_accumulation_factor=1",
            "--avoid_if_shorter_than=1.0", "--log_interval=1", "--warmup_steps=10", "--number_of_epochs=1",
            "--optimizer_step_limit=2", "--train_splits=[train-clean-100]", "--valid_splits=[dev-clean]",
            "--chunkwise_prob=1.0", "--chunk_size_min=2", "--chunk_size_max=5", "--left_context_chunks_min=1",
            "--left_context_chunks_max=3"]
    result = subprocess.run([sys.executable, str(recipe / "train.py"), str(recipe / "hparams/base/streaming" /
                             f"{mixer}.yaml"), f"--data_folder={corpus}", f"--output_folder={out}", *tiny],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "optimizer step: 2" in (out / "train_log.txt").read_text()
    encoder = MixerEncoder.from_hparams(source=str(out / "encoder"))
    config = DynChunkTrainConfig(4, 2 if mixer in LIMITED else None)
    wav = torch.randn(1, 20000)
    with torch.no_grad():
        reference = encoder.mods.encoder(wav, torch.ones(1), dynchunktrain_config=config).out
    torch.testing.assert_close(encoder.encode_stream(wav, config, piece=1234), reference, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_the_bench_streaming_mode_runs_on_the_cpu_and_writes_its_table(tmp_path):
    """``python -m speechbrain_ext.bench --protocol streaming``: a point per mixer and stream length, the linear
    mixers' carried state the same size at every length, unlimited attention's growing, a too-large one not run."""
    import json

    from speechbrain_ext.bench.speed_memory import main

    points = main(["--protocol", "streaming", "--layers", "1", "--chunk", "4", "--stream-seconds", "1", "10", "60",
                   "--repeats", "1", "--max-scores-gib", "0.05", "--output", str(tmp_path)])
    assert len(points) == 6 * 3
    table = (tmp_path / "results.md").read_text()
    assert "| summarymixing:32 |" in table and "10 s: ms/chunk (RTF), state MiB" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["command"].startswith("python -m speechbrain_ext.bench --protocol streaming")
    by = {(p["mixer"], p["stream_seconds"]): p for p in points}
    for name in ("summarymixing", "fastformer", "mamba", "summarymixing:32"):
        assert by[name, 1]["state_mib"] == by[name, 60]["state_mib"] and by[name, 60]["rtf"] > 0
    assert by["mhsa", 10]["state_mib"] > 5 * by["mhsa", 1]["state_mib"]
    assert "not run" in by["mhsa", 60]["error"] and "not run" in table


@pytest.mark.parametrize("name", ["summarymixing", "fastformer", "mamba"])
def test_speechbrains_chunk_mask_is_read_as_its_config(name):
    """In SpeechBrain's own Conformer (replace_attention), TransformerASR.encode passes the chunk mask as
    attn_mask: a mixer runs in those chunks, as with the configuration itself."""
    from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR

    from speechbrain_ext.replace import replace_attention

    mixer, x = small_mixer(name), torch.randn(1, T, D)
    config = DynChunkTrainConfig(4, 1 if name in LIMITED else None)
    mask = make_transformer_src_mask(x, dynchunktrain_config=config)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, x, x, attn_mask=mask)[0], mixer(x, x, x, dynchunktrain_config=config)[0])
    asr = TransformerASR(tgt_vocab=10, input_size=20, d_model=D, nhead=H, num_encoder_layers=2, num_decoder_layers=1,
                         d_ffn=64, kernel_size=5, encoder_module="conformer", attention_type="RelPosMHAXL",
                         normalize_before=True, causal=False, dropout=0.0)
    asr = replace_attention(asr, name, mixer_kwargs=SMALL_MIXER_KWARGS[name]).eval()
    feats = torch.randn(1, 16, 20)
    with torch.no_grad():
        reference = asr.encode(feats, torch.ones(1), dynchunktrain_config=config)
        changed = feats.clone()
        changed[:, 8:] = torch.randn_like(changed[:, 8:]) * 10
        out = asr.encode(changed, torch.ones(1), dynchunktrain_config=config)
    torch.testing.assert_close(out[:, :8], reference[:, :8], atol=1e-5, rtol=0)
