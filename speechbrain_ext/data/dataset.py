"""SpeechBrain datasets of audio files from CSV manifests, with bad files left out up front."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.audio import (
    BadSamplesError,
    UndecodableList,
    check_audio_files,
    read_audio_checked,
    read_audio_resampled,
    summarize_problems,
)

logger = get_logger(__name__)


def read_manifests(csv_paths: Sequence[str | Path], required: Sequence[str] = ("ID",)) -> dict[str, dict]:
    """Rows of one or more SpeechBrain CSVs (header with ``ID``), keyed by ID.

    ``duration`` becomes a float; a repeated ID is an error naming both files. A manifest without one of the
    ``required`` columns, or with a duration that is not a finite number, is a ValueError naming the manifest
    (and the column, or the line and ID).

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "train.csv"
    >>> _ = path.write_text("ID,duration,wav\\nu1,abc,/a.flac\\n")
    >>> read_manifests([path])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: manifest ... line 2 (ID 'u1'): duration 'abc' is not a number of seconds
    """
    data: dict[str, dict] = {}
    origin: dict[str, Path] = {}
    for path in map(Path, csv_paths):
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} does not exist (was the data preparation run?)")
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [column for column in required if column not in columns]
            if missing:
                raise ValueError(f"manifest {path} has no {', '.join(map(repr, missing))} column "
                                 f"(its header: {', '.join(columns) or 'empty'})")
            for row in reader:
                utt_id = row.pop("ID")
                if utt_id in data:
                    raise ValueError(f"utterance {utt_id!r} is listed in both {origin[utt_id]} and {path}")
                if "duration" in row:
                    row["duration"] = _duration(row["duration"], f"manifest {path}, line {reader.line_num} "
                                                f"(ID {utt_id!r})")
                data[utt_id], origin[utt_id] = row, path
    return data


def _duration(text: str | None, where: str) -> float:
    """``text`` as a finite number of seconds, else a ValueError beginning with ``where``."""
    try:
        duration = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        duration = math.nan
    if not math.isfinite(duration):
        raise ValueError(f"{where}: duration {text!r} is not a number of seconds")
    return duration


def audio_dataset(
    csv_paths: Sequence[str | Path],
    sample_rate: int,
    min_duration: float = 0.0,
    max_duration: float | None = None,
    report_file: str | Path | None = None,
    sort_by_duration: bool = False,
    resample: bool = False,
    header_cache: str | Path | None = None,
    check_decoding: bool = False,
) -> DynamicItemDataset:
    """A ``DynamicItemDataset`` of the manifests' audio, giving ``id`` and ``sig`` (S,).

    Every file is checked from its header first: missing, empty, unreadable, wrong-rate,
    multi-channel, too short or too long files are left out, counted in the log and listed
    in ``report_file``, so an epoch never meets them. ``duration`` is taken from the header.
    With ``resample``, files of any rate are accepted and resampled to ``sample_rate`` when read
    (Common Voice's 48 kHz MP3, say). ``header_cache`` (a JSON file, see
    :class:`~speechbrain_ext.data.audio.HeaderCache`) makes the check of a rerun one ``stat`` per file.

    A file whose header is fine but whose data fails to decode during training, or decodes to samples that
    are not finite (NaN, inf) or absurd (beyond :data:`~speechbrain_ext.data.audio.MAX_ABS_SAMPLE`), gives
    ``sig`` None: the batch goes on without it (:func:`speechbrain_ext.training.collate_decoded`), a warning
    names it, and it is added to a skip list beside the header cache (``audio_undecodable.tsv``) so that no
    later run meets it again (until the file changes). ``check_decoding`` decodes every file up front instead
    (slow: it reads all the audio), leaving out those that fail or hold such samples.

    The manifests need ``ID`` and ``wav`` columns (a ValueError names the manifest and the missing column).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_ext.data.librispeech import prepare_librispeech
    >>> from speechbrain_ext.data.toy import write_toy_librispeech
    >>> tmp = tempfile.mkdtemp()
    >>> root = write_toy_librispeech(tmp, splits=("dev-clean",), speakers_per_split=1,
    ...     chapters_per_speaker=1, utterances_per_chapter=2)
    >>> csvs = prepare_librispeech(root, tmp, splits=("dev-clean",))
    >>> data = audio_dataset([csvs["dev-clean"]], sample_rate=16000)
    >>> len(data), data[0]["sig"].dim()
    (2, 1)
    """
    data = read_manifests(csv_paths, required=("ID", "wav"))
    if not data:
        raise ValueError(f"the manifests {[str(p) for p in csv_paths]} list no utterance")
    ids = list(data)
    undecodable = UndecodableList(Path(header_cache).with_name(UndecodableList.NAME)) if header_cache else None
    checks = check_audio_files(
        [data[i]["wav"] for i in ids], None if resample else sample_rate, min_duration, max_duration, header_cache,
        decode=check_decoding, undecodable=undecodable,
    )
    problems = [problem for _, problem in checks if problem is not None]
    for utt_id, (duration, problem) in zip(ids, checks):
        if problem is None:
            data[utt_id]["duration"] = duration
        else:
            del data[utt_id]
    if problems:
        logger.warning(
            "left out %d of %d files of %s: %s%s",
            len(problems),
            len(ids),
            ", ".join(Path(p).name for p in csv_paths),
            summarize_problems(problems),
            f" (listed in {report_file})" if report_file else "",
        )
        if report_file is not None:
            Path(report_file).parent.mkdir(parents=True, exist_ok=True)
            with open(report_file, "a", encoding="utf-8", errors="surrogateescape") as handle:
                handle.writelines(f"{p.path}\t{p.reason}\t{p.detail}\n" for p in problems)
    if not data:
        raise ValueError(f"no usable audio in {[str(p) for p in csv_paths]}: {summarize_problems(problems)}")
    dataset = DynamicItemDataset(data)
    if sort_by_duration:
        dataset = dataset.filtered_sorted(sort_key="duration")

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def read_signal(wav: str) -> torch.Tensor | None:
        try:
            return read_audio_resampled(wav, sample_rate) if resample else read_audio_checked(wav)
        except Exception as err:  # noqa: BLE001 - data that fails to decode although its header was fine
            detail = " ".join(str(err).removeprefix(f"{wav}: ").split())
            what = "refused the samples of" if isinstance(err, BadSamplesError) else "could not decode"
            logger.warning("%s %s (%s): left out of its batch%s", what, wav, detail,
                           f", and of later runs (listed in {undecodable.path})" if undecodable else "")
            if undecodable is not None:
                undecodable.add(wav, detail)
            return None

    dataset.add_dynamic_item(read_signal)
    dataset.set_output_keys(["id", "sig"])
    return dataset
