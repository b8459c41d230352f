"""Common Voice data preparation: SpeechBrain CSV manifests for speech recognition.

Mozilla Common Voice (Ardila et al., 2020, https://arxiv.org/abs/1912.06670): read sentences
recorded by volunteers, one folder per language. MP3S evaluates ASR on Welsh ("cy") and
Basque ("eu"). Download: https://commonvoice.mozilla.org/datasets (nothing is downloaded here).

Layout read: `<language folder>/clips/<name>.mp3` and the split lists `train.tsv`, `dev.tsv`,
`test.tsv` (tab-separated, with a header: `client_id  path  sentence  up_votes ...`; newer
releases add columns such as `sentence_id`, so columns are found by name). The language folder is
e.g. `cv-corpus-15.0-2023-09-08/cy`.

The clips are MP3 at 48 kHz (a few at 32 kHz), read through soundfile (libsndfile >= 1.1 decodes
MP3; no FFmpeg is needed). They are kept as they are: the manifests accept any sampling rate, and
the audio must be resampled when read, with :func:`read_commonvoice_audio` or
`speechbrain_ext.data.dataset.audio_dataset(..., resample=True)`. Durations come from the MP3
headers (`soundfile.info`): exact for files with a LAME/Xing header (Common Voice's, and those
libsndfile writes), estimated from the bit rate otherwise.

Authors
 * speechbrain_ext contributors
"""

from __future__ import annotations

import csv
import os
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf
import torch
from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.audio import AudioProblem, check_audio_files, read_audio_resampled, sample_problem
from speechbrain_ext.data.manifest import already_prepared, check_prepare_options, prepare_splits, split_list

logger = get_logger(__name__)

CSV_HEADER: tuple[str, ...] = ("ID", "duration", "wav", "spk_id", "wrd")
#: Columns of the split .tsv files that preparation reads (by name: their position varies by release).
TSV_COLUMNS: tuple[str, ...] = ("client_id", "path", "sentence")
OPT_FILE = "prepare_commonvoice_options.json"
SKIPPED_FILE = "prepare_commonvoice_skipped.txt"
#: Why a clip can be left out of a manifest.
SKIP_REASONS: tuple[str, ...] = (
    "empty",  # 0 bytes, or a valid header with 0 frames
    "unreadable",  # soundfile cannot read the header (corrupted, not audio)
    "corrupted",  # the header reads but the audio does not decode (only with check_decoding)
    "bad_samples",  # decodes to non-finite or absurd samples (only with check_decoding)
    "wrong_sample_rate",  # only when a sample_rate is required
    "not_mono",
    "too_short",  # duration < min_duration
    "too_long",  # duration > max_duration
    "missing_audio",  # a .tsv row whose clip does not exist
    "empty_transcript",  # nothing left of the sentence after normalisation
    "bad_record",  # a .tsv row without a path (path: <tsv>:<line>)
    "duplicate",  # a clip listed twice in the same split
)
_OPTIONS_VERSION = 1
# Decoded audio shorter than this fraction of the header's length is a truncated clip. Not 1.0:
# without a Xing header, the header length is only an estimate from the bit rate.
_MIN_DECODED_FRACTION = 0.9
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'", "ʼ": "'"})


