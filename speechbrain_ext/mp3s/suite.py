"""Runs the MP3S suite for one or more exported encoders and tabulates the results.

    python -m speechbrain_ext.mp3s.suite --encoder results/BEST-RQ/<run>/encoder [--encoder ...] \\
        --librispeech /data/LibriSpeech --commonvoice cy=/data/cv/cy --commonvoice eu=/data/cv/eu \\
        --voxceleb1 /data/VoxCeleb1 --iemocap /data/IEMOCAP --slurp /data/SLURP --output mp3s_results \\
        [--profile paper|mp3s] [--finetune]

Every recipe under recipes/MP3S (``<Task>/train.py`` with each of its heads' YAMLs: ``<Task>/hparams/<head>.yaml``
for the ``paper`` profile, the default, ``<Task>/hparams/mp3s/<head>.yaml`` for ``mp3s``) runs as a user runs
it (one process per task, head, encoder and, for IEMOCAP, leave-one-speaker-out fold: all 10 by default,
``--folds`` for fewer); tasks whose data folder is not given are left out. Each run has its own folder, named
by the encoder's digest and the profile, so a rerun never reuses a head trained on another encoder. A recipe
that fails is recorded as a
row (status "failed" and the end of its traceback) and the suite goes on; the tables are always
written:

- ``results.csv`` / ``results.md``: one row per run and metric (task, head, profile, test set, metric,
  value, epochs, encoder, mixer, fold, status, error);
- ``results_wide.csv`` / ``results_wide.md``: the paper's shape, one row per encoder and profile, one
  column per task metric (IEMOCAP: mean and standard deviation over the folds run);
- ``layer_weights/``: the learned weight of each encoder layer, one small plot per task, head and
  encoder (IEMOCAP: mean over folds), with their values in ``layer_weights.json``;
- with several encoders, ``results.png``: one bar per encoder for each task and head.

With ``--finetune`` (and ``--librispeech``), each encoder is also fine-tuned with CTC by
recipes/LibriSpeech/CTC (its YAML for the encoder's mixer, at the encoder's width); its test-clean and
test-other WER and CER join the tables as the task "LibriSpeech CTC fine-tuning", greedy (``WER``) and with
the n-gram given to it by ``--set CTC.kenlm_model_path=...`` (``WER_beam_lm``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from speechbrain_ext.mp3s.brain import LAYER_WEIGHTS_FILE, PROFILES, RESULTS_FILE, encoder_digest
from speechbrain_ext.paths import pyplot, recipes_dir

RECIPES_DIR = recipes_dir("MP3S")
FINETUNING_DIR = recipes_dir("LibriSpeech", "CTC")
FINETUNING_TASK = "LibriSpeech CTC fine-tuning"
COLUMNS = ("task", "head", "profile", "test_set", "metric", "value", "epochs", "encoder", "mixer", "fold", "status",
           "error")
IEMOCAP_FOLDS = tuple(range(1, 11))


@dataclass(frozen=True)
class Recipe:
    """One head of one task: ``recipes/MP3S/<task>/train.py`` with ``hparams/<head>.yaml`` (profile ``paper``) or
    ``hparams/mp3s/<head>.yaml`` (``mp3s``)."""

    task: str  # folder under recipes/MP3S and the data option
    head: str
    quick: tuple[str, ...] = ()  # smaller head for smoke runs (--quick)

    @property
    def train_py(self) -> Path:
        return RECIPES_DIR / self.task / "train.py"

    def hparams(self, profile: str = "paper") -> Path:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        return RECIPES_DIR / self.task / "hparams" / ("" if profile == "paper" else profile) / f"{self.head}.yaml"

    @property
    def name(self) -> str:
        """The task's name in the results (the YAML's ``task``, e.g. "IEMOCAP ER")."""
        found = re.search(r"^task: *([^#\n]*?) *(#.*)?$", self.hparams().read_text(encoding="utf-8"), flags=re.M)
        return found.group(1) if found else self.task

    def keys(self) -> set[str]:
        """The top-level keys of the head's YAMLs (both profiles): what ``--set`` may override."""
        return {key for profile in PROFILES
                for key in re.findall(r"^(\w+):", self.hparams(profile).read_text(encoding="utf-8"), flags=re.M)}


