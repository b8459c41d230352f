"""SLURP data preparation: SpeechBrain CSV manifests for spoken language understanding.

SLURP (Bastianelli et al., 2020, https://arxiv.org/abs/2011.13205): 72k recordings of spoken
commands to a home assistant, each labelled with one of 18 scenarios, an action and their
intent (`<scenario>_<action>`). Download: https://github.com/pswietojanski/slurp (nothing is
downloaded here).

Layout read: `<data_folder>/dataset/slurp/{train,devel,test}.jsonl` (+ `train_synthetic.jsonl`),
one JSON object per line and sentence:
`{"slurp_id": 13804, "sentence": "wake me up at five am this week", "scenario": "alarm",
"action": "set", "intent": "alarm_set", ..., "recordings": [{"file": "audio-1434542201-headset.flac",
...}, ...]}`; the 16 kHz FLAC recordings in `<data_folder>/slurp_real/` (synthetic speech:
`slurp_synth/`), or in `<data_folder>/scripts/audio/slurp_real/` (or `audio/slurp_real/`) as the SLURP
repository's download script leaves them. Durations come from the file headers (`soundfile.info`), so preparation
never decodes the audio.

Authors
 * speechbrain_ext contributors
"""

from __future__ import annotations

import json
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

#: The 18 SLURP scenarios (the MP3S intent-classification labels).
SCENARIOS: tuple[str, ...] = (
    "alarm", "audio", "calendar", "cooking", "datetime", "email", "general", "iot", "lists",
    "music", "news", "play", "qa", "recommendation", "social", "takeaway", "transport", "weather",
)  # fmt: skip
CSV_HEADER: tuple[str, ...] = ("ID", "duration", "wav", "scenario", "action", "intent", "transcript")
OPT_FILE = "prepare_slurp_options.json"
SKIPPED_FILE = "prepare_slurp_skipped.txt"
#: Why a recording can be left out of a manifest.
SKIP_REASONS: tuple[str, ...] = (
    *AUDIO_SKIP_REASONS,
    "missing_audio",  # a recording listed in the .jsonl whose file does not exist
    "unknown_scenario",  # a scenario outside SCENARIOS
    "bad_record",  # a .jsonl line that is not JSON or lacks a field (path: <jsonl>:<line>)
    "duplicate",  # a recording ID already listed in the same split
)
_OPTIONS_VERSION = 1
_REQUIRED_FIELDS = ("slurp_id", "sentence", "scenario", "action", "intent", "recordings")