def normalize_transcript(text: str) -> str:
    """Normalises a Common Voice sentence for character-level ASR.

    As SpeechBrain's CommonVoice recipes do for Latin-script languages: Unicode NFC, upper
    case, punctuation removed (hyphens and quotes become spaces) except apostrophes inside
    words (typographic ones written `'`), single spaces. Letters of any script are kept with
    their diacritics (Welsh ŵ ŷ, Basque ñ), as are digits.

    Arguments
    ---------
    text : str
        The sentence as typed by the contributor.

    Returns
    -------
    str
        The normalised transcript; empty if the sentence has no letter or digit.

    Example
    -------
    >>> normalize_transcript("Mae’r dŵr yn oer, iawn?  «Ikurriña»!")
    "MAE'R DŴR YN OER IAWN IKURRIÑA"
    >>> normalize_transcript(" -- ... ")
    ''
    """
    text = unicodedata.normalize("NFC", text).translate(_APOSTROPHES)
    # Letters (L*), their combining marks (M*, for letters without a precomposed form), digits.
    kept = "".join(ch if ch == "'" or unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
    words = (word.strip("'") for word in kept.upper().split())
    return " ".join(word for word in words if word)


def read_commonvoice_audio(path: str | Path, target_rate: int = 16000) -> torch.Tensor:
    """Reads a clip (MP3 through soundfile) as a mono waveform at `target_rate`.

    Resampling is torchaudio's band-limited sinc interpolation (pure torch, no FFmpeg);
    several channels are averaged.

    Arguments
    ---------
    path : str or Path
        The audio file (any format soundfile reads).
    target_rate : int
        Sampling rate of the result in Hz.

    Returns
    -------
    torch.Tensor
        Float32 waveform, shape `(L,)` with `L = ceil(frames * target_rate / file rate)`.

    Example
    -------
    >>> import os, tempfile
    >>> import numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "clip.mp3")
    >>> sf.write(path, 0.1 * np.sin(np.arange(48000) / 20.0), 48000, format="MP3")
    >>> read_commonvoice_audio(path).shape
    torch.Size([16000])
    """
    return read_audio_resampled(str(path), target_rate)


def prepare_commonvoice(
    data_folder: str | Path,
    save_folder: str | Path,
    language: str | None = None,
    splits: Sequence[str] = ("train", "dev", "test"),
    sample_rate: int | None = None,
    min_duration: float = 0.5,
    max_duration: float | None = None,
    check_decoding: bool = False,
    skip_prep: bool = False,
) -> dict[str, Path]:
    """Writes one SpeechBrain CSV manifest per Common Voice split.

    Each `<save_folder>/<split>.csv` has the columns `ID,duration,wav,spk_id,wrd`: the clip's
    file name without `.mp3` (`common_voice_cy_18500323`), its duration in seconds (from the
    header), the absolute path of the .mp3, the contributor's `client_id` and the sentence
    normalised by :func:`normalize_transcript`. Rows are sorted by ID. The audio keeps its own
    sampling rate (48 kHz mostly): resample it when reading (:func:`read_commonvoice_audio`).

    Clips that cannot be used are left out, counted per reason (see `SKIP_REASONS`), logged,
    and listed with the reason in `<save_folder>/prepare_commonvoice_skipped.txt` (one
    `path<TAB>reason<TAB>detail` line each): an empty, unreadable, missing or multi-channel
    file, a duration outside [`min_duration`, `max_duration`], a sentence with nothing left
    after normalisation, a row without a path and a clip listed twice. Only the header of each
    clip is read, unless `check_decoding` (then truncated or corrupted MP3 streams are found too).

    Work already done is skipped: when every CSV exists and the options saved beside them
    (`prepare_commonvoice_options.json`, written last) match this call, nothing is scanned.
    CSVs are written to a temporary file and renamed, so an interrupted preparation never
    leaves a partial CSV that looks complete.

    Arguments
    ---------
    data_folder : str or Path
        The language folder (holding `clips/` and the .tsv files), or its parent with `language`.
    save_folder : str or Path
        Where the CSV files, the options and the list of skipped clips are written.
    language : str, optional
        The language folder's name ("cy", "eu"), used when `data_folder` is its parent.
    splits : sequence of str
        Splits to prepare: names of `<split>.tsv` ("train", "dev", "test", "validated", ...).
    sample_rate : int, optional
        If given, clips with another sampling rate are skipped; None (the default) accepts any
        rate, as Common Voice mixes 48 and 32 kHz clips.
    min_duration : float
        Shorter clips are skipped (seconds); the default drops broken clips.
    max_duration : float, optional
        Longer clips are skipped (seconds); None keeps all.
    check_decoding : bool
        If True, every clip is decoded, and one that fails or decodes to less than 90% of the
        length in its header is skipped as "corrupted". Slower: it reads all the audio.
    skip_prep : bool
        If True, do nothing and only return the CSV paths.

    Returns
    -------
    dict
        Split name -> path of its CSV file.

    Raises
    ------
    FileNotFoundError
        If the language folder, its `clips/` or a split's .tsv file does not exist.
    ValueError
        If the options are invalid, a .tsv lacks a needed column or a split has no usable clip.

    Example
    -------
    >>> import csv, tempfile
    >>> from speechbrain_ext.data.toy import write_toy_commonvoice
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = write_toy_commonvoice(tmp.name, language="cy", clips_per_split=2)
    >>> csvs = prepare_commonvoice(tmp.name, tmp.name + "/manifests", language="cy")
    >>> with open(csvs["dev"], newline="") as f:
    ...     rows = list(csv.DictReader(f))
    >>> len(rows), list(rows[0]), rows[0]["wrd"].isupper()
    (2, ['ID', 'duration', 'wav', 'spk_id', 'wrd'], True)
    >>> tmp.cleanup()
    """
    splits = split_list(splits)
    save_folder = Path(save_folder)
    csv_files = {split: save_folder / f"{split}.csv" for split in splits}
    if skip_prep:
        return csv_files
    check_prepare_options(
        "Common Voice",
        splits,
        min_duration,
        max_duration,
        sample_rate,
        split_names=" (train, dev, test)",
        allow_any_rate=True,
    )

    root = _find_root(Path(data_folder), language, splits)
    options = {
        "version": _OPTIONS_VERSION,
        "data_folder": os.path.abspath(root),
        "splits": splits,
        "min_duration": float(min_duration),
        "max_duration": None if max_duration is None else float(max_duration),
        "sample_rate": None if sample_rate is None else int(sample_rate),
        "check_decoding": bool(check_decoding),
    }
    opt_file = save_folder / OPT_FILE
    if already_prepared(csv_files, opt_file, options):
        logger.info("Common Voice already prepared in %s (%s), skipping", save_folder, ", ".join(splits))
        return csv_files

    prepare_splits(
        splits,
        csv_files,
        lambda split: _scan_split(root, root / f"{split}.tsv", min_duration, max_duration, sample_rate, check_decoding),
        CSV_HEADER,
        "Common Voice",
        "clip",
        save_folder=save_folder,
        opt_file=opt_file,
        skip_file=save_folder / SKIPPED_FILE,
        options=options,
        logger=logger,
        where=lambda split: f" ({root / f'{split}.tsv'})",
    )
    return csv_files


def _find_root(data_folder: Path, language: str | None, splits: list[str]) -> Path:
    """The language folder: `data_folder/<language>` or `data_folder` itself."""
    candidates = [data_folder / language, data_folder] if language else [data_folder]
    for candidate in candidates:
        if (candidate / "clips").is_dir() and all((candidate / f"{s}.tsv").is_file() for s in splits):
            return candidate
    root = next((c for c in candidates if c.is_dir()), candidates[0])
    missing = [name for name in ["clips/", *(f"{s}.tsv" for s in splits)] if not (root / name).exists()]
    hint = ""
    if language is None and data_folder.is_dir():
        languages = sorted(p.name for p in data_folder.iterdir() if (p / "clips").is_dir())
        if languages:
            hint = f" It holds the language folder(s) {languages}: pass language=<one of them>."
    raise FileNotFoundError(
        f"Common Voice {missing} not found in {root}. data_folder must be a Common Voice language folder "
        f"(e.g. cv-corpus-15.0-2023-09-08/cy, holding clips/*.mp3 and <split>.tsv), or its parent with "
        f"language=.{hint}"
    )


def _read_tsv(tsv: Path, clips: Path) -> tuple[list[tuple[str, str, str, str]], list[AudioProblem]]:
    """(ID, clip path, client_id, transcript) per usable row of a split list, and the rows left out."""
    rows: list[tuple[str, str, str, str]] = []
    problems: list[AudioProblem] = []
    seen: set[str] = set()
    with open(tsv, encoding="utf-8", newline="") as handle:
        # Sentences hold quotes that are text, not CSV quoting.
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [column for column in TSV_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{tsv} has no column(s) {missing}; its header is {reader.fieldnames}")
        for row in reader:
            name = (row["path"] or "").strip()
            if not name:
                problems.append(AudioProblem(f"{tsv}:{reader.line_num}", "bad_record", "no path"))
                continue
            if not Path(name).suffix:  # the first releases listed clips without their extension
                name += ".mp3"
            path = os.path.abspath(clips / name)
            utt_id = Path(name).stem
            words = normalize_transcript(row["sentence"] or "")
            if utt_id in seen:
                problems.append(AudioProblem(path, "duplicate", f"listed again on line {reader.line_num}"))
            elif not words:
                problems.append(AudioProblem(path, "empty_transcript", repr(row["sentence"])[:80]))
            else:
                seen.add(utt_id)
                rows.append((utt_id, path, (row["client_id"] or "").strip(), words))
    return rows, problems


def _decoding_problem(path: str) -> AudioProblem | None:
    """Decodes a clip whose header is fine: a failure or a truncated stream is "corrupted", non-finite or
    absurd samples are "bad_samples"."""
    try:
        frames = sf.info(path).frames
        samples = sf.read(path, dtype="float32", always_2d=True)[0]
    except Exception as err:  # noqa: BLE001 - any failure to decode
        return AudioProblem(path, "corrupted", " ".join(str(err).split()))
    decoded = samples.shape[0]
    problem = sample_problem(samples)
    if problem is not None:
        return AudioProblem(path, "bad_samples", problem)
    if decoded < _MIN_DECODED_FRACTION * frames:
        return AudioProblem(path, "corrupted", f"decodes to {decoded} of the {frames} frames in its header")
    return None


def _scan_split(
    root: Path,
    tsv: Path,
    min_duration: float,
    max_duration: float | None,
    sample_rate: int | None,
    check_decoding: bool,
) -> tuple[list[list[str]], list[AudioProblem]]:
    """CSV rows (sorted by ID) and skipped clips of one split list."""
    clips, skipped = _read_tsv(tsv, root / "clips")
    checks = check_audio_files([path for _, path, _, _ in clips], sample_rate, min_duration, max_duration)
    good = [(clip, duration) for clip, (duration, problem) in zip(clips, checks) if problem is None]
    skipped.extend(problem for _, problem in checks if problem is not None)
    if check_decoding:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            problems = list(pool.map(lambda item: _decoding_problem(item[0][1]), good))
        skipped.extend(problem for problem in problems if problem is not None)
        good = [item for item, problem in zip(good, problems) if problem is None]
    rows = [[utt_id, str(duration), path, spk_id, words] for (utt_id, path, spk_id, words), duration in good]
    rows.sort(key=lambda row: row[0])
    return rows, skipped
