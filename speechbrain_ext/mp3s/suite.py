"""Runs the MP3S suite for one or more exported encoders and tabulates the results.

    python -m speechbrain_ext.mp3s.suite --encoder results/BEST-RQ/<run>/encoder [--encoder ...] \\
        --librispeech /data/LibriSpeech --commonvoice cy=/data/cv/cy --commonvoice eu=/data/cv/eu \\
        --voxceleb1 /data/VoxCeleb1 --iemocap /data/IEMOCAP --slurp /data/SLURP --output mp3s_results

Every recipe under recipes/MP3S (``<Task>/train.py`` with each of its ``<Task>/hparams/<head>.yaml``) runs as
a user runs it (one process per task, head, encoder and, for IEMOCAP, leave-one-speaker-out fold: all 10 by
default, ``--folds`` for fewer); tasks whose
data folder is not given are left out. Each run has its own folder, named by the encoder's digest,
so a rerun never reuses a head trained on another encoder. A recipe that fails is recorded as a
row (status "failed" and the end of its traceback) and the suite goes on; the tables are always
written:

- ``results.csv`` / ``results.md``: one row per run and metric (task, head, test set, metric,
  value, epochs, encoder, mixer, fold, status, error);
- ``results_wide.csv`` / ``results_wide.md``: the paper's shape, one row per encoder, one column
  per task metric (IEMOCAP: mean and standard deviation over the folds run);
- ``layer_weights/``: the learned weight of each encoder layer, one small plot per task, head and
  encoder (IEMOCAP: mean over folds), with their values in ``layer_weights.json``;
- with several encoders, ``results.png``: one bar per encoder for each task and head.
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

from speechbrain_ext.mp3s.brain import LAYER_WEIGHTS_FILE, RESULTS_FILE, encoder_digest
from speechbrain_ext.paths import pyplot, recipes_dir

RECIPES_DIR = recipes_dir("MP3S")
COLUMNS = ("task", "head", "test_set", "metric", "value", "epochs", "encoder", "mixer", "fold", "status", "error")
IEMOCAP_FOLDS = tuple(range(1, 11))


@dataclass(frozen=True)
class Recipe:
    """One head of one task: ``recipes/MP3S/<task>/train.py`` with ``hparams/<head>.yaml``."""

    task: str  # folder under recipes/MP3S and the data option
    head: str
    quick: tuple[str, ...] = ()  # smaller head for smoke runs (--quick)

    @property
    def train_py(self) -> Path:
        return RECIPES_DIR / self.task / "train.py"

    @property
    def hparams(self) -> Path:
        return RECIPES_DIR / self.task / "hparams" / f"{self.head}.yaml"

    @property
    def name(self) -> str:
        """The task's name in the results (the YAML's ``task``, e.g. "IEMOCAP ER")."""
        found = re.search(r"^task: *([^#\n]*?) *(#.*)?$", self.hparams.read_text(encoding="utf-8"), flags=re.M)
        return found.group(1) if found else self.task


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


def run_recipe(recipe: Recipe, encoder: Path, data_folder: str, output: Path, extra: list[str]) -> list[dict]:
    """Runs one recipe for one encoder; returns its result rows or raises :class:`RecipeFailed`."""
    command = [sys.executable, str(recipe.train_py), str(recipe.hparams), f"--ssl_folder={encoder}",
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
    """One row per encoder, one column per task metric: (columns, rows of {column: (mean, std, n)})."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    columns: list[str] = []
    for row in rows:
        if row.get("status", "ok") != "ok" or row["test_set"] == "valid":
            continue  # VoxCeleb1's held-out speaker accuracy is a check, not an MP3S metric
        column = f"{row['task']} {row['head']} {row['metric']} ({row['test_set']})"
        if column not in columns:
            columns.append(column)
        groups.setdefault((row["mixer"], row["encoder"]), {}).setdefault(column, []).append(float(row["value"]))
    table = []
    for (mixer, encoder), values in groups.items():
        cells = {col: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                 for col, v in values.items()}
        table.append({"mixer": mixer, "encoder": encoder, **cells})
    return columns, table