SMALL_ECAPA = ("--ecapa_channels=[32, 32, 32, 32, 96]", "--embedding_dim=32")
RECIPES = (
    Recipe("LibriSpeech", "LSTM", ("--hidden_size=64",)),
    Recipe("LibriSpeech", "contextnet", ("--contextnet_channels=64", "--contextnet_blocks=3")),
    Recipe("CommonVoice", "LSTM", ("--hidden_size=64",)),
    Recipe("CommonVoice", "linear", ("--dnn_neurons=64",)),
    Recipe("VoxCeleb1", "ecapa_tdnn", SMALL_ECAPA),
    Recipe("VoxCeleb1", "Xvectors", ("--embedding_dim=32",)),
    Recipe("IEMOCAP", "linear"),
    Recipe("IEMOCAP", "ecapa_tdnn", SMALL_ECAPA),
    Recipe("SLURP", "linear"),
    Recipe("SLURP", "LSTM_linear", ("--lstm_size=64",)),
)


class RecipeFailed(RuntimeError):
    """A recipe's process failed; ``summary`` holds the end of its traceback."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


def error_summary(stderr: str, lines: int = 6) -> str:
    """The last lines of the last traceback in ``stderr`` (its final line names the error)."""
    start = stderr.rfind("Traceback (most recent call last):")
    text = stderr[start:] if start >= 0 else stderr
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) if kept else "(no output)"


def run_recipe(recipe: Recipe, encoder: Path, data_folder: str, output: Path, extra: list[str],
               profile: str = "paper") -> list[dict]:
    """Runs one recipe for one encoder; returns its result rows or raises :class:`RecipeFailed`."""
    command = [sys.executable, str(recipe.train_py), str(recipe.hparams(profile)), f"--ssl_folder={encoder}",
               f"--data_folder={data_folder}", f"--output_folder={output}", "--noprogressbar", *extra]
    print("running:", " ".join(command), flush=True)
    completed = subprocess.run(command, capture_output=True, text=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    (output.parent / f"{output.name}.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        summary = error_summary(completed.stderr)
        raise RecipeFailed(f"{recipe.task}/{recipe.head} failed for {encoder} (exit {completed.returncode}); "
                           f"see {output.name}.log:\n{summary}", summary)
    return json.loads((output / RESULTS_FILE).read_text())


def finetuning_rows(rows: list[dict]) -> list[dict]:
    """The CTC recipe's ``results.json`` rows as result rows: the metric named by its decoding (greedy: ``WER``;
    ``beam``: ``WER_beam``; ``beam_lm``: ``WER_beam_lm``).

    Example
    -------
    >>> finetuning_rows([{"test_set": "test-clean", "decoding": "beam_lm", "metric": "WER", "value": 3.1,
    ...                   "encoder": "e", "mixer": "mamba"}])[0]["metric"]
    'WER_beam_lm'
    """
    return [{"task": FINETUNING_TASK, "head": "CTC", "profile": "paper", "test_set": row["test_set"],
             "metric": row["metric"] if row["decoding"] == "greedy" else f"{row['metric']}_{row['decoding']}",
             "value": row["value"], "epochs": "", "encoder": row["encoder"], "mixer": row["mixer"], "fold": None}
            for row in rows]


def run_finetuning(encoder: Path, data_folder: str, output: Path, extra: list[str]) -> list[dict]:
    """Fine-tunes ``encoder`` with recipes/LibriSpeech/CTC (the YAML of its mixer, at its width); its result rows."""
    from speechbrain_ext.models.speech_encoder import SpeechEncoder

    config = SpeechEncoder.read_config(encoder)
    hparams = FINETUNING_DIR / "hparams" / f"{config['mixer']}.yaml"
    if not hparams.is_file():
        raise RecipeFailed(f"no fine-tuning YAML for mixer {config['mixer']!r}", f"{hparams} does not exist")
    command = [sys.executable, str(FINETUNING_DIR / "train.py"), str(hparams), f"--encoder_folder={encoder}",
               f"--d_model={config['d_model']}", f"--data_folder={data_folder}", f"--output_folder={output}",
               "--noprogressbar", *extra]
    print("running:", " ".join(command), flush=True)
    completed = subprocess.run(command, capture_output=True, text=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    (output.parent / f"{output.name}.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        summary = error_summary(completed.stdout + completed.stderr)
        raise RecipeFailed(f"CTC fine-tuning failed for {encoder} (exit {completed.returncode}); see "
                           f"{output.name}.log:\n{summary}", summary)
    return finetuning_rows(json.loads((output / RESULTS_FILE).read_text()))


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key == "value":
        return f"{value:.4f}"
    return str(value).replace("\n", " / ").replace("|", "\\|") if key == "error" else str(value)


def write_tables(rows: list[dict], output: Path) -> tuple[Path, Path]:
    """results.csv and results.md (the long form: one row per run and metric, failures included)."""
    output.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = output / "results.csv", output / "results.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: _cell(row, key) if key != "error" else row.get("error", "") for key in COLUMNS}
                         for row in rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row, key) for key in COLUMNS) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def wide_table(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """One row per encoder and profile, one column per task metric: (columns, rows of {column: (mean, std, n)})."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    columns: list[str] = []
    for row in rows:
        if row.get("status", "ok") != "ok" or row["test_set"] == "valid":
            continue  # VoxCeleb1's held-out speaker accuracy is a check, not an MP3S metric
        column = f"{row['task']} {row['head']} {row['metric']} ({row['test_set']})"
        if column not in columns:
            columns.append(column)
        key = (row["mixer"], row["encoder"], row.get("profile", ""))
        groups.setdefault(key, {}).setdefault(column, []).append(float(row["value"]))
    table = []
    for (mixer, encoder, profile), values in groups.items():
        cells = {col: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                 for col, v in values.items()}
        table.append({"mixer": mixer, "encoder": encoder, "profile": profile, **cells})
    return columns, table


