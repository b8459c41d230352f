"""Streaming cost: the time of one chunk and the state an encoder carries, against the length of the stream.

    python -m speechbrain_ext.bench --protocol streaming [--mixers summarymixing fastformer mamba mhsa mhsa:32]
        [--size base] [--chunk 16] [--stream-seconds 1 10 60 600] [--repeats 5] [--threads 2] [--output DIR]

Each mixer's paper-size Conformer (``SpeechEncoder.paper(size, mixer).encoder``, eval mode, float32, batch 1)
streams with ``MixerConformerEncoder.forward_streaming`` in chunks of ``--chunk`` encoder frames (40 ms each);
``name:L`` runs a mixer with a left context of L chunks, a plain name with unlimited left context. For each
stream length, the context is the one a stream of that length leaves: its sizes are what that many frames
make them (a linear mixer's state has one size whatever the length; attention keeps its left context's
inputs), its values come from streaming a few real chunks first. Then one chunk is timed (median of
``--repeats`` calls, each from the same context) and the real-time factor is that time over the chunk's
duration. Attention with unlimited left context recomputes its whole window per chunk, as SpeechBrain's
``ConformerEncoderLayer.forward_streaming`` does: a point whose scores would exceed ``--max-scores-gib`` is
recorded as not run. Every point runs on ``--threads`` CPU threads, set again before each one (Mamba's numba
kernels may change torch's OpenMP pool). Results: ``results.json`` and ``results.md`` in ``--output``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

from speechbrain_ext.models.speech_encoder import SpeechEncoder

FRAMES_PER_SECOND = 25  # encoder frames: 40 ms each
DEFAULT_MIXERS = ["summarymixing", "fastformer", "mamba", "mhsa", "summarymixing:32", "mhsa:32"]


def parse_variant(text: str) -> tuple[str, int | None]:
    """``"mhsa:32"`` -> ("mhsa", 32); ``"mamba"`` -> ("mamba", None) (unlimited left context)."""
    name, _, left = text.partition(":")
    return name, (int(left) if left else None)


def state_bytes(value) -> int:
    """Bytes of every tensor a streaming context holds (dataclasses, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(item) for item in value)
    if is_dataclass(value):
        return sum(state_bytes(getattr(value, f.name)) for f in fields(value))
    return 0


def at_length(context, frames: int, width: int):
    """A copy of ``context`` as a stream of ``frames`` frames leaves it: its position, and attention left contexts
    of the length that many frames give them (random inputs: only their size matters to the cost)."""
    context = copy.deepcopy(context)
    context.frames = frames
    for layer in context.layers:
        mixer = layer.mixer
        if hasattr(mixer, "left_context"):  # attention: the inputs of its left context
            keep = frames if mixer.left_context_size is None else min(mixer.left_context_size, frames)
            mixer.left_context = torch.randn(1, keep, width) if keep > 0 else None
    return context


def scores_gib(frames: int, chunk: int, nhead: int) -> float:
    """GiB of one layer's relative-position scores when attention recomputes a window of ``frames + chunk``."""
    window = frames + chunk
    return 4 * nhead * window * (2 * window - 1) / 2**30


