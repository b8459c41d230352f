"""Tests of the toy corpora: LibriSpeech layout, determinism, learnable voices."""

import dataclasses
import re

import numpy as np
import pytest
import soundfile as sf

from speechbrain_ext.data.synth import VOCABULARY, ToyProsody, random_words, synthesize_utterance, toy_speaker
from speechbrain_ext.data.toy import write_toy_librispeech

SPLITS = ("train-clean-100", "dev-clean")
SIZES = {"speakers_per_split": 2, "chapters_per_speaker": 2, "utterances_per_chapter": 3}
LINE = re.compile(r"^(\d+)-(\d+)-(\d{4}) ([A-Z']+(?: [A-Z']+)*)$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return write_toy_librispeech(root, splits=SPLITS, seed=3, **SIZES)


def f0_median(wav: np.ndarray, sample_rate: int = 16000) -> float:
    """Median autocorrelation pitch (60-400 Hz) of the loud, periodic 40 ms frames."""
    n = int(0.04 * sample_rate)
    frames = np.lib.stride_tricks.sliding_window_view(wav, n)[:: n // 2]
    energy = (frames**2).mean(axis=1)
    lo, hi = sample_rate // 400, sample_rate // 60
    pitches = []
    for frame in frames[energy > 0.3 * energy.max()]:
        frame = frame - frame.mean()
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            pitches.append(sample_rate / lag)
    assert len(pitches) >= 5, "too few periodic frames: the audio is not voiced speech"
    return float(np.median(pitches))


def spectral_centroid(wav: np.ndarray, sample_rate: int = 16000) -> float:
    power = np.abs(np.fft.rfft(wav)) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1.0 / sample_rate)
    return float((power * freqs).sum() / power.sum())


def test_layout_and_transcripts_like_librispeech(corpus):
    assert corpus == corpus.parent / "LibriSpeech"
    assert sorted(p.name for p in corpus.iterdir()) == ["SPEAKERS.TXT", *sorted(SPLITS)]
    speakers_per_split = {}
    for split in SPLITS:
        speakers = sorted((corpus / split).iterdir())
        assert len(speakers) == SIZES["speakers_per_split"]
        speakers_per_split[split] = {p.name for p in speakers}
        for spk_dir in speakers:
            assert spk_dir.name.isdigit()
            chapters = sorted(spk_dir.iterdir())
            assert len(chapters) == SIZES["chapters_per_speaker"]
            for ch_dir in chapters:
                spk, ch = spk_dir.name, ch_dir.name
                n_utt = SIZES["utterances_per_chapter"]
                expected = [f"{spk}-{ch}-{u:04d}" for u in range(n_utt)]
                names = sorted(p.name for p in ch_dir.iterdir())
                assert names == sorted([f"{i}.flac" for i in expected] + [f"{spk}-{ch}.trans.txt"])
                text = (ch_dir / f"{spk}-{ch}.trans.txt").read_text()
                assert text.endswith("\n") and "\r" not in text
                ids = []
                for line in text.splitlines():
                    match = LINE.match(line)
                    assert match, f"bad transcript line {line!r}"
                    assert match.group(1, 2) == (spk, ch)
                    assert all(word in VOCABULARY for word in match.group(4).split())
                    ids.append(line.split()[0])
                assert ids == expected
                for utt_id in expected:
                    info = sf.info(str(ch_dir / f"{utt_id}.flac"))
                    assert (info.format, info.subtype) == ("FLAC", "PCM_16")
                    assert (info.samplerate, info.channels) == (16000, 1)
                    assert 1.0 <= info.duration <= 7.0
    # Speakers of different splits are disjoint, as in LibriSpeech, and listed.
    assert not speakers_per_split[SPLITS[0]] & speakers_per_split[SPLITS[1]]
    listed = (corpus / "SPEAKERS.TXT").read_text().splitlines()
    rows = {line.split("|")[0].strip(): line for line in listed if not line.startswith(";")}
    assert set(rows) == speakers_per_split[SPLITS[0]] | speakers_per_split[SPLITS[1]]
    assert all(f"| {split}" in rows[s] for split in SPLITS for s in speakers_per_split[split])


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path):
    kwargs = dict(splits=["dev-clean"], speakers_per_split=1, chapters_per_speaker=1)
    a = write_toy_librispeech(tmp_path / "a", utterances_per_chapter=2, seed=7, **kwargs)
    b = write_toy_librispeech(tmp_path / "b", utterances_per_chapter=2, seed=7, **kwargs)
    c = write_toy_librispeech(tmp_path / "c", utterances_per_chapter=2, seed=8, **kwargs)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 4  # 2 flac, trans.txt, SPEAKERS.TXT
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    flacs = [rel for rel in files if rel.suffix == ".flac"]
    for rel in flacs:
        wav_a, _ = sf.read(str(a / rel))
        wav_c, _ = sf.read(str(c / rel))
        assert not (len(wav_a) == len(wav_c) and np.allclose(wav_a, wav_c))
    # An utterance depends only on the seed and its ID, not on what else is written.
    d = write_toy_librispeech(tmp_path / "d", utterances_per_chapter=1, seed=7, **kwargs)
    assert (d / flacs[0]).read_bytes() == (a / flacs[0]).read_bytes()


