"""SpeechEncoder export/import, BestRQ loss, and the audio dataset's handling of bad files."""

import csv

import pytest
import torch
from conftest import SMALL_MIXER_KWARGS, write_bad_audio

from speechbrain_ext.bestrq.masking import compute_span_mask
from speechbrain_ext.bestrq.model import BestRQ
from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.data.toy import write_toy_librispeech
from speechbrain_ext.mixers import MIXERS
from speechbrain_ext.models.speech_encoder import SpeechEncoder


def tiny_encoder(mixer, **kwargs):
    return SpeechEncoder(
        mixer, num_layers=2, d_model=32, d_ffn=64, nhead=4, mixer_kwargs=SMALL_MIXER_KWARGS[mixer], **kwargs
    )


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_exported_encoder_rebuilds_from_its_folder_alone(mixer, tmp_path):
    encoder = tiny_encoder(mixer).eval()
    encoder.save_pretrained(tmp_path / "encoder")
    restored = SpeechEncoder.from_pretrained(tmp_path / "encoder").eval()
    wavs, lens = torch.randn(2, 12000), torch.tensor([1.0, 0.6])
    with torch.no_grad():
        expected = encoder(wavs, lens, output_hidden_states=True)
        got = restored(wavs, lens, output_hidden_states=True)
    torch.testing.assert_close(got.out, expected.out)
    assert len(got.hidden) == 3
    assert got.padding_mask[1].sum() > 0 and not got.padding_mask[0].any()


def test_missing_or_incomplete_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder_config.json, encoder.ckpt"):
        SpeechEncoder.from_pretrained(tmp_path / "nowhere")
    tiny_encoder("fastformer").save_pretrained(tmp_path / "partial")
    (tmp_path / "partial" / "encoder.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="missing encoder.ckpt"):
        SpeechEncoder.from_pretrained(tmp_path / "partial")


def test_utterance_encodes_the_same_alone_and_padded():
    encoder = tiny_encoder("mamba").eval()
    wav = torch.randn(1, 16000)
    batch = torch.cat([torch.cat([wav, torch.zeros(1, 8000)], dim=1), torch.randn(1, 24000)])
    with torch.no_grad():
        alone = encoder(wav, torch.tensor([1.0])).out
        padded = encoder(batch, torch.tensor([16000 / 24000, 1.0])).out
    torch.testing.assert_close(padded[0, : alone.shape[1]], alone[0], atol=1e-4, rtol=1e-4)


def test_bestrq_learns_on_a_fixed_batch():
    torch.manual_seed(0)
    model = BestRQ(tiny_encoder("summarymixing"), cb_vocab=64, quantizer_seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    wavs, lens = torch.randn(3, 16000), torch.tensor([1.0, 0.8, 0.5])
    losses = []
    for _ in range(30):
        out = model(wavs, lens)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert out.num_masked > 0
    assert losses[-1] < 0.7 * losses[0]
    assert float(out.accuracy) > 10 / 64
    # The quantizer is frozen: no gradient reaches it and it has no parameters.
    assert not list(model.quantizer.parameters())


def test_audio_dataset_leaves_out_bad_files_with_a_count(tmp_path, caplog):
    root = write_toy_librispeech(tmp_path, splits=("dev-clean",), speakers_per_split=1,
                                 chapters_per_speaker=1, utterances_per_chapter=3)
    good = sorted(str(p) for p in root.rglob("*.flac"))
    bad = write_bad_audio(tmp_path, "bad")
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "duration", "wav"])
        for i, path in enumerate(good + sorted(bad)):
            writer.writerow([f"utt{i}", "1.0", path])
    report = tmp_path / "skipped.txt"
    dataset = audio_dataset([manifest], sample_rate=16000, min_duration=0.5, report_file=report)
    assert len(dataset) == len(good)
    assert all(dataset[i]["sig"].numel() > 8000 for i in range(len(dataset)))
    listed = dict(line.split("\t")[:2] for line in report.read_text().splitlines())
    assert listed == bad
    assert f"left out {len(bad)} of {len(good) + len(bad)} files" in caplog.text
    assert "empty=1" in caplog.text and "wrong_sample_rate=1" in caplog.text


def test_manifest_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="was the data preparation run"):
        audio_dataset([tmp_path / "none.csv"], sample_rate=16000)
    bad = write_bad_audio(tmp_path, "bad")
    manifest = tmp_path / "all_bad.csv"
    manifest.write_text("ID,duration,wav\n" + "".join(f"u{i},1.0,{p}\n" for i, p in enumerate(bad)))
    with pytest.raises(ValueError, match="no usable audio"):
        audio_dataset([manifest], sample_rate=16000, min_duration=0.5)


def test_target_counts_are_the_masked_frames_targets():
    torch.manual_seed(0)
    model = BestRQ(tiny_encoder("fastformer"), cb_vocab=64, quantizer_seed=0, num_codebooks=2)
    wavs, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.6])
    torch.manual_seed(1)
    out = model(wavs, lens)
    assert out.target_counts.shape == (64,) and int(out.target_counts.sum()) == out.num_masked
    # the same draw again, recomputing the first codebook's targets of the masked frames by hand
    torch.manual_seed(1)
    feats, lengths = model.speech_encoder.features(wavs, lens)
    span = model.speech_encoder.frames_per_token
    targets = model.quantizer(feats.reshape(2, feats.shape[1] // span, -1))[..., 0]
    mask = compute_span_mask(lengths, feats.shape[1], model.mask_prob, span, model.per_utterance_mask)
    expected = torch.bincount(targets[mask[:, ::span]], minlength=64)
    assert torch.equal(out.target_counts, expected)



def test_codebook_health_sees_a_forced_collapse():
    """Every code of the codebook made the same vector: every target is one code, usage 1/V, entropy 0."""
    from speechbrain_ext.bestrq.model import codebook_health

    torch.manual_seed(0)
    model = BestRQ(SpeechEncoder("fastformer", num_layers=1, d_model=32, d_ffn=64, nhead=4), cb_vocab=64,
                   per_utterance_mask=True)
    wavs, lens = torch.randn(3, 16000), torch.tensor([1.0, 0.8, 0.6])
    healthy = model(wavs, lens)
    health = codebook_health(healthy.target_counts, healthy.prediction_counts)
    assert health["codebook_usage"] > 0.2 and health["target_entropy"] > 2.0
    assert int(healthy.prediction_counts.sum()) == int(healthy.target_counts.sum()) == healthy.num_masked
    with torch.no_grad():
        model.quantizer.codebooks[:] = model.quantizer.codebooks[:, :1]
    collapsed = model(wavs, lens)
    health = codebook_health(collapsed.target_counts, collapsed.prediction_counts)
    assert health["codebook_usage"] == 1 / 64 and health["target_entropy"] == 0.0
    assert health["majority_code_share"] == 1.0
