"""Toy IEMOCAP in the real on-disk layout (WAV, EmoEvaluation labels, transcriptions), emotions in the prosody."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.synth import (
    ToyProsody,
    random_words,
    seeded_rng,
    synthesize_utterance,
    toy_speaker,
)
from speechbrain_ext.data.toy._common import _write_wav_pcm16

logger = get_logger(__name__)

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