def test_synthesis_is_deterministic_given_rng():
    speaker = toy_speaker("42", seed=0)
    one = synthesize_utterance(["GREAT", "WATER"], speaker, np.random.default_rng(5))
    two = synthesize_utterance(["GREAT", "WATER"], speaker, np.random.default_rng(5))
    three = synthesize_utterance(["GREAT", "WATER"], speaker, np.random.default_rng(6))
    np.testing.assert_array_equal(one, two)
    assert not (len(one) == len(three) and np.array_equal(one, three))
    assert one.dtype == np.float32 and np.abs(one).max() <= 1.0


def test_speakers_differ_in_pitch(corpus):
    # Speakers alternate F / M: the first two speakers of a split have clearly different f0.
    spk_dirs = sorted((corpus / "dev-clean").iterdir())
    medians = {}
    for spk_dir in spk_dirs:
        wavs = [sf.read(str(p))[0] for p in sorted(spk_dir.rglob("*.flac"))]
        per_utt = [f0_median(w) for w in wavs]
        voice = toy_speaker(spk_dir.name, seed=3, sex="F" if len(medians) == 0 else "M")
        for f0 in per_utt:  # each utterance is near the speaker's own f0
            assert 0.9 * voice.f0 < f0 < 1.3 * voice.f0
        medians[spk_dir.name] = np.median(per_utt)
    female, male = (medians[d.name] for d in spk_dirs)
    assert female > 1.3 * male


def test_vocal_tract_length_shifts_spectrum():
    base = toy_speaker("7", seed=0, sex="M")
    words = ["MANY", "PEOPLE", "LOOK", "WATER"]
    centroids = [
        spectral_centroid(
            synthesize_utterance(words, dataclasses.replace(base, formant_scale=s), np.random.default_rng(0))
        )
        for s in (0.85, 1.0, 1.2)
    ]
    assert centroids[0] * 1.05 < centroids[1] and centroids[1] * 1.05 < centroids[2]


def test_prosody_changes_pitch_and_rate():
    speaker = toy_speaker("9", seed=0, sex="F")
    words = ["LITTLE", "HOUSE", "NIGHT", "ALL"]

    def say(prosody):
        return synthesize_utterance(words, speaker, np.random.default_rng(1), prosody=prosody)

    neutral, high, fast = say(None), say(ToyProsody(f0_scale=1.4)), say(ToyProsody(rate=1.5))
    assert f0_median(high) > 1.25 * f0_median(neutral)
    assert len(fast) < 0.8 * len(neutral)
    quiet = say(ToyProsody(energy=0.5))
    assert np.sqrt(np.mean(quiet**2)) < 0.7 * np.sqrt(np.mean(neutral**2))


def test_words_are_separated_by_pauses():
    speaker = toy_speaker("11", seed=0)
    wav = synthesize_utterance(["ONE", "TWO", "GO", "SEE"], speaker, np.random.default_rng(2))
    frames = wav[: len(wav) // 160 * 160].reshape(-1, 160)  # 10 ms
    level = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    quiet = level < level.max() - 35
    assert 0.1 < quiet.mean() < 0.7  # leading/trailing silence and pauses, mostly speech
    edges = np.flatnonzero(np.diff(quiet.astype(int)) == 1)  # speech -> quiet transitions
    assert len(edges) >= 4  # after each of the 4 words


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="speakers_per_split"):
        write_toy_librispeech(tmp_path, speakers_per_split=0)
    with pytest.raises(ValueError, match="distinct"):
        write_toy_librispeech(tmp_path, splits=["dev-clean", "dev-clean"])
    with pytest.raises(ValueError, match="min_words"):
        random_words(np.random.default_rng(0), 5, 2)
    with pytest.raises(ValueError, match="sex"):
        toy_speaker("1", sex="X")
    assert not any(tmp_path.iterdir())