def prepare_slurp(
    data_folder: str | Path,
    save_folder: str | Path,
    splits: Sequence[str] = ("train", "devel", "test"),
    use_synthetic: bool = False,
    sample_rate: int = 16000,
    min_duration: float = 0.5,
    max_duration: float | None = None,
    skip_prep: bool = False,
) -> dict[str, Path]:
    """Writes one SpeechBrain CSV manifest per SLURP split, one row per recording.

    Each `<save_folder>/<split>.csv` has the columns
    `ID,duration,wav,scenario,action,intent,transcript`: the recording ID
    `<slurp_id>_<file stem>` (`<slurp_id>_synth_<file stem>` for synthetic speech), its
    duration in seconds (from the file header), the absolute path of the .flac, the labels
    of its sentence, and the sentence upper-cased with single spaces (as SpeechBrain's SLURP
    recipe writes it). Rows are sorted by slurp_id, then file name.

    Recordings that cannot be used are left out, counted per reason (see `SKIP_REASONS`),
    logged, and listed with the reason in `<save_folder>/prepare_slurp_skipped.txt` (one
    `path<TAB>reason<TAB>detail` line each): an empty, unreadable, missing, multi-channel or
    wrongly sampled file, a duration outside [`min_duration`, `max_duration`], a scenario
    outside `SCENARIOS`, a malformed .jsonl line and a repeated recording.

    Work already done is skipped: when every CSV exists and the options saved beside them
    (`prepare_slurp_options.json`, written last) match this call, nothing is scanned. CSVs
    are written to a temporary file and renamed, so an interrupted preparation never leaves
    a partial CSV that looks complete.

    Arguments
    ---------
    data_folder : str or Path
        The folder that holds `dataset/slurp/` and `slurp_real/` (or `audio/slurp_real/`).
    save_folder : str or Path
        Where the CSV files, the options and the list of skipped recordings are written.
    splits : sequence of str
        Splits to prepare: names of `dataset/slurp/<split>.jsonl` ("train", "devel", "test";
        "train_synthetic" reads its audio from `slurp_synth/`).
    use_synthetic : bool
        If True, `train.csv` also holds the synthetic (text-to-speech) recordings of
        `train_synthetic.jsonl`, as SpeechBrain's SLURP recipe trains on both.
    sample_rate : int
        Expected sampling rate (SLURP: 16000); files with another rate are skipped.
    min_duration : float
        Shorter recordings are skipped (seconds); the default drops broken clips.
    max_duration : float, optional
        Longer recordings are skipped (seconds); None keeps all.
    skip_prep : bool
        If True, do nothing and only return the CSV paths.

    Returns
    -------
    dict
        Split name -> path of its CSV file.

    Raises
    ------
    FileNotFoundError
        If a .jsonl file or the audio folder does not exist.
    ValueError
        If the options are invalid or a split has no usable recording.

    Example
    -------
    >>> import csv, tempfile
    >>> from speechbrain_ext.data.toy import write_toy_slurp
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = write_toy_slurp(tmp.name, recordings_per_scenario=1, scenarios=["alarm", "music"])
    >>> csvs = prepare_slurp(tmp.name, tmp.name + "/manifests")
    >>> with open(csvs["test"], newline="") as f:
    ...     rows = list(csv.DictReader(f))
    >>> sorted(row["scenario"] for row in rows), list(rows[0])[3:]
    (['alarm', 'music'], ['scenario', 'action', 'intent', 'transcript'])
    >>> tmp.cleanup()
    """
    splits = split_list(splits)
    save_folder = Path(save_folder)
    csv_files = {split: save_folder / f"{split}.csv" for split in splits}
    if skip_prep:
        return csv_files
    check_prepare_options("SLURP", splits, min_duration, max_duration, sample_rate, split_names=" (train, devel, test)")

    sources = _find_sources(Path(data_folder), splits, use_synthetic)
    options = {
        "version": _OPTIONS_VERSION,
        "data_folder": os.path.abspath(data_folder),
        "splits": splits,
        "use_synthetic": bool(use_synthetic),
        "min_duration": float(min_duration),
        "max_duration": None if max_duration is None else float(max_duration),
        "sample_rate": int(sample_rate),
    }
    opt_file = save_folder / OPT_FILE
    if already_prepared(csv_files, opt_file, options):
        logger.info("SLURP already prepared in %s (%s), skipping", save_folder, ", ".join(splits))
        return csv_files

    prepare_splits(
        splits,
        csv_files,
        lambda split: _scan_split(sources[split], min_duration, max_duration, sample_rate),
        CSV_HEADER,
        "SLURP",
        "recording",
        save_folder=save_folder,
        opt_file=opt_file,
        skip_file=save_folder / SKIPPED_FILE,
        options=options,
        logger=logger,
    )
    return csv_files


#: Where the recordings may sit, relative to data_folder: SpeechBrain's SLURP recipe layout, then the SLURP
#: repository's, whose `scripts/download_audio.sh` unpacks them into `scripts/audio/` (or `audio/` when run there).
AUDIO_LOCATIONS: tuple[str, ...] = (".", "scripts/audio", "audio")


def _audio_folder(data_folder: Path, name: str) -> Path:
    """`slurp_real/` or `slurp_synth/` beside `dataset/`, or under `scripts/audio/` or `audio/` (SLURP repository)."""
    candidates = [data_folder / location / name for location in AUDIO_LOCATIONS]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"SLURP audio folder {name}/ not found: looked for {', '.join(str(c) for c in candidates)}. data_folder "
        f"must hold dataset/slurp/<split>.jsonl and the recordings in {name}/<file>.flac (or scripts/audio/{name}/, "
        f"where the SLURP repository's download script puts them)"
    )


