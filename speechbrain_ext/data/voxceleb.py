"""VoxCeleb1 data preparation: SpeechBrain CSV manifests for speaker verification.

Download: https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html (nothing is downloaded here).

Layout read: `<data_folder>/wav/<speaker>/<video>/<NNNNN>.wav` (e.g. `wav/id10001/1zcIwhmdeo4/00001.wav`,
the dev and test archives unpacked into the same `wav/`) and a trial list such as the cleaned
VoxCeleb1-O list `veri_test2.txt` (lines `<label> <enrol path> <test path>`, paths relative to
`wav/`). Durations come from the file headers (`soundfile.info`), so preparation never decodes
the audio.

Authors
 * speechbrain_ext contributors
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import defaultdict
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

CSV_HEADER: tuple[str, ...] = ("ID", "duration", "wav", "spk_id")
TRIALS_HEADER: tuple[str, ...] = ("label", "enrol", "test")
OPT_FILE = "prepare_voxceleb1_options.json"
SKIPPED_FILE = "prepare_voxceleb1_skipped.txt"
#: The cleaned VoxCeleb1-O trial list, looked for in `<data_folder>/meta/` then `<data_folder>/`.
TRIAL_FILE = "veri_test2.txt"
#: Joins `<speaker>/<video>/<NNNNN>` into an utterance ID (SpeechBrain's VoxCeleb convention).
ID_SEPARATOR = "--"
#: Why a file can be left out of a manifest.
SKIP_REASONS: tuple[str, ...] = (
    *AUDIO_SKIP_REASONS,
    "missing_audio",  # a trial names a file that does not exist
)
_OPTIONS_VERSION = 1


def prepare_voxceleb1(
    data_folder: str | Path,
    save_folder: str | Path,
    verification_file: str | Path | None = None,
    valid_ratio: float = 0.05,
    min_duration: float = 1.0,
    max_duration: float | None = None,
    sample_rate: int = 16000,
    seed: int = 1234,
    skip_prep: bool = False,
) -> dict[str, Path]:
    """Writes the VoxCeleb1 speaker-verification manifests.

    - `train.csv` and `valid.csv`: the utterances of every speaker who does *not* appear in
      the trial list, split per utterance (a `valid_ratio` share of each speaker's utterances,
      at least one, drawn with `seed`), so every training speaker is in both: the validation
      set measures speaker classification of the training speakers.
    - `test.csv`: every utterance that a trial uses.
    - `trials.csv`: the columns `label,enrol,test`, the label 1 (same speaker) or 0, and the
      enrolment and test utterances as IDs of `test.csv`, in the order of the trial list.

    The utterance CSVs have the columns `ID,duration,wav,spk_id`: the ID is the path relative
    to `wav/` without `.wav`, its `/` replaced by `--` (SpeechBrain's convention, e.g.
    `id10270--x6uYqmx31kE--00001`), the duration in seconds (from the file header), the
    absolute path of the .wav and the speaker folder name (e.g. `id10270`). Rows are sorted by ID.

    Files that cannot be used are left out, counted per reason (see `SKIP_REASONS`), logged,
    and listed with the reason in `<save_folder>/prepare_voxceleb1_skipped.txt` (one
    `path<TAB>reason<TAB>detail` line each). A trial whose enrolment or test file was left out
    is dropped, and the number of dropped trials is logged.

    Work already done is skipped: when every CSV exists and the options saved beside them
    (`prepare_voxceleb1_options.json`, written last, with a hash of the trial list) match
    this call, nothing is scanned. CSVs are written to a temporary file and renamed.

    Arguments
    ---------
    data_folder : str or Path
        The VoxCeleb1 folder that contains `wav/` (and usually `meta/veri_test2.txt`).
    save_folder : str or Path
        Where the CSV files, the options and the list of skipped files are written.
    verification_file : str or Path, optional
        The trial list (`<label> <enrol> <test>` lines, paths relative to `wav/`), e.g. the
        VoxCeleb1-E or -H lists. None: `veri_test2.txt` in `<data_folder>/meta/` or `<data_folder>/`.
    valid_ratio : float
        Share of each training speaker's utterances put in `valid.csv`, in (0, 1).
    min_duration : float
        Shorter utterances are skipped (seconds). The default, 1.0 s, is far below the
        shortest real VoxCeleb1 utterance (4 s), so only broken clips are dropped.
    max_duration : float, optional
        Longer utterances are skipped (seconds); None keeps all.
    sample_rate : int
        Expected sampling rate; files with another rate are skipped.
    seed : int
        Seed of the train / valid split (the split of a speaker depends only on the seed
        and the speaker's utterances).
    skip_prep : bool
        If True, do nothing and only return the CSV paths.

    Returns
    -------
    dict
        "train", "valid", "test" and "trials" -> path of the CSV file.

    Raises
    ------
    FileNotFoundError
        If `<data_folder>/wav` or the trial list does not exist.
    ValueError
        If the options or the trial list are invalid, or a manifest would be empty.

    Example
    -------
    >>> import csv, tempfile
    >>> from speechbrain_ext.data.toy import write_toy_voxceleb1
    >>> tmp = tempfile.TemporaryDirectory()
    >>> vox = write_toy_voxceleb1(tmp.name, num_speakers=2, test_speakers=2, videos_per_speaker=1,
    ...                           utterances_per_video=2)
    >>> csvs = prepare_voxceleb1(vox, tmp.name + "/manifests")
    >>> with open(csvs["test"], newline="") as f:
    ...     rows = list(csv.DictReader(f))
    >>> list(rows[0]), rows[0]["ID"].startswith("id10270--"), rows[0]["spk_id"]
    (['ID', 'duration', 'wav', 'spk_id'], True, 'id10270')
    >>> with open(csvs["trials"], newline="") as f:
    ...     trials = list(csv.DictReader(f))
    >>> sorted({t["label"] for t in trials}), {t["enrol"] for t in trials} <= {r["ID"] for r in rows}
    (['0', '1'], True)
    >>> tmp.cleanup()
    """
    save_folder = Path(save_folder)
    csv_files = {name: save_folder / f"{name}.csv" for name in ("train", "valid", "test", "trials")}
    if skip_prep:
        return csv_files
    _check_options(valid_ratio, min_duration, max_duration, sample_rate)

    data_folder = Path(data_folder)
    wav_root = data_folder / "wav"
    if not wav_root.is_dir():
        raise FileNotFoundError(
            f"VoxCeleb1 audio folder {wav_root} not found. data_folder must contain wav/, laid out as "
            f"wav/<speaker>/<video>/<NNNNN>.wav (e.g. wav/id10001/1zcIwhmdeo4/00001.wav)"
        )
    trial_file = _find_trial_file(data_folder, verification_file)
    trial_text = trial_file.read_bytes()
    options = {
        "version": _OPTIONS_VERSION,
        "data_folder": os.path.abspath(data_folder),
        "verification_file": os.path.abspath(trial_file),
        # The list's content, not only its path: an edited trial list is prepared again.
        "verification_sha1": hashlib.sha1(trial_text, usedforsecurity=False).hexdigest(),
        "valid_ratio": float(valid_ratio),
        "min_duration": float(min_duration),
        "max_duration": None if max_duration is None else float(max_duration),
        "sample_rate": int(sample_rate),
        "seed": int(seed),
    }
    opt_file = save_folder / OPT_FILE
    if already_prepared(csv_files, opt_file, options):
        logger.info("VoxCeleb1 already prepared in %s, skipping", save_folder)
        return csv_files
    trials = _parse_trials(trial_text.decode("utf-8"), trial_file)

    skip_file = save_folder / SKIPPED_FILE
    with preparing(save_folder, opt_file, skip_file, options) as skipped:
        test_rel = sorted({path for _, enrol, test in trials for path in (enrol, test)})
        test_speakers = {rel.split("/")[0] for rel in test_rel}
        train_rel = [rel for rel in _list_wavs(wav_root) if rel.split("/")[0] not in test_speakers]
        train_rows, train_skipped = _scan(wav_root, train_rel, min_duration, max_duration, sample_rate)
        test_rows, test_skipped = _scan(wav_root, test_rel, min_duration, max_duration, sample_rate)
        skipped.extend(train_skipped + test_skipped)
        if skipped:
            logger.warning(
                "VoxCeleb1: skipped %d file(s): %s (listed in %s)",
                len(skipped),
                summarize_problems(skipped),
                skip_file,
            )
        if not train_rows:
            raise ValueError(
                f"VoxCeleb1 in {wav_root} has no usable utterance of a speaker outside the trial list "
                f"{trial_file} (skipped: {summarize_problems(train_skipped) or 'none found'}); see {skip_file}"
            )
        train_rows, valid_rows = _split_train_valid(train_rows, valid_ratio, seed)

        test_ids = {row[0] for row in test_rows}
        kept = [(label, utt_id(enrol), utt_id(test)) for label, enrol, test in trials]
        kept = [trial for trial in kept if trial[1] in test_ids and trial[2] in test_ids]
        if len(kept) < len(trials):
            logger.warning(
                "VoxCeleb1: dropped %d of %d trials whose audio was skipped",
                len(trials) - len(kept),
                len(trials),
            )
        if not kept:
            raise ValueError(
                f"no trial of {trial_file} is left: their audio was skipped "
                f"({summarize_problems(test_skipped)}); see {skip_file}"
            )

        for name, rows in (("train", train_rows), ("valid", valid_rows), ("test", test_rows)):
            write_csv(csv_files[name], CSV_HEADER, rows)
            logger.info(
                "VoxCeleb1 %s: %d utterances of %d speakers (%.2f h) -> %s",
                name,
                len(rows),
                len({row[3] for row in rows}),
                hours(rows),
                csv_files[name],
            )
        write_csv(csv_files["trials"], TRIALS_HEADER, kept)
        logger.info(
            "VoxCeleb1 trials: %d (%d target) -> %s",
            len(kept),
            sum(trial[0] == "1" for trial in kept),
            csv_files["trials"],
        )
    return csv_files


def utt_id(rel_path: str) -> str:
    """The utterance ID of a path relative to `wav/`.

    Example
    -------
    >>> utt_id("id10270/x6uYqmx31kE/00001.wav")
    'id10270--x6uYqmx31kE--00001'
    """
    if rel_path.endswith(".wav"):
        rel_path = rel_path[: -len(".wav")]
    return rel_path.replace("/", ID_SEPARATOR)


def _check_options(valid_ratio: float, min_duration: float, max_duration: float | None, sample_rate: int) -> None:
    if not 0.0 < valid_ratio < 1.0:
        raise ValueError(f"valid_ratio must be in (0, 1), got {valid_ratio}")
    check_prepare_options("VoxCeleb1", None, min_duration, max_duration, sample_rate)


def _find_trial_file(data_folder: Path, verification_file: str | Path | None) -> Path:
    if verification_file is not None:
        candidates = [Path(verification_file)]
    else:
        candidates = [data_folder / "meta" / TRIAL_FILE, data_folder / TRIAL_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"VoxCeleb1 trial list not found: looked for {' and '.join(map(str, candidates))}. Put "
        f"{TRIAL_FILE} (the cleaned VoxCeleb1-O list of the VoxCeleb website) in "
        f"<data_folder>/meta/ or <data_folder>/, or pass verification_file"
    )


def _parse_trials(text: str, trial_file: Path) -> list[tuple[str, str, str]]:
    """(label, enrol path, test path) per trial line; paths relative to `wav/`."""
    trials = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise ValueError(f"{trial_file}:{number}: expected '<0|1> <enrol path> <test path>', got {line!r}")
        for path in fields[1:]:
            if len(path.split("/")) != 3 or path.startswith("/"):
                raise ValueError(
                    f"{trial_file}:{number}: {path!r} is not a path relative to wav/ "
                    f"of the form <speaker>/<video>/<NNNNN>.wav"
                )
        trials.append((fields[0], fields[1], fields[2]))
    if not trials:
        raise ValueError(f"the trial list {trial_file} has no trial")
    return trials


def _list_wavs(wav_root: Path) -> list[str]:
    """Every `<speaker>/<video>/<utt>.wav` under `wav_root`, relative to it, sorted."""
    return sorted(p.relative_to(wav_root).as_posix() for p in wav_root.glob("*/*/*.wav"))


def _scan(
    wav_root: Path, rel_paths: list[str], min_duration: float, max_duration: float | None, sample_rate: int
) -> tuple[list[list[str]], list[AudioProblem]]:
    """CSV rows (sorted by ID) and skipped files of the given paths relative to `wav_root`."""
    paths = [os.path.abspath(wav_root / rel) for rel in rel_paths]
    checks = check_audio_files(paths, sample_rate, min_duration, max_duration)
    rows: list[list[str]] = []
    skipped: list[AudioProblem] = []
    for rel, path, (duration, problem) in zip(rel_paths, paths, checks):
        if problem is not None:
            skipped.append(problem)
        else:
            rows.append([utt_id(rel), str(duration), path, rel.split("/")[0]])
    rows.sort(key=lambda row: row[0])
    return rows, skipped


def _split_train_valid(rows: list[list[str]], valid_ratio: float, seed: int) -> tuple[list[list[str]], list[list[str]]]:
    """Moves a `valid_ratio` share (at least 1) of each speaker's utterances to valid."""
    by_speaker: dict[str, list[list[str]]] = defaultdict(list)
    for row in rows:
        by_speaker[row[3]].append(row)
    valid_ids: set[str] = set()
    alone = 0
    for spk_id, spk_rows in by_speaker.items():
        if len(spk_rows) < 2:
            alone += 1  # one utterance cannot be in both sets: train keeps it
            continue
        n_valid = min(len(spk_rows) - 1, max(1, round(valid_ratio * len(spk_rows))))
        # A generator per speaker: its split does not change when other speakers are added.
        chosen = random.Random(f"{seed}:{spk_id}").sample(spk_rows, n_valid)
        valid_ids.update(row[0] for row in chosen)
    if alone:
        logger.warning("VoxCeleb1: %d training speaker(s) with a single utterance are not in valid.csv", alone)
    return [r for r in rows if r[0] not in valid_ids], [r for r in rows if r[0] in valid_ids]
