"""LibriSpeech data preparation: SpeechBrain CSV manifests from the corpus on disk.

Download: http://www.openslr.org/12 (nothing is downloaded here).

Layout read: `LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<NNNN>.flac` with one
`<spk>-<chapter>.trans.txt` per chapter. Durations come from the file headers
(`soundfile.info`), so preparation never decodes the audio.

The Libri-light limited-resource training sets (https://github.com/facebookresearch/libri-light,
`librispeech_finetuning.tgz`) are the splits `librilight-10h` (all of `librispeech_finetuning/`: `1h/0..5`
and `9h`, clean and other) and `librilight-1h` (`librispeech_finetuning/1h`), read in the same layout
from `librispeech_finetuning/` beside or inside `LibriSpeech/`.

Authors
 * speechbrain_ext contributors
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.audio import AudioProblem, check_audio_files
from speechbrain_ext.data.manifest import (
    AUDIO_SKIP_REASONS,
    already_prepared,
    check_prepare_options,
    prepare_splits,
    split_list,
)

logger = get_logger(__name__)

CSV_HEADER: tuple[str, ...] = ("ID", "duration", "wav", "spk_id", "wrd")
OPT_FILE = "prepare_librispeech_options.json"
SKIPPED_FILE = "prepare_librispeech_skipped.txt"
#: Why a file can be left out of a manifest.
SKIP_REASONS: tuple[str, ...] = (
    *AUDIO_SKIP_REASONS,
    "no_transcript",  # no line for the utterance in the chapter's .trans.txt
    "missing_audio",  # a transcript line whose .flac does not exist
)
_OPTIONS_VERSION = 1
#: Libri-light limited-resource splits: their folder inside `librispeech_finetuning/`'s parent.
LIBRILIGHT_SPLITS: dict[str, str] = {
    "librilight-10h": "librispeech_finetuning",
    "librilight-1h": "librispeech_finetuning/1h",
}


def prepare_librispeech(
    data_folder: str | Path,
    save_folder: str | Path,
    splits: Sequence[str] = ("train-clean-100", "dev-clean", "test-clean"),
    min_duration: float = 1.0,
    max_duration: float | None = None,
    sample_rate: int = 16000,
    skip_prep: bool = False,
) -> dict[str, Path]:
    """Writes one SpeechBrain CSV manifest per LibriSpeech split.

    Each `<save_folder>/<split>.csv` has the columns `ID,duration,wav,spk_id,wrd`:
    the utterance ID, its duration in seconds (from the file header), the absolute
    path of the .flac, the speaker ID in SpeechBrain's LibriSpeech convention
    (`<spk>-<chapter>`, the first two fields of the ID) and the transcript.
    Rows are sorted by ID.

    Files that cannot be used are left out, counted per reason (see `SKIP_REASONS`),
    logged, and listed with the reason in `<save_folder>/prepare_librispeech_skipped.txt`
    (one `path<TAB>reason<TAB>detail` line each): an empty or unreadable file, a wrong
    sampling rate, more than one channel, a duration below `min_duration` or above
    `max_duration`, an utterance without a transcript line, and a transcript line
    without its .flac.

    Work already done is skipped: when every CSV exists and the options saved
    beside them (`prepare_librispeech_options.json`, written last) match this call,
    nothing is scanned. CSVs are written to a temporary file and renamed, so an
    interrupted preparation never leaves a partial CSV that looks complete.

    Arguments
    ---------
    data_folder : str or Path
        The folder that contains `LibriSpeech/`, or the `LibriSpeech/` folder itself.
    save_folder : str or Path
        Where the CSV files, the options and the list of skipped files are written.
    splits : sequence of str
        Split folders to prepare, e.g. "train-clean-100", "dev-clean", "test-other".
    min_duration : float
        Shorter utterances are skipped (seconds). The default, 1.0 s, is below the
        shortest real LibriSpeech utterance, so only broken clips are dropped.
    max_duration : float, optional
        Longer utterances are skipped (seconds); None keeps all.
    sample_rate : int
        Expected sampling rate; files with another rate are skipped.
    skip_prep : bool
        If True, do nothing and only return the CSV paths.

    Returns
    -------
    dict
        Split name -> path of its CSV file.

    Raises
    ------
    FileNotFoundError
        If a split folder does not exist.
    ValueError
        If the options are invalid or a split has no usable utterance.

    Example
    -------
    >>> import csv, tempfile
    >>> from speechbrain_ext.data.toy import write_toy_librispeech
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = write_toy_librispeech(tmp.name, splits=["dev-clean"], speakers_per_split=1,
    ...                           chapters_per_speaker=1, utterances_per_chapter=2)
    >>> csvs = prepare_librispeech(tmp.name, tmp.name + "/manifests", splits=["dev-clean"])
    >>> with open(csvs["dev-clean"], newline="") as f:
    ...     rows = list(csv.DictReader(f))
    >>> [row["ID"] for row in rows], list(rows[0])
    (['4001-400101-0000', '4001-400101-0001'], ['ID', 'duration', 'wav', 'spk_id', 'wrd'])
    >>> tmp.cleanup()
    """
    splits = split_list(splits)
    save_folder = Path(save_folder)
    csv_files = {split: save_folder / f"{split}.csv" for split in splits}
    if skip_prep:
        return csv_files
    check_prepare_options("LibriSpeech", splits, min_duration, max_duration, sample_rate)

    librilight = [split for split in splits if split in LIBRILIGHT_SPLITS]
    root = _find_root(Path(data_folder), [split for split in splits if split not in librilight])
    folders = {split: root / split for split in splits if split not in librilight}
    folders.update({split: _find_librilight(Path(data_folder), split) for split in librilight})
    options = {
        "version": _OPTIONS_VERSION,
        "data_folder": os.path.abspath(root),
        "splits": splits,
        "min_duration": float(min_duration),
        "max_duration": None if max_duration is None else float(max_duration),
        "sample_rate": int(sample_rate),
    }
    opt_file = save_folder / OPT_FILE
    if already_prepared(csv_files, opt_file, options):
        logger.info(
            "LibriSpeech already prepared in %s (%s), skipping",
            save_folder,
            ", ".join(splits),
        )
        return csv_files

    prepare_splits(
        splits,
        csv_files,
        lambda split: _scan_split(folders[split], min_duration, max_duration, sample_rate),
        CSV_HEADER,
        "LibriSpeech",
        "utterance",
        save_folder=save_folder,
        opt_file=opt_file,
        skip_file=save_folder / SKIPPED_FILE,
        options=options,
        logger=logger,
        skipped_unit="file",
        where=lambda split: f" in {folders[split]}",
        none_skipped="none found",
    )
    return csv_files


def _find_root(data_folder: Path, splits: list[str]) -> Path:
    """The LibriSpeech folder: `data_folder/LibriSpeech` or `data_folder` itself."""
    candidates = [data_folder / "LibriSpeech", data_folder]
    for candidate in candidates:
        if all((candidate / split).is_dir() for split in splits):
            return candidate
    root = next((c for c in candidates if c.is_dir()), data_folder)
    missing = [split for split in splits if not (root / split).is_dir()]
    raise FileNotFoundError(
        f"LibriSpeech split folder(s) {missing} not found in {root}. data_folder must be the "
        f"folder that contains LibriSpeech/ or the LibriSpeech/ folder itself, laid out as "
        f"LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac"
    )


def _find_librilight(data_folder: Path, split: str) -> Path:
    """The folder of a Libri-light limited-resource split, in `data_folder` or its `LibriSpeech/`."""
    for base in (data_folder, data_folder / "LibriSpeech", data_folder.parent):
        if (base / LIBRILIGHT_SPLITS[split]).is_dir():
            return base / LIBRILIGHT_SPLITS[split]
    raise FileNotFoundError(
        f"{split}: {LIBRILIGHT_SPLITS[split]}/ not found in {data_folder} (nor in its LibriSpeech/). Extract "
        "Libri-light's librispeech_finetuning.tgz there: librispeech_finetuning/{1h/0..5,9h}/{clean,other}/"
        "<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac"
    )


def _read_transcripts(split_dir: Path) -> dict[str, tuple[str, Path]]:
    """Utterance ID -> (transcript, chapter folder) from every .trans.txt of a split."""
    transcripts: dict[str, tuple[str, Path]] = {}
    for trans_file in sorted(split_dir.rglob("*.trans.txt")):
        for line in trans_file.read_text(encoding="utf-8").splitlines():
            parts = line.strip().split(maxsplit=1)
            if len(parts) == 2:
                transcripts[parts[0]] = (parts[1], trans_file.parent)
    return transcripts


def _scan_split(
    split_dir: Path, min_duration: float, max_duration: float | None, sample_rate: int
) -> tuple[list[list[str]], list[AudioProblem]]:
    """CSV rows (sorted by ID) and skipped files of one split folder."""
    transcripts = _read_transcripts(split_dir)
    audio = sorted(os.path.abspath(p) for p in split_dir.rglob("*.flac"))
    checks = check_audio_files(audio, sample_rate, min_duration, max_duration)
    rows: list[list[str]] = []
    skipped: list[AudioProblem] = []
    seen: set[str] = set()
    for path, (duration, skip) in zip(audio, checks):
        utt_id = Path(path).name[: -len(".flac")]
        seen.add(utt_id)
        if skip is not None:
            skipped.append(skip)
        elif utt_id not in transcripts:
            skipped.append(AudioProblem(path, "no_transcript", "no line in the chapter's .trans.txt"))
        else:
            spk_id = "-".join(utt_id.split("-")[:2])
            rows.append([utt_id, str(duration), path, spk_id, transcripts[utt_id][0]])
    for utt_id in sorted(set(transcripts) - seen):
        path = os.path.abspath(transcripts[utt_id][1] / f"{utt_id}.flac")
        skipped.append(AudioProblem(path, "missing_audio", "transcript line without audio file"))
    rows.sort(key=lambda row: row[0])
    return rows, skipped