def _find_sources(data_folder: Path, splits: list[str], use_synthetic: bool) -> dict[str, list[tuple[Path, Path]]]:
    """Split -> [(.jsonl file, its audio folder)], every path checked to exist."""
    jsonl_dir = data_folder / "dataset" / "slurp"
    names = {split: [split] for split in splits}
    if use_synthetic and "train" in names:
        names["train"].append("train_synthetic")
    missing = sorted({n for group in names.values() for n in group if not (jsonl_dir / f"{n}.jsonl").is_file()})
    if missing:
        raise FileNotFoundError(
            f"SLURP file(s) {[f'{n}.jsonl' for n in missing]} not found in {jsonl_dir}. data_folder must hold "
            f"dataset/slurp/<split>.jsonl (from the SLURP repository) and the recordings in slurp_real/"
        )
    sources: dict[str, list[tuple[Path, Path]]] = {}
    for split, group in names.items():
        folders = ["slurp_synth" if n.endswith("_synthetic") else "slurp_real" for n in group]
        sources[split] = [(jsonl_dir / f"{n}.jsonl", _audio_folder(data_folder, f)) for n, f in zip(group, folders)]
    return sources


def _read_jsonl(jsonl: Path, audio_dir: Path) -> tuple[list[tuple[str, str, dict]], list[AudioProblem]]:
    """(ID, audio path, entry) per recording of a .jsonl file, and its malformed or unusable lines."""
    synthetic = audio_dir.name == "slurp_synth"
    recordings: list[tuple[str, str, dict]] = []
    problems: list[AudioProblem] = []
    with open(jsonl, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                missing = [key for key in _REQUIRED_FIELDS if key not in entry]
                if missing:
                    raise ValueError(f"no field {missing}")
                files = [recording["file"] for recording in entry["recordings"]]
            except (ValueError, TypeError, KeyError) as err:
                problems.append(AudioProblem(f"{jsonl}:{lineno}", "bad_record", " ".join(str(err).split())))
                continue
            for file in files:
                path = os.path.abspath(audio_dir / file)
                stem = Path(file).stem
                rec_id = f"{entry['slurp_id']}_synth_{stem}" if synthetic else f"{entry['slurp_id']}_{stem}"
                if entry["scenario"] not in SCENARIOS:
                    problems.append(AudioProblem(path, "unknown_scenario", repr(entry["scenario"])))
                else:
                    recordings.append((rec_id, path, entry))
    return recordings, problems


def _scan_split(
    sources: list[tuple[Path, Path]], min_duration: float, max_duration: float | None, sample_rate: int
) -> tuple[list[list[str]], list[AudioProblem]]:
    """CSV rows (sorted by slurp_id, then file) and skipped recordings of one split."""
    recordings: list[tuple[str, str, dict]] = []
    skipped: list[AudioProblem] = []
    for jsonl, audio_dir in sources:
        found, problems = _read_jsonl(jsonl, audio_dir)
        recordings.extend(found)
        skipped.extend(problems)
    unique: dict[str, tuple[str, dict]] = {}
    for rec_id, path, entry in recordings:
        if rec_id in unique:
            skipped.append(AudioProblem(path, "duplicate", f"recording ID {rec_id} listed twice"))
        else:
            unique[rec_id] = (path, entry)
    ids = list(unique)
    checks = check_audio_files([unique[i][0] for i in ids], sample_rate, min_duration, max_duration)
    rows: list[list[str]] = []
    for rec_id, (duration, problem) in zip(ids, checks):
        if problem is not None:
            skipped.append(problem)
            continue
        path, entry = unique[rec_id]
        transcript = " ".join(str(entry["sentence"]).split()).upper()
        rows.append(
            [rec_id, str(duration), path, entry["scenario"], str(entry["action"]), str(entry["intent"]), transcript]
        )
    rows.sort(key=lambda row: _order(unique[row[0]][1]["slurp_id"], row[0]))
    return rows, skipped


def _order(slurp_id: int | str, rec_id: str) -> tuple[int, int, str]:
    """Sort key: slurp_ids are integers, sorted as numbers (an odd textual one after them)."""
    text = str(slurp_id)
    return (0, int(text), rec_id) if text.isdigit() else (1, 0, rec_id)
