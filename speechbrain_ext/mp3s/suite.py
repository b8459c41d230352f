"""Runs the MP3S suite for one or more exported encoders and tabulates the results.

    python -m speechbrain_ext.mp3s.suite --encoder results/BEST-RQ/<run>/encoder [--encoder ...] \\
        --librispeech /data/LibriSpeech --commonvoice cy=/data/cv/cy --commonvoice eu=/data/cv/eu \\
        --voxceleb1 /data/VoxCeleb1 --iemocap /data/IEMOCAP --slurp /data/SLURP --output mp3s_results

Every recipe under recipes/MP3S runs as a user runs it (one process per task, head and
encoder); tasks whose data folder is not given are left out. Writes ``results.csv`` and
``results.md`` (task, head, metric, value, epochs, encoder, mixer) and, with several encoders,
``results.png``: one bar per encoder for each task and head.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from speechbrain_ext.mp3s.tasks import RESULTS_FILE

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes" / "MP3S"
COLUMNS = ("task", "head", "test_set", "metric", "value", "epochs", "encoder", "mixer")


@dataclass(frozen=True)
class Recipe:
    task: str  # folder under recipes/MP3S and the data option
    head: str
    quick: tuple[str, ...] = ()  # smaller head for smoke runs (--quick)

    @property
    def train_py(self) -> Path:
        return RECIPES_DIR / self.task / self.head / "train.py"

    @property
    def hparams(self) -> Path:
        return RECIPES_DIR / self.task / self.head / "hparams" / f"{self.head}.yaml"


SMALL_ECAPA = ("--ecapa_channels=[32, 32, 32, 32, 96]", "--embedding_dim=32")
RECIPES = (
    Recipe("LibriSpeech", "LSTM", ("--hidden_size=64",)),
    Recipe("LibriSpeech", "contextnet", ("--contextnet_channels=64", "--contextnet_blocks=3")),
    Recipe("CommonVoice", "LSTM", ("--hidden_size=64",)),
    Recipe("CommonVoice", "linear"),
    Recipe("VoxCeleb1", "ecapa_tdnn", SMALL_ECAPA),
    Recipe("VoxCeleb1", "Xvectors", ("--embedding_dim=32",)),
    Recipe("IEMOCAP", "linear"),
    Recipe("IEMOCAP", "ecapa_tdnn", SMALL_ECAPA),
    Recipe("SLURP", "linear"),
    Recipe("SLURP", "LSTM_linear", ("--lstm_size=64",)),
)


def run_recipe(recipe: Recipe, encoder: Path, data_folder: str, output: Path, extra: list[str]) -> list[dict]:
    """Runs one recipe for one encoder; returns its result rows."""
    command = [sys.executable, str(recipe.train_py), str(recipe.hparams), f"--ssl_folder={encoder}",
               f"--data_folder={data_folder}", f"--output_folder={output}", "--noprogressbar", *extra]
    print("running:", " ".join(command), flush=True)
    completed = subprocess.run(command, capture_output=True, text=True)
    (output.parent / f"{output.name}.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"{recipe.task}/{recipe.head} failed for {encoder}; see {output.name}.log:\n"
                           + completed.stderr[-2000:])
    return json.loads((output / RESULTS_FILE).read_text())


def write_tables(rows: list[dict], output: Path) -> tuple[Path, Path]:
    """results.csv and results.md from the collected rows."""
    csv_path, md_path = output / "results.csv", output / "results.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: row[key] for key in COLUMNS} for row in rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{row[k]:.2f}" if k == "value" else str(row[k]) for k in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def plot_comparison(rows: list[dict], path: Path) -> Path:
    """One panel per (task, head, test set, metric), each on its own scale, one bar per encoder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["task"], r["head"], r["test_set"], r["metric"]) for r in rows})
    encoders = sorted({(r["encoder"], r["mixer"]) for r in rows})
    columns = min(5, len(groups))
    lines = -(-len(groups) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.6 * lines), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, group in zip(axes.flat, groups):
        values = {(r["encoder"], r["mixer"]): r["value"] for r in rows
                  if (r["task"], r["head"], r["test_set"], r["metric"]) == group}
        axis.bar(range(len(encoders)), [values.get(e, 0.0) for e in encoders],
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


def run_suite(encoders: list[Path], data: dict[str, list[tuple[str, str]]], output: Path, extra: list[str],
              quick: bool = False, task_overrides: dict[str, list[str]] | None = None) -> list[dict]:
    """Every recipe with data, for every encoder; writes the tables (and the plot) into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, encoder in enumerate(encoders):
        for recipe in RECIPES:
            for tag, folder in data.get(recipe.task, []):
                name = f"enc{index}-{recipe.task}{'-' + tag if tag else ''}-{recipe.head}"
                options = [*extra, *(recipe.quick if quick else ()), *(task_overrides or {}).get(recipe.task, [])]
                for row in run_recipe(recipe, encoder, folder, output / name, options):
                    row["task"] = f"{row['task']} ({tag})" if tag else row["task"]
                    rows.append(row)
    write_tables(rows, output)
    if len(encoders) > 1:
        plot_comparison(rows, output / "results.png")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, action="append", required=True, help="exported encoder folder")
    parser.add_argument("--librispeech")
    parser.add_argument("--commonvoice", action="append", default=[], help="LANG=folder, e.g. cy=/data/cv/cy")
    parser.add_argument("--voxceleb1")
    parser.add_argument("--iemocap")
    parser.add_argument("--slurp")
    parser.add_argument("--output", type=Path, default=Path("mp3s_results"))
    parser.add_argument("--epochs", type=int, help="override number_of_epochs of every recipe")
    parser.add_argument("--quick", action="store_true", help="small heads, for toy data and smoke tests")
    parser.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE",
                        help="override one YAML key of a task's recipes, e.g. VoxCeleb1.num_classes=40")
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
    rows = run_suite(args.encoder, data, args.output, extra, quick=args.quick, task_overrides=task_overrides)
    print((args.output / "results.md").read_text())
    print(f"{len(rows)} results in {args.output}")


if __name__ == "__main__":
    main()
