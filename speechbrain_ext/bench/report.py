"""Tables and a summary of bench results: the CPU section of docs/benchmarks.md is this output.

    python -m speechbrain_ext.bench.report --train benchmarks/results/cpu_train_4x256 \
        --encoder-train benchmarks/results/cpu_encoder_train_4x256 --infer benchmarks/results/cpu_infer_4x256 \
        --output benchmarks/results/cpu_report.md

Every ratio compares two models timed in the same bench run (``results.csv``), so machine load
between runs does not enter it. Linear mixers are ours but ``mhsa`` and ``mhsa_flash``; the stock
models are SpeechBrain's own Conformer and front-end (``sb_*``). The inference slope is a
least-squares line of time against input length per model, with the share of the variance it
explains (R²) and the time ratio between the two longest inputs (2.0 for a linear model when
they are 80 and 160 s).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

LINEAR = ("hypermixing", "fastformer", "summarymixing", "mamba")
STOCK = ("sb_RelPosMHAXL", "sb_regularMHA", "sb_RoPEMHA", "sb_hypermixing")


def read_results(folder: Path) -> dict[tuple[str, float], dict]:
    """(mixer, seconds) -> row of a bench run's results.csv, numbers parsed; failed points have ms None."""
    rows = {}
    with open(folder / "results.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for key in ("ms", "peak_mib", "seconds"):
                row[key] = float(row[key]) if row[key] not in ("", None) else None
            rows[row["mixer"], row["seconds"]] = row
    return rows


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R² of ys against xs."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return slope, intercept, 1.0 - residual / total if total else 1.0


def _ms(rows: dict, mixer: str, seconds: float) -> float | None:
    row = rows.get((mixer, seconds))
    return row["ms"] if row and row["status"] == "ok" else None


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}x"


def train_section(whole: dict, encoder: dict | None, seconds: float = 80.0) -> tuple[list[str], list[str]]:
    """Markdown table of the training step at ``seconds`` and the summary lines it supports."""
    mixers = [m for m in dict.fromkeys(m for m, _ in whole) if _ms(whole, m, seconds) is not None]
    lines = ["| model | whole model (ms) | x stock RelPosMHAXL | x stock hypermixing | peak memory (MiB) |"
             + (" Conformer alone (ms) | x mhsa |" if encoder else ""),
             "|---|---|---|---|---|" + ("---|---|" if encoder else "")]
    ref_mhsa, ref_hyper = _ms(whole, "sb_RelPosMHAXL", seconds), _ms(whole, "sb_hypermixing", seconds)
    for mixer in mixers:
        ms = _ms(whole, mixer, seconds)
        line = (f"| {mixer} | {ms:.0f} | {ref_mhsa / ms:.2f}x | {ref_hyper / ms:.2f}x | "
                f"{whole[mixer, seconds]['peak_mib']:.0f} |")
        if encoder:
            enc_ms, enc_mhsa = _ms(encoder, mixer, seconds), _ms(encoder, "mhsa", seconds)
            line += f" {enc_ms:.0f} | {enc_mhsa / enc_ms:.2f}x |" if enc_ms and enc_mhsa else " - | - |"
        lines.append(line)
    linear = [m for m in LINEAR if _ms(whole, m, seconds)]
    summary = []
    if linear:
        summary.append(
            f"Training step at {seconds:.0f} s, whole model: the linear mixers ({', '.join(linear)}) run "
            f"{_span([ref_mhsa / _ms(whole, m, seconds) for m in linear])} the speed of the stock RelPosMHAXL "
            f"Conformer and {_span([ref_hyper / _ms(whole, m, seconds) for m in linear])} that of the stock "
            "HyperMixing one.")
    if encoder:
        parts = []
        if _ms(encoder, "mhsa", seconds):
            parts += [f"{m} {_ms(encoder, 'mhsa', seconds) / _ms(encoder, m, seconds):.2f}x" for m in LINEAR
                      if _ms(encoder, m, seconds)]
        ours, stock = _ms(encoder, "hypermixing", seconds), _ms(encoder, "sb_hypermixing", seconds)
        line = f"Conformer alone at {seconds:.0f} s, speed against mhsa: {', '.join(parts)}"
        if ours and stock:
            line += f"; our hypermixing runs {stock / ours:.2f}x the speed of SpeechBrain's"
        summary.append(line + ".")
    return lines, summary


