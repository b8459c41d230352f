"""Deterministic toy corpora written in the real on-disk layouts of speech corpora.

The audio comes from our formant synthesizer (`speechbrain_ext.data.synth`), so tests and the
demo run offline on data that a recipe reads exactly as it reads the real corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from speechbrain_ext.data.synth import (
    ToyProsody,
    random_words,
    seeded_rng,
    synthesize_utterance,
    toy_speaker,
    write_flac,
)

logger = logging.getLogger(__name__)

#: LibriSpeech split names; their position gives the block of toy speaker IDs.
LIBRISPEECH_SPLITS: tuple[str, ...] = (
    "train-clean-100", "train-clean-360", "train-other-500",
    "dev-clean", "dev-other", "test-clean", "test-other",
)  # fmt: skip


def _speaker_block(split: str) -> int:
    """ID block of a split: known LibriSpeech splits 1-7, other names 10-99."""
    if split in LIBRISPEECH_SPLITS:
        return LIBRISPEECH_SPLITS.index(split) + 1
    return 10 + zlib.crc32(split.encode("utf-8")) % 90


def write_toy_librispeech(
    root: str | Path,
    splits: Sequence[str] = ("train-clean-100", "dev-clean"),
    speakers_per_split: int = 4,
    chapters_per_speaker: int = 2,
    utterances_per_chapter: int = 5,
    seed: int = 0,
    sample_rate: int = 16000,
    min_words: int = 2,
    max_words: int = 9,
) -> Path:
    """Writes a toy LibriSpeech in the real on-disk layout.

    `<root>/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<NNNN>.flac` and one
    `<spk>-<chapter>.trans.txt` per chapter (lines `<utt_id> UPPERCASE WORDS`), plus
    `<root>/LibriSpeech/SPEAKERS.TXT`. Speakers of different splits are disjoint, as in
    LibriSpeech: split k of `LIBRISPEECH_SPLITS` gets speaker IDs `k*1000 + 1, ...`,
    chapter `c` of speaker `s` is `s*100 + c + 1`. Speakers alternate F / M. With the
    defaults, utterances last about 1 to 6 s. Each utterance depends only on the seed
    and its ID, so the same arguments always write the same bytes.

    Arguments
    ---------
    root : str or Path
        Folder in which `LibriSpeech/` is created.
    splits : sequence of str
        Split folders to write.
    speakers_per_split : int
        Speakers in each split (at most 999).
    chapters_per_speaker : int
        Chapters per speaker (at most 99).
    utterances_per_chapter : int
        Utterances per chapter (at most 9999).
    seed : int
        Seed of the whole corpus.
    sample_rate : int
        Sampling rate of the FLAC files (LibriSpeech: 16000).
    min_words : int
        Fewest words in an utterance.
    max_words : int
        Most words in an utterance.

    Returns
    -------
    Path
        The `<root>/LibriSpeech` folder.

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> ls = write_toy_librispeech(tmp.name, splits=["dev-clean"], speakers_per_split=1,
    ...                            chapters_per_speaker=1, utterances_per_chapter=2)
    >>> sorted(p.name for p in (ls / "dev-clean" / "4001" / "400101").iterdir())
    ['4001-400101-0000.flac', '4001-400101-0001.flac', '4001-400101.trans.txt']
    >>> tmp.cleanup()
    """
    if not 0 < speakers_per_split <= 999:
        raise ValueError(f"speakers_per_split must be in [1, 999], got {speakers_per_split}")
    if not 0 < chapters_per_speaker <= 99:
        raise ValueError(f"chapters_per_speaker must be in [1, 99], got {chapters_per_speaker}")
    if not 0 < utterances_per_chapter <= 9999:
        raise ValueError(f"utterances_per_chapter must be in [1, 9999], got {utterances_per_chapter}")
    if len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct, got {list(splits)}")
    ls_root = Path(root) / "LibriSpeech"
    speaker_rows: dict[str, tuple[str, str, float]] = {}
    for split in splits:
        block = _speaker_block(split)
        for i in range(speakers_per_split):
            spk_id = str(block * 1000 + i + 1)
            speaker = toy_speaker(spk_id, seed=seed, sex="F" if i % 2 == 0 else "M")
            seconds = 0.0
            for c in range(chapters_per_speaker):
                chapter = str(int(spk_id) * 100 + c + 1)
                chapter_dir = ls_root / split / spk_id / chapter
                lines = []
                for u in range(utterances_per_chapter):
                    utt_id = f"{spk_id}-{chapter}-{u:04d}"
                    rng = seeded_rng(seed, "utterance", utt_id)
                    words = random_words(rng, min_words, max_words)
                    wav = synthesize_utterance(words, speaker, rng, sample_rate)
                    write_flac(chapter_dir / f"{utt_id}.flac", wav, sample_rate)
                    lines.append(f"{utt_id} {' '.join(words)}\n")
                    seconds += len(wav) / sample_rate
                (chapter_dir / f"{spk_id}-{chapter}.trans.txt").write_text("".join(lines))
            speaker_rows[spk_id] = (speaker.sex, split, seconds / 60.0)
    _write_speakers_txt(ls_root / "SPEAKERS.TXT", speaker_rows)
    logger.info("Wrote toy LibriSpeech (%s) in %s", ", ".join(splits), ls_root)
    return ls_root


def _write_speakers_txt(path: Path, rows: dict[str, tuple[str, str, float]]) -> None:
    """Writes (merging with an existing file) a LibriSpeech-style SPEAKERS.TXT."""
    lines: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith(";"):
                lines[line.split("|")[0].strip()] = line
    for spk_id, (sex, split, minutes) in rows.items():
        lines[spk_id] = f"{spk_id:<5}| {sex} | {split:<16} | {minutes:5.2f} | Toy Speaker {spk_id}"
    header = (
        "; Toy LibriSpeech speakers (synthetic voices, speechbrain_ext.data.toy)\n"
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
    )
    body = "".join(lines[k] + "\n" for k in sorted(lines, key=int))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body)


# ---------------------------------------------------------------- VoxCeleb1

#: Real VoxCeleb1 speaker numbering: the 40 test speakers are id10270-id10309, dev speakers the others.
VOXCELEB1_FIRST_TEST_ID = 10270
VOXCELEB1_NUM_TEST_IDS = 40
_VIDEO_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _voxceleb1_ids(num_speakers: int, test_speakers: int) -> tuple[list[str], list[str]]:
    """Dev IDs from id10001 (jumping over the test block, as in the corpus) and test IDs from id10270."""
    dev = [10001 + i for i in range(num_speakers)]
    dev = [n + VOXCELEB1_NUM_TEST_IDS if n >= VOXCELEB1_FIRST_TEST_ID else n for n in dev]
    test = [VOXCELEB1_FIRST_TEST_ID + i for i in range(test_speakers)]
    return [f"id{n}" for n in dev], [f"id{n}" for n in test]


def write_toy_voxceleb1(
    root: str | Path,
    num_speakers: int = 4,
    test_speakers: int = 3,
    videos_per_speaker: int = 2,
    utterances_per_video: int = 3,
    seed: int = 0,
    sample_rate: int = 16000,
    min_words: int = 3,
    max_words: int = 8,
) -> Path:
    """Writes a toy VoxCeleb1 in the real on-disk layout, with a VoxCeleb1-O style trial list.

    `<root>/VoxCeleb1/wav/<speaker>/<video>/<NNNNN>.wav` (16-bit mono WAV, utterances numbered
    from 00001 in each video, 11-character YouTube-like video IDs), `meta/vox1_meta.csv`
    (tab-separated `VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set`) and
    `meta/veri_test2.txt` (lines `<label> <enrol> <test>`, paths relative to `wav/`). As in the
    corpus, development speakers are `id10001, id10002, ...` and the test speakers, the only
    ones in the trial list, `id10270, id10271, ...`. Every test utterance is the enrolment of
    one target trial (another utterance of its speaker, from another video when there is one)
    and one non-target trial (an utterance of another test speaker). Speakers alternate F / M;
    each video has its own level and slight pitch offset (a recording condition), so the
    speaker, not the video, is what the utterances of a speaker share. With the defaults,
    utterances last about 1.3 to 5 s, and the same arguments always write the same bytes.

    Arguments
    ---------
    root : str or Path
        Folder in which `VoxCeleb1/` is created.
    num_speakers : int
        Development (training) speakers.
    test_speakers : int
        Test speakers, those of the trial list (2 to 40).
    videos_per_speaker : int
        Videos per speaker.
    utterances_per_video : int
        Utterances per video.
    seed : int
        Seed of the whole corpus.
    sample_rate : int
        Sampling rate of the WAV files (VoxCeleb1: 16000).
    min_words : int
        Fewest words in an utterance.
    max_words : int
        Most words in an utterance.

    Returns
    -------
    Path
        The `<root>/VoxCeleb1` folder (the `data_folder` of `prepare_voxceleb1`).

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> vox = write_toy_voxceleb1(tmp.name, num_speakers=1, test_speakers=2, videos_per_speaker=1,
    ...                           utterances_per_video=2)
    >>> sorted(p.name for p in (vox / "wav").iterdir()), sorted(p.name for p in (vox / "meta").iterdir())
    (['id10001', 'id10270', 'id10271'], ['veri_test2.txt', 'vox1_meta.csv'])
    >>> (vox / "meta" / "veri_test2.txt").read_text().split("\\n")[0].split()[0]
    '1'
    >>> tmp.cleanup()
    """
    if not 0 <= num_speakers <= 1211:
        raise ValueError(f"num_speakers must be in [0, 1211], got {num_speakers}")
    if not 2 <= test_speakers <= VOXCELEB1_NUM_TEST_IDS:
        raise ValueError(f"test_speakers must be in [2, {VOXCELEB1_NUM_TEST_IDS}], got {test_speakers}")
    if videos_per_speaker < 1 or not 1 <= utterances_per_video <= 99999:
        raise ValueError(
            f"videos_per_speaker must be >= 1 and utterances_per_video in [1, 99999], "
            f"got {videos_per_speaker}, {utterances_per_video}"
        )
    if videos_per_speaker * utterances_per_video < 2:
        raise ValueError("a test speaker needs at least 2 utterances for a target trial")
    vox_root = Path(root) / "VoxCeleb1"
    dev_ids, test_ids = _voxceleb1_ids(num_speakers, test_speakers)
    utterances: dict[str, list[str]] = {}  # speaker -> paths relative to wav/
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"]
    for index, spk_id in enumerate(dev_ids + test_ids):
        sex = "F" if index % 2 == 0 else "M"
        speaker = toy_speaker(spk_id, seed=seed, sex=sex)
        spk_rng = seeded_rng(seed, "voxceleb1", spk_id)
        utterances[spk_id] = []
        for _ in range(videos_per_speaker):
            video = "".join(spk_rng.choice(list(_VIDEO_ID_CHARS), size=11))
            condition = ToyProsody(f0_scale=float(spk_rng.uniform(0.96, 1.04)), energy=float(spk_rng.uniform(0.6, 1.5)))
            for u in range(utterances_per_video):
                rel = f"{spk_id}/{video}/{u + 1:05d}.wav"
                rng = seeded_rng(seed, "utterance", rel)
                words = random_words(rng, min_words, max_words)
                wav = synthesize_utterance(words, speaker, rng, sample_rate, prosody=condition)
                _write_wav_pcm16(vox_root / "wav" / rel, wav, sample_rate)
                utterances[spk_id].append(rel)
        split = "test" if spk_id in test_ids else "dev"
        meta.append(f"{spk_id}\tToy_Speaker_{spk_id[2:]}\t{sex.lower()}\tToyland\t{split}\n")
    (vox_root / "meta").mkdir(parents=True, exist_ok=True)
    (vox_root / "meta" / "vox1_meta.csv").write_text("".join(meta))
    (vox_root / "meta" / "veri_test2.txt").write_text(
        "".join(f"{label} {enrol} {test}\n" for label, enrol, test in _toy_trials(utterances, test_ids, seed))
    )
    logger.info("Wrote toy VoxCeleb1 (%d dev, %d test speakers) in %s", num_speakers, test_speakers, vox_root)
    return vox_root


def _toy_trials(utterances: dict[str, list[str]], test_ids: list[str], seed: int) -> list[tuple[int, str, str]]:
    """One target and one non-target trial per test utterance, as enrolment."""
    rng = seeded_rng(seed, "voxceleb1", "trials")
    trials = []
    for spk_id in test_ids:
        for enrol in utterances[spk_id]:
            video = enrol.split("/")[1]
            same = [rel for rel in utterances[spk_id] if rel != enrol]
            other_video = [rel for rel in same if rel.split("/")[1] != video]
            target = other_video or same
            others = [rel for other in test_ids if other != spk_id for rel in utterances[other]]
            trials.append((1, enrol, target[int(rng.integers(len(target)))]))
            trials.append((0, enrol, others[int(rng.integers(len(others)))]))
    return trials


def _write_wav_pcm16(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Writes mono 16-bit WAV (the format of VoxCeleb1 and IEMOCAP), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")


# ---------------------------------------------------------------- IEMOCAP

#: Prosody of each IEMOCAP label in the toy corpus, the same for every speaker (relative to the
#: voice): angry loud, high and fast; sad soft, low, flat and slow; happy / excited high with a
#: wide range; neutral the voice itself. `fru` and `xxx` (no agreement) lie between the others.
TOY_EMOTION_PROSODY: dict[str, ToyProsody] = {
    "neu": ToyProsody(),
    "hap": ToyProsody(f0_scale=1.25, f0_range=2.0, rate=1.1, energy=1.4),
    "exc": ToyProsody(f0_scale=1.3, f0_range=2.0, rate=1.15, energy=1.5),
    "sad": ToyProsody(f0_scale=0.85, f0_range=0.35, rate=0.75, energy=0.45, breathiness=0.15),
    "ang": ToyProsody(f0_scale=1.35, f0_range=1.2, rate=1.3, energy=2.2),
    "fru": ToyProsody(f0_scale=1.1, f0_range=0.8, rate=1.05, energy=1.6),
    "xxx": ToyProsody(f0_scale=1.1, f0_range=1.4, rate=1.0, energy=1.2),
}
_CATEGORY_NAMES = {
    "neu": "Neutral state", "hap": "Happiness", "exc": "Excited", "sad": "Sadness",
    "ang": "Anger", "fru": "Frustration", "xxx": "Other",
}  # fmt: skip
_TOY_VAD = {"neu": 2.5, "hap": 4.0, "exc": 4.0, "sad": 1.5, "ang": 1.5, "fru": 2.0, "xxx": 2.5}


def _jittered(prosody: ToyProsody, rng: np.random.Generator) -> ToyProsody:
    """The prosody of one utterance: each factor varied by about 6% around the emotion's."""

    def vary(x: float) -> float:
        return float(x * np.exp(rng.normal(0.0, 0.06)))

    return ToyProsody(
        f0_scale=vary(prosody.f0_scale),
        f0_range=vary(prosody.f0_range),
        rate=vary(prosody.rate),
        energy=vary(prosody.energy),
        breathiness=max(0.0, prosody.breathiness + float(rng.normal(0.0, 0.02))),
    )