def write_wide_tables(rows: list[dict], output: Path) -> tuple[Path, Path]:
    """results_wide.csv (means, and standard deviations over folds) and results_wide.md (mean ± std)."""
    columns, table = wide_table(rows)
    multi = [col for col in columns if any(isinstance(r.get(col), tuple) and r[col][2] > 1 for r in table)]
    csv_path, md_path = output / "results_wide.csv", output / "results_wide.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mixer", "encoder", *columns, *(f"{col} std" for col in multi)])
        for row in table:
            writer.writerow([row["mixer"], row["encoder"],
                             *(f"{row[c][0]:.4f}" if c in row else "" for c in columns),
                             *(f"{row[c][1]:.4f}" if c in row else "" for c in multi)])

    def md(cell) -> str:
        if cell is None:
            return ""
        mean, std, n = cell
        return f"{mean:.4f} ± {std:.4f} ({n} folds)" if n > 1 else f"{mean:.4f}"

    lines = ["| mixer | encoder | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    lines += [f"| {r['mixer']} | {r['encoder']} | " + " | ".join(md(r.get(c)) for c in columns) + " |" for r in table]
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


def _failure_row(recipe: Recipe, tag: str, encoder: Path, fold, error: str) -> dict:
    task = recipe.name
    return {"task": f"{task} ({tag})" if tag else task, "head": recipe.head, "test_set": "", "metric": "",
            "value": float("nan"), "epochs": "", "encoder": str(encoder), "mixer": "", "fold": fold,
            "status": "failed", "error": error}


def run_suite(encoders: list[Path], data: dict[str, list[tuple[str, str]]], output: Path, extra: list[str],
              quick: bool = False, task_overrides: dict[str, list[str]] | None = None,
              folds: tuple[int, ...] = IEMOCAP_FOLDS) -> list[dict]:
    """Every recipe with data, for every encoder (IEMOCAP for every fold); writes the tables into ``output``.

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
                    name = (f"{digest[:12]}-{recipe.task}{'-' + tag if tag else ''}-{recipe.head}"
                            f"{'' if fold is None else f'-fold{fold}'}")
                    options = [*extra, *(recipe.quick if quick else ()), *(task_overrides or {}).get(recipe.task, []),
                               *(() if fold is None else (f"--test_spk_id={fold}",))]
                    try:
                        new_rows = run_recipe(recipe, encoder, folder, output / name, options)
                    except Exception as err:  # noqa: BLE001 - any failure is recorded and the suite goes on
                        summary = err.summary if isinstance(err, RecipeFailed) else f"{type(err).__name__}: {err}"
                        print(f"FAILED {name}:\n{summary}", flush=True)
                        rows.append(_failure_row(recipe, tag, encoder, fold, summary))
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, action="append", required=True, help="exported encoder folder")
    parser.add_argument("--librispeech")
    parser.add_argument("--commonvoice", action="append", default=[], help="LANG=folder, e.g. cy=/data/cv/cy")
    parser.add_argument("--voxceleb1")
    parser.add_argument("--iemocap")
    parser.add_argument("--slurp")
    parser.add_argument("--output", type=Path, default=Path("mp3s_results"))
    parser.add_argument("--folds", type=_folds, default=IEMOCAP_FOLDS,
                        help="IEMOCAP leave-one-speaker-out folds to run, e.g. 1,2,3 or 1-10 (default: all 10)")
    parser.add_argument("--epochs", type=int, help="override number_of_epochs of every recipe")
    parser.add_argument("--quick", action="store_true", help="small heads, for toy data and smoke tests")
    parser.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE",
                        help="override one YAML key of a task's recipes, e.g. VoxCeleb1.lr=0.002")
    args = parser.parse_args(argv)
    task_overrides: dict[str, list[str]] = {}
    for item in args.set:
        task, _, assignment = item.partition(".")
        if "=" not in assignment:
            parser.error(f"--set expects TASK.KEY=VALUE, got {item!r}")
        task_overrides.setdefault(task, []).append(f"--{assignment}")
    data = {task: [("", folder)] for task, folder in (("LibriSpeech", args.librispeech), ("VoxCeleb1", args.voxceleb1),
                                                      ("IEMOCAP", args.iemocap), ("SLURP", args.slurp)) if folder}
    if args.commonvoice:
        data["CommonVoice"] = [tuple(item.split("=", 1)) for item in args.commonvoice]
    if not data:
        parser.error("give at least one data folder (--librispeech, --commonvoice, --voxceleb1, --iemocap, --slurp)")
    extra = [f"--number_of_epochs={args.epochs}"] if args.epochs else []
    rows = run_suite(args.encoder, data, args.output, extra, quick=args.quick, task_overrides=task_overrides,
                     folds=args.folds)
    print((args.output / "results_wide.md").read_text())
    failed = [row for row in rows if row["status"] != "ok"]
    print(f"{len(rows)} results in {args.output}" + (f", {len(failed)} failed runs (see results.md)" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