def infer_section(rows: dict) -> tuple[list[str], list[str]]:
    """Markdown table of inference time per length, the slope fits and the summary lines they support."""
    lengths = sorted({s for _, s in rows})
    mixers = list(dict.fromkeys(m for m, _ in rows))
    lines = ["| model | " + " | ".join(f"{s:.0f} s (ms)" for s in lengths) + " | slope (ms per s of audio) | R² | "
             f"t({lengths[-1]:.0f} s) / t({lengths[-2]:.0f} s) |",
             "|---|" + "---|" * (len(lengths) + 3)]
    for mixer in mixers:
        times = [_ms(rows, mixer, s) for s in lengths]
        cells = [f"{t:.0f}" if t is not None else "failed" for t in times]
        measured = [(s, t) for s, t in zip(lengths, times) if t is not None]
        if len(measured) >= 2:
            slope, _, r2 = fit_line([s for s, _ in measured], [t for _, t in measured])
            growth = f"{times[-1] / times[-2]:.2f}" if times[-1] and times[-2] else "-"
            lines.append(f"| {mixer} | " + " | ".join(cells) + f" | {slope:.1f} | {r2:.4f} | {growth} |")
        else:
            lines.append(f"| {mixer} | " + " | ".join(cells) + " | - | - | - |")
    behind = []
    for seconds in lengths:
        stock_times = [t for t in (_ms(rows, m, seconds) for m in STOCK) if t is not None]
        fastest_stock = min(stock_times) if stock_times else float("inf")
        behind += [f"{m} at {seconds:.0f} s" for m in LINEAR
                   if _ms(rows, m, seconds) is None or _ms(rows, m, seconds) >= fastest_stock]
    fits = {m: fit_line(list(lengths), [_ms(rows, m, s) for s in lengths]) for m in LINEAR
            if all(_ms(rows, m, s) is not None for s in lengths)}
    span = f"{lengths[0]:.0f}-{lengths[-1]:.0f} s"
    summary = [f"Inference, {span}: every linear mixer is faster than every stock attention type at every length"
               + (f", except {', '.join(behind)} (there the fastest stock model is as fast or faster)." if behind
                  else ".")]
    if fits:
        summary.append(f"Inference time against input length: the lowest R² of a linear mixer's least-squares "
                       f"line is {min(fit[2] for fit in fits.values()):.4f}.")
    return lines, summary


def report(train: Path, infer: Path | None = None, encoder_train: Path | None = None) -> str:
    """The markdown of the tables and their summary."""
    whole = read_results(train)
    encoder = read_results(encoder_train) if encoder_train else None
    train_lines, summary = train_section(whole, encoder)
    parts = [f"Training step (forward + backward), `{train}`"
             + (f" and `{encoder_train}` (Conformer alone)" if encoder_train else "") + ":", "", *train_lines, ""]
    if infer:
        infer_lines, infer_summary = infer_section(read_results(infer))
        parts += [f"Inference, whole model, `{infer}`:", "", *infer_lines, ""]
        summary += infer_summary
    parts += ["Summary:", "", *(f"- {line}" for line in summary), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="bench folder: whole model, --mode train")
    parser.add_argument("--encoder-train", type=Path, help="bench folder: --encoder-only --mode train")
    parser.add_argument("--infer", type=Path, help="bench folder: whole model, --mode infer, several lengths")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    text = report(args.train, args.infer, args.encoder_train)
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
