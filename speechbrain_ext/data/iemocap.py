"""IEMOCAP data preparation: SpeechBrain CSV manifests for 4-class emotion recognition.

Corpus: https://sail.usc.edu/iemocap/ (licensed; nothing is downloaded here).

Layout read: `IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<utterance>.wav` (e.g.
`Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav`) and the labels in
`Session{1..5}/dialog/EmoEvaluation/<dialog>.txt`, whose lines
`[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]` give the
consensus label of each utterance (every other line is ignored). Classes and split follow
SpeechBrain's IEMOCAP recipe and MP3S: neutral, happy (excited merged into it), sad, angry;
leave-two-speakers-out. Durations come from the file headers (`soundfile.info`).

Authors
 * speechbrain_ext contributors
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.audio import AudioProblem, check_audio_files, summarize_problems
from speechbrain_ext.data.manifest import (
    AUDIO_SKIP_REASONS,
    already_prepared,
    check_prepare_options,
    hours,
    preparing,
    write_csv,
)

logger = get_logger(__name__)

CSV_HEADER: tuple[str, ...] = ("ID", "duration", "wav", "spk_id", "emo")
#: The 4 classes kept (the `emo` column).
EMOTIONS: tuple[str, ...] = ("neu", "hap", "sad", "ang")
#: Labels counted as another class: excited is merged into happy, as in SpeechBrain and MP3S.
MERGED_EMOTIONS: dict[str, str] = {"exc": "hap"}
NUM_SESSIONS = 5
NUM_SPEAKERS = 2 * NUM_SESSIONS
OPT_FILE = "prepare_iemocap_options.json"
SKIPPED_FILE = "prepare_iemocap_skipped.txt"
#: Why a file can be left out of a manifest (utterances with other labels are *dropped*, not skipped).
SKIP_REASONS: tuple[str, ...] = (
    *AUDIO_SKIP_REASONS,
    "missing_audio",  # a label line whose .wav does not exist
    "no_label",  # a .wav without a label line in its session's EmoEvaluation files
)
# `[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]`
_LABEL_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)\s+\[")
# Ses01F_impro01_F000, Ses01M_script01_1_M012: session 1; the last part names who speaks.
_UTTERANCE = re.compile(r"^Ses(\d\d)[FM]_\S+_([FM])\d+$")
_OPTIONS_VERSION = 1


def prepare_iemocap(
    data_folder: str | Path,
    save_folder: str | Path,
    test_spk_id: int = 1,
    sample_rate: int = 16000,
    skip_prep: bool = False,
    min_duration: float = 0.2,
    max_duration: float | None = None,
) -> dict[str, Path]:
    """Writes the IEMOCAP train / valid / test manifests of one leave-two-speakers-out fold.

    The 10 speakers are numbered by session, female first: Session1 female = 1, Session1
    male = 2, ..., Session5 male = 10 (who speaks is the letter of the utterance name's last
    part, e.g. `Ses01F_impro01_M003` is the Session1 male, speaker 2). Speaker `test_spk_id` is
    the test set, the other speaker of the same session the validation set, and the 8 speakers
    of the other 4 sessions the training set (SpeechBrain's `different_speakers` split; run
    `test_spk_id` 1 to 10 for 10-fold cross-validation).

    Only the labels `neu`, `hap`, `sad`, `ang` and `exc` (merged into `hap`) are kept;
    utterances with any other label (`fru`, `sur`, `fea`, `dis`, `oth`, `xxx`: no agreement)
    are dropped and counted per label in the log.

    Each CSV has the columns `ID,duration,wav,spk_id,emo`: the utterance name, its duration in
    seconds (from the file header), the absolute path of the .wav, the speaker number 1-10
    and the class. Rows are sorted by ID.

    Files that cannot be used are left out, counted per reason (see `SKIP_REASONS`), logged,
    and listed with the reason in `<save_folder>/prepare_iemocap_skipped.txt`. Work already
    done is skipped when every CSV exists and the saved options (`prepare_iemocap_options.json`,
    written last) match this call; another `test_spk_id` prepares again (give each fold its
    own `save_folder` to keep them all). CSVs are written to a temporary file and renamed.

    Arguments
    ---------
    data_folder : str or Path
        The folder that contains `IEMOCAP_full_release/`, or that folder itself.
    save_folder : str or Path
        Where the CSV files, the options and the list of skipped files are written.
    test_spk_id : int
        The test speaker, 1-10 (see above).
    sample_rate : int
        Expected sampling rate; files with another rate are skipped.
    skip_prep : bool
        If True, do nothing and only return the CSV paths.
    min_duration : float
        Shorter utterances are skipped (seconds). The default, 0.2 s, is below the shortest
        real IEMOCAP utterance, so only broken clips are dropped.
    max_duration : float, optional
        Longer utterances are skipped (seconds); None keeps all.

    Returns
    -------
    dict
        "train", "valid" and "test" -> path of the CSV file.

    Raises
    ------
    FileNotFoundError
        If a `Session<N>` folder, its `sentences/wav` or its `dialog/EmoEvaluation` is missing.
    ValueError
        If the options are invalid, a label line names no IEMOCAP utterance, or a set is empty.

    Example
    -------
    >>> import csv, tempfile
    >>> from speechbrain_ext.data.toy import write_toy_iemocap
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = write_toy_iemocap(tmp.name, utterances_per_emotion_per_speaker=1)
    >>> csvs = prepare_iemocap(tmp.name, tmp.name + "/manifests", test_spk_id=3)
    >>> with open(csvs["test"], newline="") as f:
    ...     rows = list(csv.DictReader(f))
    >>> list(rows[0]), {row["spk_id"] for row in rows}, sorted({row["emo"] for row in rows})
    (['ID', 'duration', 'wav', 'spk_id', 'emo'], {'3'}, ['ang', 'hap', 'neu', 'sad'])
    >>> rows[0]["ID"]
    'Ses02F_impro01_F000'
    >>> tmp.cleanup()
    """
    save_folder = Path(save_folder)
    csv_files = {name: save_folder / f"{name}.csv" for name in ("train", "valid", "test")}
    if skip_prep:
        return csv_files
    _check_options(test_spk_id, min_duration, max_duration, sample_rate)

    root = _find_root(Path(data_folder))
    options = {
        "version": _OPTIONS_VERSION,
        "data_folder": os.path.abspath(root),
        "test_spk_id": int(test_spk_id),
        "min_duration": float(min_duration),
        "max_duration": None if max_duration is None else float(max_duration),
        "sample_rate": int(sample_rate),
    }
    opt_file = save_folder / OPT_FILE
    if already_prepared(csv_files, opt_file, options):
        logger.info("IEMOCAP already prepared in %s (test speaker %d), skipping", save_folder, test_spk_id)
        return csv_files

    skip_file = save_folder / SKIPPED_FILE
    with preparing(save_folder, opt_file, skip_file, options) as skipped:
        rows, found, dropped = _collect(root, min_duration, max_duration, sample_rate)
        skipped.extend(found)
        if skipped:
            logger.warning(
                "IEMOCAP: skipped %d file(s): %s (listed in %s)",
                len(skipped),
                summarize_problems(skipped),
                skip_file,
            )
        kept = Counter(row[4] for row in rows)
        logger.info(
            "IEMOCAP: %d utterances of the 4 classes (%s; exc merged into hap); dropped %d with other labels (%s)",
            len(rows),
            ", ".join(f"{emo}={kept[emo]}" for emo in EMOTIONS),
            sum(dropped.values()),
            ", ".join(f"{label}={count}" for label, count in sorted(dropped.items())) or "none",
        )
        valid_spk_id = test_spk_id + 1 if test_spk_id % 2 == 1 else test_spk_id - 1
        speakers = {
            "train": {str(s) for s in range(1, NUM_SPEAKERS + 1)} - {str(test_spk_id), str(valid_spk_id)},
            "valid": {str(valid_spk_id)},
            "test": {str(test_spk_id)},
        }
        for name, spk_ids in speakers.items():
            split_rows = [row for row in rows if row[3] in spk_ids]
            if not split_rows:
                raise ValueError(
                    f"IEMOCAP {name} set (speaker(s) {sorted(spk_ids, key=int)}) has no usable utterance in "
                    f"{root} (skipped: {summarize_problems(skipped) or 'none'}); see {skip_file}"
                )
            write_csv(csv_files[name], CSV_HEADER, split_rows)
            logger.info(
                "IEMOCAP %s: %d utterances of speaker(s) %s (%.2f h) -> %s",
                name,
                len(split_rows),
                ",".join(sorted(spk_ids, key=int)),
                hours(split_rows),
                csv_files[name],
            )
    return csv_files


def speaker_number(utterance: str) -> int:
    """The speaker (1-10) of an IEMOCAP utterance name: session `s` female 2s-1, male 2s.

    Example
    -------
    >>> speaker_number("Ses01F_impro01_F000"), speaker_number("Ses01F_script01_1_M012")
    (1, 2)
    >>> speaker_number("Ses05M_impro03_M001")
    10
    """
    match = _UTTERANCE.match(utterance)
    if match is None or not 1 <= int(match.group(1)) <= NUM_SESSIONS:
        raise ValueError(f"{utterance!r} is not an IEMOCAP utterance name like Ses01F_impro01_F000")
    session, sex = int(match.group(1)), match.group(2)
    return 2 * session - 1 if sex == "F" else 2 * session


def _check_options(test_spk_id: int, min_duration: float, max_duration: float | None, sample_rate: int) -> None:
    if test_spk_id not in range(1, NUM_SPEAKERS + 1):
        raise ValueError(f"test_spk_id must be one of the IEMOCAP speakers 1-{NUM_SPEAKERS}, got {test_spk_id}")
    check_prepare_options("IEMOCAP", None, min_duration, max_duration, sample_rate)


def _find_root(data_folder: Path) -> Path:
    """The IEMOCAP_full_release folder: `data_folder/IEMOCAP_full_release` or `data_folder` itself."""
    candidates = [data_folder / "IEMOCAP_full_release", data_folder]
    root = next((c for c in candidates if (c / "Session1").is_dir()), candidates[0])
    needed = [
        f"Session{s}/{sub}" for s in range(1, NUM_SESSIONS + 1) for sub in ("sentences/wav", "dialog/EmoEvaluation")
    ]
    missing = [sub for sub in needed if not (root / sub).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"IEMOCAP folder(s) {missing} not found in {root}. data_folder must be the folder that contains "
            f"IEMOCAP_full_release/ or that folder itself, laid out as Session<N>/sentences/wav/<dialog>/"
            f"<utterance>.wav with labels in Session<N>/dialog/EmoEvaluation/<dialog>.txt"
        )
    return root


def _read_labels(root: Path) -> dict[str, tuple[str, Path]]:
    """Utterance -> (raw label, path of its .wav) from every session's EmoEvaluation/*.txt."""
    labels: dict[str, tuple[str, Path]] = {}
    for session in range(1, NUM_SESSIONS + 1):
        session_dir = root / f"Session{session}"
        # Only the files directly in EmoEvaluation/: its subfolders (Categorical/, Attribute/...)
        # hold the individual annotators' ratings, not the consensus label.
        for label_file in sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt")):
            if label_file.name.startswith("."):
                continue  # macOS resource forks (._*.txt) in some copies of the corpus
            for number, line in enumerate(label_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                match = _LABEL_LINE.match(line)
                if match is None:
                    continue  # header, blank line, annotator lines (C-E1:, A-E2: ...)
                utterance, label = match.group(1), match.group(2)
                try:
                    speaker_number(utterance)
                except ValueError as err:
                    raise ValueError(f"{label_file}:{number}: {err}") from None
                dialog = utterance.rsplit("_", 1)[0]
                labels[utterance] = (label, session_dir / "sentences" / "wav" / dialog / f"{utterance}.wav")
    return labels


def _collect(
    root: Path, min_duration: float, max_duration: float | None, sample_rate: int
) -> tuple[list[list[str]], list[AudioProblem], Counter]:
    """CSV rows of the kept utterances (sorted by ID), skipped files, and dropped labels counted."""
    labels = _read_labels(root)
    dropped: Counter = Counter()
    kept: list[tuple[str, str, str]] = []  # (utterance, class, path)
    for utterance, (label, wav) in sorted(labels.items()):
        emo = MERGED_EMOTIONS.get(label, label)
        if emo in EMOTIONS:
            kept.append((utterance, emo, os.path.abspath(wav)))
        else:
            dropped[label] += 1
    checks = check_audio_files([path for _, _, path in kept], sample_rate, min_duration, max_duration)
    rows: list[list[str]] = []
    skipped: list[AudioProblem] = []
    for (utterance, emo, path), (duration, problem) in zip(kept, checks):
        if problem is not None:
            skipped.append(problem)
        else:
            rows.append([utterance, str(duration), path, str(speaker_number(utterance)), emo])
    for session in range(1, NUM_SESSIONS + 1):
        for wav in sorted((root / f"Session{session}" / "sentences" / "wav").glob("*/*.wav")):
            if wav.stem not in labels and not wav.name.startswith("."):
                skipped.append(AudioProblem(os.path.abspath(wav), "no_label", "no line in the EmoEvaluation files"))
    return rows, skipped, dropped
