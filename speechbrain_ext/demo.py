"""Demo: BEST-RQ pretraining end to end on a toy LibriSpeech corpus, on a CPU in minutes.

    python -m speechbrain_ext.demo [--mixer summarymixing] [--epochs 20] [--output demo_results]

It writes a small LibriSpeech-layout corpus made by our formant synthesizer, runs the real
recipe (recipes/LibriSpeech/BEST-RQ/train.py with a shrunken model), then prints the loss and
masked-accuracy curve and draws it to ``<output>/curve.png``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from speechbrain_ext.data.toy import write_toy_librispeech
from speechbrain_ext.mixers import MIXERS
from speechbrain_ext.paths import pyplot, recipes_dir
from speechbrain_ext.sizes import PAPER_MIXERS

RECIPE = recipes_dir("LibriSpeech", "BEST-RQ")
# A model a CPU trains in minutes; everything else (the mixer's settings included) is the recipe's base YAML.
DEMO_SETTINGS = {
    "--d_model": "96", "--num_encoder_layers": "3", "--d_ffn": "256", "--nhead": "4", "--cb_vocab": "512",
    "--precision": "fp32", "--num_workers": "0", "--seconds_per_batch": "16", "--num_buckets": "4",
    "--grad_accumulation_factor": "1", "--avoid_if_shorter_than": "1.0", "--log_interval": "1",
    "--warmup_steps": "20", "--lr": "0.002", "--train_splits": "[train-clean-100]",
    "--valid_splits": "[dev-clean]", "--ckpt_interval_minutes": "0",
}
STEP_LINE = re.compile(r"^optimizer step: (\d+), lr: \S+ - train loss: (\S+), train masked_accuracy: (\S+)$", re.M)
EPOCH_LINE = re.compile(
    r"^epoch: (\d+), .* valid loss: ([^,\s]+), valid masked_accuracy: ([^,\s]+)"
    r"(?:, .*valid majority_code_share: (\S+))?$", re.M)


def read_curve(train_log: Path) -> tuple[list[tuple[int, float, float]], list[tuple[int, float, float, float]]]:
    """(step, loss, masked accuracy) per optimizer step, and (epoch, loss, accuracy, share of the most
    frequent target code: NaN if not logged) per validation."""
    text = train_log.read_text()
    steps = [(int(s), float(loss), float(acc)) for s, loss, acc in STEP_LINE.findall(text)]
    epochs = [(int(e), float(loss), float(acc), float(share or "nan"))
              for e, loss, acc, share in EPOCH_LINE.findall(text)]
    return steps, epochs


def text_curve(steps: list[tuple[int, float, float]], width: int = 60) -> str:
    """The training loss as a one-line bar chart per chunk of steps, with the masked accuracy."""
    chunk = max(1, len(steps) // 15)
    rows = []
    top = max(loss for _, loss, _ in steps)
    for start in range(0, len(steps), chunk):
        part = steps[start : start + chunk]
        loss = sum(p[1] for p in part) / len(part)
        accuracy = sum(p[2] for p in part) / len(part)
        bar = "#" * max(1, round(width * loss / top))
        rows.append(f"steps {part[0][0]:>4}-{part[-1][0]:<4} loss {loss:5.2f} acc {100 * accuracy:5.1f}% {bar}")
    return "\n".join(rows)


def plot_curve(steps, epochs, path: Path, title: str) -> Path | None:
    """Loss and masked accuracy against optimizer steps, as a PNG (None without matplotlib)."""
    plt = pyplot("demo curve")
    if plt is None:
        return None

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot([s for s, _, _ in steps], [loss for _, loss, _ in steps], lw=1, label="train (per step)")
    ax_acc.plot([s for s, _, _ in steps], [100 * a for _, _, a in steps], lw=1, label="train (running)")
    per_epoch = len(steps) / max(len(epochs), 1)
    valid_steps = [round(per_epoch * e) for e, *_ in epochs]
    ax_loss.plot(valid_steps, [loss for _, loss, *_ in epochs], "o-", label="valid")
    ax_acc.plot(valid_steps, [100 * a for _, _, a, _ in epochs], "o-", label="valid")
    ax_acc.plot(valid_steps, [100 * share for *_, share in epochs], "k--", lw=1, label="most frequent code (valid)")
    ax_loss.set(xlabel="optimizer step", ylabel="cross-entropy on masked frames")
    ax_acc.set(xlabel="optimizer step", ylabel="masked-frame accuracy (%)")
    for axis in (ax_loss, ax_acc):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(mixer: str, epochs: int, output: Path, seed: int = 1986) -> dict:
    """Writes the toy corpus, pretrains, and returns a summary (wall time, final accuracy, files)."""
    output.mkdir(parents=True, exist_ok=True)
    data = output / "data"
    if not (data / "LibriSpeech").is_dir():
        print(f"writing the toy LibriSpeech corpus to {data}", flush=True)
        write_toy_librispeech(data, splits=("train-clean-100", "dev-clean"), speakers_per_split=4,
                              chapters_per_speaker=2, utterances_per_chapter=8, seed=seed)
    run_folder = output / mixer
    options = {**DEMO_SETTINGS, "--number_of_epochs": str(epochs), "--seed": str(seed), "--data_folder": str(data),
               "--output_folder": str(run_folder)}
    command = [sys.executable, str(RECIPE / "train.py"), str(RECIPE / "hparams" / "base" / f"{mixer}.yaml"),
               *(f"{key}={value}" for key, value in options.items()), "--noprogressbar"]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    steps, valid = read_curve(run_folder / "train_log.txt")
    png = plot_curve(steps, valid, output / f"curve_{mixer}.png", f"BEST-RQ on toy LibriSpeech, {mixer}")
    print(f"\n{text_curve(steps)}\n")
    for epoch, loss, accuracy, share in valid:
        print(f"epoch {epoch}: valid loss {loss:.2f}, valid masked accuracy {100 * accuracy:.1f}% "
              f"(most frequent code {100 * share:.1f}%)")
    chance = 1 / int(DEMO_SETTINGS["--cb_vocab"])
    print(f"\n{mixer}: {wall:.0f} s wall, final valid masked accuracy {100 * valid[-1][2]:.1f}% "
          f"(always predicting the most frequent code: {100 * valid[-1][3]:.1f}%; chance {100 * chance:.2f}%), "
          f"curve in {png}, encoder in {run_folder / 'encoder'}")
    return {"mixer": mixer, "wall_seconds": wall, "valid_loss": valid[-1][1], "valid_accuracy": valid[-1][2],
            "majority_code_share": valid[-1][3], "png": png, "encoder": run_folder / "encoder"}


def summary_table(results: list[dict], epochs: int) -> str:
    """Markdown: per mixer, the final validation loss and masked accuracy beside the most frequent code's share."""
    size = ", ".join(f"{key}={DEMO_SETTINGS['--' + key]}" for key in ("num_encoder_layers", "d_model", "cb_vocab"))
    lines = [f"BEST-RQ demo on the toy corpus, {epochs} epochs, the paper's settings at demo size ({size})",
             "", "| mixer | valid loss | valid masked accuracy | most frequent code | ratio | wall (s) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['mixer']} | {r['valid_loss']:.2f} | {100 * r['valid_accuracy']:.1f}% | "
                     f"{100 * r['majority_code_share']:.1f}% | {r['valid_accuracy'] / r['majority_code_share']:.2f}x | "
                     f"{r['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixer", default="summarymixing", choices=[*sorted(MIXERS), "all"],
                        help="a mixer, or all: the paper's five, one after the other, with a summary table")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--output", type=Path, default=Path("demo_results"))
    args = parser.parse_args(argv)
    mixers = PAPER_MIXERS if args.mixer == "all" else (args.mixer,)
    results = [run_demo(mixer, args.epochs, args.output) for mixer in mixers]
    if len(results) > 1:
        table = summary_table(results, args.epochs)
        (args.output / "mixers.md").write_text(table)
        print("\n" + table)


if __name__ == "__main__":
    main()
