"""Shared pieces of the corpus preparation modules (LibriSpeech, SLURP, Common Voice, VoxCeleb1, IEMOCAP).

Each preparation writes SpeechBrain CSV manifests into a save folder, beside a list of the files it
left out (`prepare_<corpus>_skipped.txt`) and the options it ran with (`prepare_<corpus>_options.json`,
written last: a folder without it does not look done). Every file is written to a temporary file and
renamed, so an interrupted preparation never leaves a partial file that looks complete.

Authors
 * speechbrain_ext contributors
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from speechbrain_ext.data.audio import AudioProblem, summarize_problems
from speechbrain_ext.files import atomic_writer

#: Why `check_audio_files` can leave a file out; each corpus adds its own reasons to these.
AUDIO_SKIP_REASONS: tuple[str, ...] = (
    "empty",  # 0 bytes, or a valid header with 0 frames
    "unreadable",  # soundfile cannot read the header (corrupted, not audio)
    "wrong_sample_rate",
    "not_mono",
    "too_short",  # duration < min_duration
    "too_long",  # duration > max_duration
)
#: What scanning one split gives: its CSV rows (duration in column 1) and the files left out.
ScanResult = tuple[list[list[str]], list[AudioProblem]]


def already_prepared(csv_files: dict[str, Path], opt_file: Path, options: dict) -> bool:
    """Whether every CSV exists and `opt_file` holds exactly `options`."""
    if not opt_file.is_file() or not all(path.is_file() for path in csv_files.values()):
        return False
    try:
        saved = json.loads(opt_file.read_text())
    except (OSError, ValueError):
        return False
    return saved == options


def split_list(splits: str | Sequence[str]) -> list[str]:
    """The split names as a list (a single name may be given as a string)."""
    return [splits] if isinstance(splits, str) else list(splits)


def check_prepare_options(
    corpus: str,
    splits: list[str] | None,
    min_duration: float,
    max_duration: float | None,
    sample_rate: int | None,
    *,
    split_names: str = "",
    allow_any_rate: bool = False,
) -> None:
    """Raises ValueError for invalid preparation options.

    `splits` must be non-empty and distinct (None: not checked); `split_names` (e.g.
    " (train, dev, test)") ends the message for an empty list. With `allow_any_rate`,
    a `sample_rate` of None (any rate) is accepted.
    """
    if splits is not None:
        if not splits:
            raise ValueError(f"splits is empty: name at least one {corpus} split{split_names}")
        if len(set(splits)) != len(splits):
            raise ValueError(f"splits must be distinct, got {splits}")
    if min_duration < 0:
        raise ValueError(f"min_duration must be >= 0, got {min_duration}")
    if max_duration is not None and max_duration <= min_duration:
        raise ValueError(f"max_duration ({max_duration}) must be above min_duration ({min_duration})")
    if allow_any_rate:
        if sample_rate is not None and sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive or None, got {sample_rate}")
    elif sample_rate <= 0:  # type: ignore[operator]
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Writes a CSV file (header, then rows) atomically."""
    with atomic_writer(path) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def hours(rows: Iterable[Sequence[str]]) -> float:
    """Total duration in hours of CSV rows whose column 1 is the duration in seconds."""
    return sum(float(row[1]) for row in rows) / 3600.0


@contextmanager
def preparing(save_folder: Path, opt_file: Path, skip_file: Path, options: dict) -> Iterator[list[AudioProblem]]:
    """Brackets a preparation; yields the list to fill with the files left out.

    On entry, creates `save_folder` and removes `opt_file` (until the end, the folder does not
    look done). On exit, always writes the list of skipped files (`path<TAB>reason<TAB>detail`
    lines) to `skip_file`; then, only on success, `options` as json to `opt_file`.
    """
    save_folder.mkdir(parents=True, exist_ok=True)
    opt_file.unlink(missing_ok=True)
    skipped: list[AudioProblem] = []
    try:
        yield skipped
    finally:
        with atomic_writer(skip_file) as f:
            f.write("# path\treason\tdetail\n")
            f.writelines(f"{s.path}\t{s.reason}\t{s.detail}\n" for s in skipped)
    with atomic_writer(opt_file) as f:
        json.dump(options, f, indent=2)


def prepare_splits(
    splits: list[str],
    csv_files: dict[str, Path],
    scan: Callable[[str], ScanResult],
    header: Sequence[str],
    corpus: str,
    unit: str,
    *,
    save_folder: Path,
    opt_file: Path,
    skip_file: Path,
    options: dict,
    logger: logging.Logger,
    skipped_unit: str | None = None,
    where: Callable[[str], str] = lambda split: "",
    none_skipped: str = "none listed",
) -> None:
    """Scans each split with `scan`, writes its CSV, then the skipped list and the options.

    For each split, the files left out are logged as a warning (`<corpus> <split>: skipped N
    <skipped_unit>(s)`, `skipped_unit` defaulting to `unit`), a split without any row raises
    ValueError (`<corpus> split '<split>'<where(split)> has no usable <unit>`), and the CSV is
    written with `header` and logged with its number of `<unit>s` and hours. The skipped files
    and options are written as by :func:`preparing`.
    """
    with preparing(save_folder, opt_file, skip_file, options) as all_skipped:
        for split in splits:
            rows, skipped = scan(split)
            all_skipped.extend(skipped)
            if skipped:
                logger.warning(
                    "%s %s: skipped %d %s(s): %s (listed in %s)",
                    corpus,
                    split,
                    len(skipped),
                    skipped_unit or unit,
                    summarize_problems(skipped),
                    skip_file,
                )
            if not rows:
                raise ValueError(
                    f"{corpus} split {split!r}{where(split)} has no usable {unit} "
                    f"(skipped: {summarize_problems(skipped) or none_skipped}); see {skip_file}"
                )
            write_csv(csv_files[split], header, rows)
            logger.info("%s %s: %d %ss (%.2f h) -> %s", corpus, split, len(rows), unit, hours(rows), csv_files[split])