def write_wide_tables(rows: list[dict], output: Path) -> tuple[Path, Path]:
    """results_wide.csv (means, and standard deviations over folds) and results_wide.md (mean ± std)."""
    columns, table = wide_table(rows)
    multi = [col for col in columns if any(isinstance(r.get(col), tuple) and r[col][2] > 1 for r in table)]
    csv_path, md_path = output / "results_wide.csv", output / "results_wide.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mixer", "encoder", "profile", *columns, *(f"{col} std" for col in multi)])
        for row in table:
            writer.writerow([row["mixer"], row["encoder"], row["profile"],
                             *(f"{row[c][0]:.4f}" if c in row else "" for c in columns),
                             *(f"{row[c][1]:.4f}" if c in row else "" for c in multi)])

    def md(cell) -> str:
        if cell is None:
            return ""
        mean, std, n = cell
        return f"{mean:.4f} ± {std:.4f} ({n} folds)" if n > 1 else f"{mean:.4f}"

    lines = ["| mixer | encoder | profile | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 3)]
    lines += [f"| {r['mixer']} | {r['encoder']} | {r['profile']} | " + " | ".join(md(r.get(c)) for c in columns) + " |"
              for r in table]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def plot_layer_weights(records: list[dict], folder: Path) -> list[Path]:
    """One small bar chart per (task, head, encoder): the weight of each layer (mean over folds)."""
    plt = pyplot("layer-weight plots")
    if plt is None:
        return []

    folder.mkdir(parents=True, exist_ok=True)
    grouped: dict[tuple, list[list[float]]] = {}
    for record in records:
        key = (record["task"], record["head"], record["mixer"], record["encoder"], record["digest"])
        grouped.setdefault(key, []).append(record["layer_weights"])
    paths, summary = [], []
    for (task, head, mixer, encoder, digest), runs in grouped.items():
        weights = [statistics.fmean(layer) for layer in zip(*runs)]
        summary.append({"task": task, "head": head, "mixer": mixer, "encoder": encoder, "runs": len(runs),
                        "layer_weights": weights})
        fig, axis = plt.subplots(figsize=(3.2, 2.2))
        axis.bar(range(len(weights)), weights)
        axis.set_xlabel("layer (0: encoder input)", fontsize=7)
        axis.set_ylabel("weight", fontsize=7)
        axis.set_title(f"{task} / {head}\n{mixer} ({digest[:8]}){f', {len(runs)} folds' if len(runs) > 1 else ''}",
                       fontsize=7)
        axis.tick_params(labelsize=6)
        fig.tight_layout()
        name = f"{mixer}-{digest[:8]}-{task}-{head}".replace(" ", "_").replace("(", "").replace(")", "")
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    (folder / "layer_weights.json").write_text(json.dumps(summary, indent=2) + "\n")
    return paths


def plot_comparison(rows: list[dict], path: Path) -> Path | None:
    """One panel per (task, head, test set, metric), each on its own scale, one bar per encoder."""
    plt = pyplot("comparison plot")
    if plt is None:
        return None

    rows = [r for r in rows if r.get("status", "ok") == "ok"]
    groups = sorted({(r["task"], r["head"], r["test_set"], r["metric"]) for r in rows})
    encoders = sorted({(r["encoder"], r["mixer"]) for r in rows})
    columns = max(1, min(5, len(groups)))
    lines = max(1, -(-len(groups) // columns))
    fig, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.6 * lines), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, group in zip(axes.flat, groups):
        values: dict[tuple, list[float]] = {}
        for r in rows:
            if (r["task"], r["head"], r["test_set"], r["metric"]) == group:
                values.setdefault((r["encoder"], r["mixer"]), []).append(r["value"])
        axis.bar(range(len(encoders)), [statistics.fmean(values[e]) if e in values else 0.0 for e in encoders],
                 color=[colours[i % len(colours)] for i in range(len(encoders))])
        axis.set_xticks(range(len(encoders)), [mixer for _, mixer in encoders], fontsize=7)
        task, head, test_set, metric = group
        better = "higher is better" if metric == "accuracy" else "lower is better"
        axis.set_title(f"{task} / {head}\n{test_set}: {metric} ({better})", fontsize=7)
        axis.tick_params(axis="y", labelsize=7)
    for axis in list(axes.flat)[len(groups):]:
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _failure_row(recipe: Recipe, tag: str, encoder: Path, fold, error: str, profile: str) -> dict:
    task = recipe.name
    return {"task": f"{task} ({tag})" if tag else task, "head": recipe.head, "profile": profile, "test_set": "",
            "metric": "",
            "value": float("nan"), "epochs": "", "encoder": str(encoder), "mixer": "", "fold": fold,
            "status": "failed", "error": error}


def run_suite(encoders: list[Path], data: dict[str, list[tuple[str, str]]], output: Path, extra: list[str],
              quick: bool = False, task_overrides: dict[str, list[str]] | None = None,
              folds: tuple[int, ...] = IEMOCAP_FOLDS, profile: str = "paper", finetune: bool = False) -> list[dict]:
    """Every recipe with data, for every encoder (IEMOCAP for every fold), in one ``profile`` ("paper": the
    YAMLs the paper's runs used, "mp3s": upstream MP3S); writes the tables into ``output``.

    A failing recipe becomes a row with status "failed" and its error; the tables are rewritten
    after every run, so an interrupted suite keeps what finished.
    """
    output.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    weights: list[dict] = []
    for encoder in encoders:
        digest = encoder_digest(encoder)
        for recipe in RECIPES:
            for tag, folder in data.get(recipe.task, []):
                for fold in (folds if recipe.task == "IEMOCAP" else (None,)):
                    name = (f"{digest[:12]}-{profile}-{recipe.task}{'-' + tag if tag else ''}-{recipe.head}"
                            f"{'' if fold is None else f'-fold{fold}'}")
                    options = [*extra, *(recipe.quick if quick else ()), *(task_overrides or {}).get(recipe.task, []),
                               *(() if fold is None else (f"--test_spk_id={fold}",))]
                    try:
                        new_rows = run_recipe(recipe, encoder, folder, output / name, options, profile)
                    except Exception as err:  # noqa: BLE001 - any failure is recorded and the suite goes on
                        summary = err.summary if isinstance(err, RecipeFailed) else f"{type(err).__name__}: {err}"
                        print(f"FAILED {name}:\n{summary}", flush=True)
                        rows.append(_failure_row(recipe, tag, encoder, fold, summary, profile))
                    else:
                        for row in new_rows:
                            row["task"] = f"{row['task']} ({tag})" if tag else row["task"]
                            row.setdefault("fold", fold)
                            row.update(status="ok", error="")
                            rows.append(row)
                        weights_file = output / name / LAYER_WEIGHTS_FILE
                        if weights_file.is_file():
                            record = json.loads(weights_file.read_text())
                            weights.append({**record, "task": new_rows[0]["task"] if new_rows else record["task"],
                                            "digest": digest})
                    write_tables(rows, output)
                    write_wide_tables(rows, output)
        if finetune and "LibriSpeech" in data:
            name = f"{digest[:12]}-CTC-finetuning"
            options = [*extra, *(task_overrides or {}).get("CTC", [])]
            try:
                rows.extend({**row, "status": "ok", "error": ""}
                            for row in run_finetuning(encoder, data["LibriSpeech"][0][1], output / name, options))
            except Exception as err:  # noqa: BLE001 - recorded like a failing MP3S recipe
                summary = err.summary if isinstance(err, RecipeFailed) else f"{type(err).__name__}: {err}"
                print(f"FAILED {name}:\n{summary}", flush=True)
                rows.append({"task": FINETUNING_TASK, "head": "CTC", "profile": "paper", "test_set": "",
                             "metric": "", "value": float("nan"), "epochs": "", "encoder": str(encoder),
                             "mixer": "", "fold": None, "status": "failed", "error": summary})
            write_tables(rows, output)
            write_wide_tables(rows, output)
    write_tables(rows, output)
    write_wide_tables(rows, output)
    if weights:
        plot_layer_weights(weights, output / "layer_weights")
    if len(encoders) > 1 and any(row["status"] == "ok" for row in rows):
        plot_comparison(rows, output / "results.png")
    return rows


def _folds(text: str) -> tuple[int, ...]:
    """'1,2,3' or '1-10' -> the IEMOCAP folds (test speakers 1-10)."""
    folds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        folds.extend(range(int(first), int(last or first) + 1))
    if not folds or any(not 1 <= fold <= 10 for fold in folds):
        raise argparse.ArgumentTypeError(f"folds are IEMOCAP test speakers 1-10, got {text!r}")
    return tuple(dict.fromkeys(folds))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (epochs a head trains), got {text!r}")
    return value


def _language(item: str) -> tuple[str, str]:
    """'LANG=folder' -> (LANG, folder); LANG names the runs' folders, so it must be a plain word."""
    language, sep, folder = item.partition("=")
    if not sep or not folder:
        raise argparse.ArgumentTypeError(f"--commonvoice expects LANG=folder (e.g. cy=/data/cv/cy), got {item!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", language):
        raise argparse.ArgumentTypeError(f"--commonvoice LANG must be a language code (letters, digits, - or _), "
                                         f"got {language!r}")
    return language, folder


def task_overrides_from(items: list[str]) -> dict[str, list[str]]:
    """``--set TASK.KEY=VALUE`` options -> {task: ["--KEY=VALUE", ...]}; unknown tasks or keys are refused.

    Example
    -------
    >>> task_overrides_from(["VoxCeleb1.lr=0.002"])
    {'VoxCeleb1': ['--lr=0.002']}
    >>> task_overrides_from(["Slurp.lr=0.5"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --set Slurp.lr=0.5: no task 'Slurp'; the tasks are CTC, CommonVoice, IEMOCAP, ..., VoxCeleb1
    """
    tasks = sorted({recipe.task for recipe in RECIPES} | {"CTC"})  # CTC: the fine-tuning recipe (--finetune)
    overrides: dict[str, list[str]] = {}
    for item in items:
        task, _, assignment = item.partition(".")
        key, equals, _ = assignment.partition("=")
        if not equals or not key:
            raise ValueError(f"--set expects TASK.KEY=VALUE, got {item!r}")
        if task not in tasks:
            raise ValueError(f"--set {item}: no task {task!r}; the tasks are {', '.join(tasks)}")
        if task == "CTC":
            keys = {key for path in (FINETUNING_DIR / "hparams").glob("*.yaml")
                    for key in re.findall(r"^(\w+):", path.read_text(encoding="utf-8"), flags=re.M)}
        else:
            keys = set().union(*(recipe.keys() for recipe in RECIPES if recipe.task == task))
        if key not in keys:
            raise ValueError(f"--set {item}: the {task} YAMLs have no key {key!r}; they have "
                             f"{', '.join(sorted(k for k in keys if not k.startswith('_')))}")
        overrides.setdefault(task, []).append(f"--{assignment}")
    return overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, action="append", required=True, help="exported encoder folder")
    parser.add_argument("--librispeech")
    parser.add_argument("--commonvoice", type=_language, action="append", default=[],
                        help="LANG=folder, e.g. cy=/data/cv/cy")
    parser.add_argument("--voxceleb1")
    parser.add_argument("--iemocap")
    parser.add_argument("--slurp")
    parser.add_argument("--output", type=Path, default=Path("mp3s_results"))
    parser.add_argument("--profile", choices=PROFILES, default="paper",
                        help="paper: the YAMLs the paper's runs used (whettenr/benchmarks ssl_brq.yaml); "
                             "mp3s: upstream MP3S (default: paper)")
    parser.add_argument("--folds", type=_folds, default=IEMOCAP_FOLDS,
                        help="IEMOCAP leave-one-speaker-out folds to run, e.g. 1,2,3 or 1-10 (default: all 10)")
    parser.add_argument("--epochs", type=_positive_int, help="override number_of_epochs of every recipe")
    parser.add_argument("--quick", action="store_true", help="small heads, for toy data and smoke tests")
    parser.add_argument("--finetune", action="store_true",
                        help="also fine-tune each encoder with CTC on --librispeech (recipes/LibriSpeech/CTC)")
    parser.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE",
                        help="override one YAML key of a task's recipes, e.g. VoxCeleb1.lr=0.002")
    args = parser.parse_args(argv)
    try:
        task_overrides = task_overrides_from(args.set)
    except ValueError as error:
        parser.error(str(error))
    data = {task: [("", folder)] for task, folder in (("LibriSpeech", args.librispeech), ("VoxCeleb1", args.voxceleb1),
                                                      ("IEMOCAP", args.iemocap), ("SLURP", args.slurp)) if folder}
    if args.commonvoice:
        data["CommonVoice"] = args.commonvoice
    if not data:
        parser.error("give at least one data folder (--librispeech, --commonvoice, --voxceleb1, --iemocap, --slurp)")
    extra = [f"--number_of_epochs={args.epochs}"] if args.epochs is not None else []
    rows = run_suite(args.encoder, data, args.output, extra, quick=args.quick, task_overrides=task_overrides,
                     folds=args.folds, profile=args.profile, finetune=args.finetune)
    print((args.output / "results_wide.md").read_text())
    failed = [row for row in rows if row["status"] != "ok"]
    print(f"{len(rows)} results in {args.output}" + (f", {len(failed)} failed runs (see results.md)" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