def measure(variant: str, args) -> list[dict]:
    """One mixer's points: per stream length, the chunk's median time, real-time factor and carried state."""
    name, left = parse_variant(variant)
    overrides = {} if args.layers is None else {"num_layers": args.layers}
    speech_encoder = SpeechEncoder.paper(args.size, name, layerdrop_prob=0.0, **overrides).eval()
    encoder, width = speech_encoder.encoder, speech_encoder.d_model
    config = DynChunkTrainConfig(args.chunk, left)
    chunk_seconds = args.chunk / FRAMES_PER_SECOND
    points = []
    with torch.no_grad():
        context = encoder.make_streaming_context(config)
        for _ in range(3):  # real states, and warm-up
            encoder.forward_streaming(torch.randn(1, args.chunk, width), context)
        for seconds in args.stream_seconds:
            frames = int(round(seconds * FRAMES_PER_SECOND))
            point = {"mixer": variant, "left_context_chunks": left, "stream_seconds": seconds, "frames": frames,
                     "chunk_frames": args.chunk, "layers": len(encoder.layers), "d_model": width}
            nhead = getattr(encoder.layers[0].mha_layer, "num_heads", 1)
            window = frames if left is None else min(frames, left * args.chunk)
            attends = hasattr(context.layers[0].mixer, "left_context")
            if attends and scores_gib(window, args.chunk, nhead) > args.max_scores_gib:
                point["error"] = (f"not run: attention over a window of {window + args.chunk} frames needs "
                                  f"{scores_gib(window, args.chunk, nhead):.1f} GiB of scores per layer")
                points.append(point)
                continue
            chunk = torch.randn(1, args.chunk, width)
            start = at_length(context, frames, width)
            torch.set_num_threads(args.threads)
            times = []
            for _ in range(args.repeats):
                trial = copy.deepcopy(start)  # every call from the same context
                began = time.perf_counter()
                encoder.forward_streaming(chunk, trial)
                times.append(time.perf_counter() - began)
            point.update(chunk_ms=1000 * statistics.median(times), rtf=statistics.median(times) / chunk_seconds,
                         state_mib=state_bytes(start.layers) / 2**20)
            points.append(point)
    return points


def write_table(points: list[dict], path: Path, command: str, environment: dict) -> None:
    """results.md: one row per mixer, one column per stream length: ms per chunk (real-time factor), state MiB."""
    lengths = sorted({p["stream_seconds"] for p in points})
    variants = list(dict.fromkeys(p["mixer"] for p in points))
    first = points[0]
    lines = [f"`{command}`", "",
             f"{first['layers']} layers, chunks of {first['chunk_frames']} frames "
             f"({first['chunk_frames'] * 40} ms), batch 1, float32, {environment['threads']} threads of "
             f"{environment['cpu']}, "
             f"torch {environment['torch']}, median of the repeats; mixer:L = left context of L chunks, else "
             "unlimited", "",
             "| mixer | " + " | ".join(f"{_length(s)}: ms/chunk (RTF), state MiB" for s in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for variant in variants:
        cells = []
        for seconds in lengths:
            point = next(p for p in points if p["mixer"] == variant and p["stream_seconds"] == seconds)
            cells.append(point.get("error", "").split(":")[0] if "error" in point else
                         f"{point['chunk_ms']:.1f} ({point['rtf']:.3f}), {point['state_mib']:.2f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    notes = [p for p in points if "error" in p]
    lines += [""] + [f"- {p['mixer']} at {_length(p['stream_seconds'])}: {p['error']}" for p in notes]
    path.write_text("\n".join(lines).rstrip() + "\n")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _length(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def main(argv: list[str], command: str) -> list[dict]:
    """Runs the streaming sweep and writes its results (called by ``python -m speechbrain_ext.bench``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     prog="python -m speechbrain_ext.bench --protocol streaming")
    parser.add_argument("--mixers", nargs="+", default=DEFAULT_MIXERS)
    parser.add_argument("--size", choices=["base", "large"], default="base")
    parser.add_argument("--layers", type=int, default=None, help="override the size's depth (small runs)")
    parser.add_argument("--chunk", type=int, default=16, help="encoder frames per chunk (40 ms each)")
    parser.add_argument("--stream-seconds", type=float, nargs="+", default=[1, 10, 60, 600])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-scores-gib", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--output", type=Path, default=Path("bench_results/streaming"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    points = [point for variant in args.mixers for point in measure(variant, args)]
    environment = {"threads": args.threads, "cpu": _cpu_name(), "torch": torch.__version__,
                   "python": platform.python_version(), "machine": platform.machine(),
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(
        {"command": command, "environment": environment, "points": points}, indent=2) + "\n")
    write_table(points, args.output / "results.md", command, environment)
    print((args.output / "results.md").read_text())
    return points