def write_toy_iemocap(
    root: str | Path,
    utterances_per_emotion_per_speaker: int = 2,
    seed: int = 0,
    sample_rate: int = 16000,
    min_words: int = 2,
    max_words: int = 6,
) -> Path:
    """Writes a toy IEMOCAP in the real on-disk layout, with learnable emotions.

    `<root>/IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<utterance>.wav` (16-bit
    mono WAV), the labels in `Session{1..5}/dialog/EmoEvaluation/<dialog>.txt` (a `%` header,
    then per utterance `[start - end]<TAB>name<TAB>label<TAB>[V, A, D]` followed by annotator
    lines `C-E1:` ... `A-E3:`) and transcripts in `dialog/transcriptions/<dialog>.txt`. Each
    session has two dialogs, `Ses0<s>F_impro01` and `Ses0<s>M_script01_1`, with utterances
    `<dialog>_F000, <dialog>_M000, ...` of its female and male speaker.

    Each of the 10 speakers says `utterances_per_emotion_per_speaker` utterances of each of
    `neu`, `hap`, `sad`, `ang`, plus one `exc` (merged into `hap` by the preparation), one
    `fru` and one `xxx` (both dropped by it). The emotion is in the prosody, the same for
    every voice (`TOY_EMOTION_PROSODY`), varied a little per utterance; the same arguments
    always write the same bytes.

    Arguments
    ---------
    root : str or Path
        Folder in which `IEMOCAP_full_release/` is created.
    utterances_per_emotion_per_speaker : int
        Utterances of each of the 4 kept labels per speaker.
    seed : int
        Seed of the whole corpus.
    sample_rate : int
        Sampling rate of the WAV files (IEMOCAP: 16000).
    min_words : int
        Fewest words in an utterance.
    max_words : int
        Most words in an utterance.

    Returns
    -------
    Path
        The `<root>/IEMOCAP_full_release` folder.

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> iemocap = write_toy_iemocap(tmp.name, utterances_per_emotion_per_speaker=1)
    >>> sorted(p.name for p in (iemocap / "Session1" / "sentences" / "wav").iterdir())
    ['Ses01F_impro01', 'Ses01M_script01_1']
    >>> labels = (iemocap / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").read_text()
    >>> labels.splitlines()[2].split("\\t")[1]
    'Ses01F_impro01_F000'
    >>> tmp.cleanup()
    """
    if utterances_per_emotion_per_speaker < 1:
        raise ValueError(f"utterances_per_emotion_per_speaker must be >= 1, got {utterances_per_emotion_per_speaker}")
    iemocap_root = Path(root) / "IEMOCAP_full_release"
    labels = [emo for emo in ("neu", "hap", "sad", "ang") for _ in range(utterances_per_emotion_per_speaker)]
    labels += ["exc", "fru", "xxx"]
    for session in range(1, 6):
        session_dir = iemocap_root / f"Session{session}"
        dialogs = [f"Ses{session:02d}F_impro01", f"Ses{session:02d}M_script01_1"]
        turns: dict[str, list[tuple[str, str]]] = {dialog: [] for dialog in dialogs}  # (utterance, label)
        for sex in ("F", "M"):
            order = seeded_rng(seed, "iemocap", f"Ses{session:02d}{sex}").permutation(len(labels))
            counts = dict.fromkeys(dialogs, 0)
            for i, k in enumerate(order):
                dialog = dialogs[i % 2]  # the speaker's turns alternate between the two dialogs
                utterance = f"{dialog}_{sex}{counts[dialog]:03d}"
                counts[dialog] += 1
                turns[dialog].append((utterance, labels[k]))
        for dialog in dialogs:
            turns_in_order = sorted(turns[dialog], key=_turn_order)
            _write_toy_iemocap_dialog(session_dir, dialog, turns_in_order, seed, sample_rate, min_words, max_words)
    logger.info("Wrote toy IEMOCAP (%d utterances per speaker) in %s", len(labels), iemocap_root)
    return iemocap_root


