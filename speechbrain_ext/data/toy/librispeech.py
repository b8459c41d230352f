"""Toy LibriSpeech in the real on-disk layout (FLAC, trans.txt, SPEAKERS.TXT)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.synth import (
    random_words,
    seeded_rng,
    synthesize_utterance,
    toy_speaker,
    write_flac,
)

logger = get_logger(__name__)

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