def _turn_order(turn: tuple[str, str]) -> tuple[str, str]:
    """F000, M000, F001, M001, ...: the two speakers take turns."""
    last = turn[0].rsplit("_", 1)[1]
    return last[1:], last[0]


def _write_toy_iemocap_dialog(
    session_dir: Path,
    dialog: str,
    turns: list[tuple[str, str]],
    seed: int,
    sample_rate: int,
    min_words: int,
    max_words: int,
) -> None:
    """Writes the utterances of one dialog, its EmoEvaluation labels and its transcription."""
    session = dialog[:5]
    speakers = {sex: toy_speaker(f"iemocap-{session}{sex}", seed=seed, sex=sex) for sex in ("F", "M")}
    labels = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"]
    transcript = []
    start = 0.0
    for utterance, label in turns:
        rng = seeded_rng(seed, "utterance", utterance)
        if label == "xxx":  # no agreement: annotators heard different emotions
            heard = [str(e) for e in rng.choice(["neu", "hap", "sad", "ang"], size=2, replace=False)]
            prosody = TOY_EMOTION_PROSODY[heard[0]]
        else:
            heard = [label, label]
            prosody = TOY_EMOTION_PROSODY[label]
        words = random_words(rng, min_words, max_words)
        sex = utterance.rsplit("_", 1)[1][0]
        wav = synthesize_utterance(words, speakers[sex], rng, sample_rate, prosody=_jittered(prosody, rng))
        _write_wav_pcm16(session_dir / "sentences" / "wav" / dialog / f"{utterance}.wav", wav, sample_rate)
        start += float(rng.uniform(0.3, 2.0))
        end = start + len(wav) / sample_rate
        vad = _TOY_VAD[label]
        labels.append(
            f"[{start:.4f} - {end:.4f}]\t{utterance}\t{label}\t[{vad:.4f}, {vad:.4f}, {vad:.4f}]\n"
            f"C-E1:\t{_CATEGORY_NAMES[heard[0]]};\t()\n"
            f"C-E2:\t{_CATEGORY_NAMES[heard[1]]};\t()\n"
            f"A-E3:\tval {round(vad)}; act {round(vad)}; dom  {round(vad)};\t()\n\n"
        )
        text = " ".join(words).capitalize()
        transcript.append(f"{utterance} [{start:08.4f}-{end:08.4f}]: {text}.\n")
        start = end
    (session_dir / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
    (session_dir / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("".join(labels))
    (session_dir / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
    (session_dir / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("".join(transcript))


# ---------------------------------------------------------------- SLURP

#: Toy SLURP commands: scenario -> (action, sentence) pairs, `{slot}` filled from `_SLURP_SLOTS`.
#: Each scenario's sentences share its keywords, so the scenario can be heard in the audio.
_SLURP_COMMANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "alarm": (("set", "set an alarm at {time}"), ("query", "check my alarm for {time}"),
              ("remove", "remove the alarm at {time}")),
    "audio": (("volume_up", "turn the volume up"), ("volume_down", "turn the volume down"),
              ("volume_mute", "mute the volume")),
    "calendar": (("set", "add a meeting {date}"), ("query", "when is my meeting {date}"),
                 ("remove", "cancel the meeting {date}")),
    "cooking": (("recipe", "give me a recipe for {food_type}"), ("query", "find a good {food_type} recipe")),
    "datetime": (("query", "what time is it in {time_zone}"), ("convert", "convert the time to {time_zone}")),
    "email": (("sendemail", "send an email to {person}"), ("query", "read my email from {person}")),
    "general": (("joke", "tell me a funny joke"), ("quirky", "sing me a silly joke")),
    "iot": (("hue_lightoff", "switch off the lights"), ("hue_lightdim", "dim the lights in the {house_place}"),
            ("hue_lighton", "switch on the lights in the {house_place}")),
    "lists": (("createoradd", "add {list_item} to my shopping list"), ("query", "what is on my shopping list"),
              ("remove", "remove {list_item} from my list")),
    "music": (("likeness", "i love this song"), ("query", "what song is this"), ("settings", "shuffle my songs")),
    "news": (("query", "what is the news about {news_topic}"), ("query", "read the latest {news_topic} news")),
    "play": (("music", "play some music"), ("radio", "play the radio"), ("podcasts", "play my podcast")),
    "qa": (("definition", "what is the definition of {definition_word}"),
           ("definition", "define the word {definition_word}")),
    "recommendation": (("events", "recommend an event this weekend"), ("movies", "recommend a good movie")),
    "social": (("post", "post a tweet saying hello"), ("query", "any new tweets from my friends")),
    "takeaway": (("order", "order a pizza from {business_name}"), ("query", "where is my pizza order")),
    "transport": (("ticket", "book a train ticket to {place_name}"),
                  ("query", "when does the train to {place_name} leave")),
    "weather": (("query", "what is the weather like {date}"), ("query", "is the weather sunny {date}")),
}  # fmt: skip
_SLURP_SLOTS: dict[str, tuple[str, ...]] = {
    "time": ("seven", "six am", "noon", "nine pm"),
    "date": ("today", "tomorrow", "on friday", "this week"),
    "food_type": ("pasta", "eggs", "rice", "soup"),
    "time_zone": ("tokyo", "sydney", "chicago"),
    "person": ("john", "mary", "anna", "peter"),
    "house_place": ("kitchen", "bedroom", "hall"),
    "list_item": ("milk", "bread", "butter"),
    "news_topic": ("sports", "science", "politics"),
    "definition_word": ("ocean", "forest", "planet"),
    "business_name": ("dominos", "pizza hut"),
    "place_name": ("london", "paris", "boston", "berlin"),
}
#: Split -> first slurp_id of its toy sentences (distinct blocks, as the splits share no sentence).
_SLURP_ID_BLOCKS: dict[str, int] = {"train": 10000, "devel": 20000, "test": 30000}


def _slurp_entry(slurp_id: int, scenario: str, rng: np.random.Generator) -> dict:
    """One toy SLURP sentence in the .jsonl format (recordings added by the caller)."""
    action, template = _SLURP_COMMANDS[scenario][int(rng.integers(len(_SLURP_COMMANDS[scenario])))]
    words, annotation, entities = [], [], []
    for token in template.split():
        if token.startswith("{"):
            slot = token[1:-1]
            value = _SLURP_SLOTS[slot][int(rng.integers(len(_SLURP_SLOTS[slot])))]
            entities.append({"type": slot, "span": list(range(len(words), len(words) + len(value.split())))})
            annotation.append(f"[{slot} : {value}]")
            words.extend(value.split())
        else:
            annotation.append(token)
            words.append(token)
    return {
        "slurp_id": slurp_id,
        "sentence": " ".join(words),
        "sentence_annotation": " ".join(annotation),
        "intent": f"{scenario}_{action}",
        "action": action,
        "tokens": [{"surface": w, "id": i, "lemma": w, "pos": "X"} for i, w in enumerate(words)],
        "scenario": scenario,
        "recordings": [],
        "entities": entities,
    }


def write_toy_slurp(
    root: str | Path,
    recordings_per_scenario: int = 4,
    scenarios: Sequence[str] | None = None,
    seed: int = 0,
    splits: Sequence[str] = ("train", "devel", "test"),
    recordings_per_sentence: int = 2,
    speakers_per_split: int = 4,
    sample_rate: int = 16000,
) -> Path:
    """Writes a toy SLURP in the real on-disk layout.

    `<root>/dataset/slurp/<split>.jsonl` (one JSON object per sentence with `slurp_id`,
    `sentence`, `sentence_annotation`, `intent`, `action`, `tokens`, `scenario`, `recordings`
    and `entities`, as in the corpus) and the 16 kHz FLAC recordings in `<root>/slurp_real/`
    (`audio-<timestamp>-headset.flac` and `audio-<timestamp>.flac`, as SLURP's headset and
    far-field files are named). Each scenario's sentences are commands built on its own
    keywords ("set an alarm at seven", "play some music"), so the scenario is learnable from
    the audio. Each sentence is recorded by `recordings_per_sentence` different speakers,
    drawn from `speakers_per_split` speakers per split (disjoint between splits); sentences
    of different splits have distinct slurp_ids. The same arguments always write the same bytes.

    Arguments
    ---------
    root : str or Path
        Folder in which `dataset/slurp/` and `slurp_real/` are created.
    recordings_per_scenario : int
        Recordings of each scenario in each split.
    scenarios : sequence of str, optional
        Scenarios to write (names of `speechbrain_ext.data.slurp.SCENARIOS`); all 18 when None.
    seed : int
        Seed of the whole corpus.
    splits : sequence of str
        Splits to write ("train", "devel", "test").
    recordings_per_sentence : int
        Speakers who record each sentence (at most 9).
    speakers_per_split : int
        Speakers of each split.
    sample_rate : int
        Sampling rate of the FLAC files (SLURP: 16000).

    Returns
    -------
    Path
        `root`, the folder to give `prepare_slurp` as `data_folder`.

    Example
    -------
    >>> import json, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = write_toy_slurp(tmp.name, recordings_per_scenario=1, scenarios=["alarm"], splits=["test"])
    >>> entry = json.loads((root / "dataset" / "slurp" / "test.jsonl").read_text())
    >>> wav = root / "slurp_real" / entry["recordings"][0]["file"]
    >>> entry["scenario"], "alarm" in entry["sentence"], wav.is_file()
    ('alarm', True, True)
    >>> tmp.cleanup()
    """
    scenarios = list(_SLURP_COMMANDS if scenarios is None else scenarios)
    unknown = [s for s in scenarios if s not in _SLURP_COMMANDS]
    if unknown:
        raise ValueError(f"unknown SLURP scenario(s) {unknown}; choose from {sorted(_SLURP_COMMANDS)}")
    if recordings_per_scenario < 1 or speakers_per_split < 1:
        raise ValueError("recordings_per_scenario and speakers_per_split must be >= 1")
    if not 1 <= recordings_per_sentence <= 9:
        raise ValueError(f"recordings_per_sentence must be in [1, 9], got {recordings_per_sentence}")
    unknown = [s for s in splits if s not in _SLURP_ID_BLOCKS]
    if unknown:
        raise ValueError(f"unknown SLURP split(s) {unknown}; choose from {list(_SLURP_ID_BLOCKS)}")
    root = Path(root)
    jsonl_dir = root / "dataset" / "slurp"
    jsonl_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        speakers = [
            toy_speaker(f"slurp-{split}-{i}", seed=seed, sex="F" if i % 2 == 0 else "M")
            for i in range(speakers_per_split)
        ]
        lines, slurp_id, turn = [], _SLURP_ID_BLOCKS[split], 0
        for scenario in scenarios:
            for first in range(0, recordings_per_scenario, recordings_per_sentence):
                slurp_id += 1
                rng = seeded_rng(seed, "slurp", str(slurp_id))
                entry = _slurp_entry(slurp_id, scenario, rng)
                words = entry["sentence"].upper().split()
                for r in range(min(recordings_per_sentence, recordings_per_scenario - first)):
                    name = f"audio-{1434500000 + 10 * slurp_id + r}{'-headset' if r % 2 == 0 else ''}.flac"
                    speaker = speakers[turn % len(speakers)]  # each speaker says every scenario
                    turn += 1
                    wav = synthesize_utterance(words, speaker, seeded_rng(seed, "slurp", name), sample_rate)
                    write_flac(root / "slurp_real" / name, wav, sample_rate)
                    entry["recordings"].append({"file": name, "wer": 0.0, "ent_wer": 0.0, "status": "correct"})
                lines.append(json.dumps(entry) + "\n")
        (jsonl_dir / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    logger.info("Wrote toy SLURP (%s; %d scenarios) in %s", ", ".join(splits), len(scenarios), root)
    return root


# ---------------------------------------------------------------- Common Voice

#: Toy Common Voice sentences per language, written as contributors type them (capitals,
#: punctuation, the language's own letters: Welsh ŵ ŷ, Basque ñ).
_COMMONVOICE_SENTENCES: dict[str, tuple[str, ...]] = {
    "cy": (
        "Bore da, mae hi'n bwrw glaw.", "Mae'r dŵr yn oer iawn!", "Diolch yn fawr am y llyfr.",
        "Dw i'n byw mewn tŷ bach.", "Mae'r gath yn cysgu ar y gwely.", "Ble mae'r ysgol?",
        "Rydyn ni'n chwarae yn yr ardd.", "Mae Cymru'n wlad hardd.",
    ),
    "eu": (
        "Egun on, zer moduz zaude?", "Eskerrik asko, lagun.", "Etxea mendiaren ondoan dago.",
        "Ikurriña balkoian dago!", "Gaur itsasoa oso lasai dago.", "Nire izena Miren da.",
        "Urte berri on denoi.", "Mahaia handia eta zaharra da.",
    ),
}  # fmt: skip
#: Header of the split .tsv files of recent releases (Common Voice 17), read by column name.
COMMONVOICE_TSV_HEADER: tuple[str, ...] = (
    "client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
    "age", "gender", "accents", "variant", "locale", "segment",
)  # fmt: skip
_COMMONVOICE_SPLITS: tuple[str, ...] = ("train", "dev", "test")


def write_toy_commonvoice(
    root: str | Path,
    language: str = "cy",
    clips_per_split: int = 4,
    seed: int = 0,
    speakers_per_split: int = 2,
    sample_rate: int = 48000,
) -> Path:
    """Writes a toy Common Voice language folder in the real on-disk layout.

    `<root>/<language>/clips/common_voice_<language>_<N>.mp3` (mono MP3 at `sample_rate`,
    48 kHz as most Common Voice clips) and `train.tsv`, `dev.tsv`, `test.tsv` (tab-separated,
    with the columns `COMMONVOICE_TSV_HEADER` of recent releases: a 128-hex-digit
    `client_id` per speaker, `path` the clip's file name, `sentence` as typed with capitals
    and punctuation, ...). Sentences are a few Welsh ("cy") or Basque ("eu") ones, taken in
    turn, with the language's letters (ŵ, ŷ, ñ) and punctuation to exercise transcript
    normalisation; the synthesizer says a letter with a diacritic as the bare letter.
    Speakers of different splits are disjoint, as in Common Voice. The same arguments
    always write the same audio.

    Arguments
    ---------
    root : str or Path
        Folder in which `<language>/` is created (like `cv-corpus-17.0-2024-03-15/`).
    language : str
        "cy" (Welsh) or "eu" (Basque).
    clips_per_split : int
        Clips in each split.
    seed : int
        Seed of the whole corpus.
    speakers_per_split : int
        Speakers (client IDs) of each split.
    sample_rate : int
        Sampling rate of the MP3 files (Common Voice: 48000, a few 32000).

    Returns
    -------
    Path
        The `<root>/<language>` folder.

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> cy = write_toy_commonvoice(tmp.name, clips_per_split=1)
    >>> sorted(p.name for p in cy.iterdir()), len(list((cy / "clips").glob("*.mp3")))
    (['clips', 'dev.tsv', 'test.tsv', 'train.tsv'], 3)
    >>> tmp.cleanup()
    """
    if language not in _COMMONVOICE_SENTENCES:
        raise ValueError(f"no toy sentences for language {language!r}; choose from {sorted(_COMMONVOICE_SENTENCES)}")
    if clips_per_split < 1 or speakers_per_split < 1:
        raise ValueError("clips_per_split and speakers_per_split must be >= 1")
    lang_dir = Path(root) / language
    sentences = _COMMONVOICE_SENTENCES[language]
    for s, split in enumerate(_COMMONVOICE_SPLITS):
        clients = []
        for i in range(speakers_per_split):
            client_id = hashlib.sha512(f"{seed}-{language}-{split}-{i}".encode()).hexdigest()
            clients.append((client_id, toy_speaker(client_id[:16], seed=seed, sex="F" if i % 2 == 0 else "M")))
        lines = ["\t".join(COMMONVOICE_TSV_HEADER) + "\n"]
        for c in range(clips_per_split):
            name = f"common_voice_{language}_{18000000 + 100000 * s + c}.mp3"
            rng = seeded_rng(seed, "commonvoice", name)
            sentence = sentences[(s * clips_per_split + c) % len(sentences)]  # in turn: every sentence is used
            client_id, speaker = clients[c % len(clients)]
            # The synthesizer knows A-Z: say "dŵr" as "DWR".
            spoken = unicodedata.normalize("NFD", sentence).encode("ascii", "ignore").decode().upper()
            words = "".join(ch if ch.isalpha() else " " for ch in spoken).split()
            wav = synthesize_utterance(words, speaker, rng, sample_rate)
            (lang_dir / "clips").mkdir(parents=True, exist_ok=True)
            sf.write(lang_dir / "clips" / name, wav, sample_rate, format="MP3", subtype="MPEG_LAYER_III")
            sentence_id = hashlib.sha256(sentence.encode()).hexdigest()
            gender = "female_feminine" if speaker.sex == "F" else "male_masculine"
            fields = [client_id, name, sentence_id, sentence, "", "2", "0", "twenties", gender, "", "", language, ""]
            lines.append("\t".join(fields) + "\n")
        (lang_dir / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    logger.info("Wrote toy Common Voice (%s) in %s", language, lang_dir)
    return lang_dir
