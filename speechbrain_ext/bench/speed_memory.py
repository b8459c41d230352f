"""Speed and memory of the BEST-RQ model against input length, per mixer.

    python -m speechbrain_ext.bench [--protocol inference] [--mixers mhsa mamba sb_RelPosMHAXL ...]
        [--size base|large] [--seconds 10 20 40 80] [--batch 6] [--mode infer|train] [--dtype float16] [--output DIR]
    python -m speechbrain_ext.bench --protocol paper ...

``--protocol paper`` is the protocol of the paper's Figure 1 (the authors' ``memory_test_v2.py``: training
mode, autograd on, fp16, the mean of 10 calls): :mod:`speechbrain_ext.bench.paper_protocol`;
``--protocol streaming`` the cost of one chunk against stream length: :mod:`speechbrain_ext.bench.streaming`.
This module is ``--protocol inference``, the default, described below.

The model is the one the paper times: SpeechBrain's CNN front-end, the 12 (base) or 24 (large)
layer Conformer of each mixer at its equalised width, and a Linear(8192) head, on fbank input
(100 frames per second, so 25 encoder frames per second); ``--encoder-only`` times the Conformer
alone on encoder frames. Beside our mixers, SpeechBrain's own
Conformer with each of its attention types runs in the same call as a reference (``sb_*``).

On a GPU: median time over the repeats, by CUDA events, after warm-up, and
``torch.cuda.max_memory_allocated``. On the CPU: median wall time, and the peak resident memory
of a child process that measures that point alone. An out-of-memory error or any other failure
is recorded for its point, and the run goes on. Results go to ``results.csv``, ``results.json``
(with the command, device, torch version and date) and ``results.png`` in ``--output``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.lobes.models.transformer.Transformer import PositionalEncoding
from speechbrain.nnet.attention import RelPosEncXL
from torch import nn

from speechbrain_ext.mixers import MIXERS
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.paths import pyplot
from speechbrain_ext.sizes import CODEBOOK_SIZE, SIZES, paper_encoder_settings, paper_mixer_kwargs

FBANK_FRAMES_PER_SECOND = 100
# SpeechBrain's own Conformer attention types, run as references.
STOCK = {"sb_RelPosMHAXL": "RelPosMHAXL", "sb_regularMHA": "regularMHA", "sb_RoPEMHA": "RoPEMHA",
         "sb_hypermixing": "hypermixing"}
# Widths and depths from the one table of the paper's sizes (speechbrain_ext.sizes); the stock
# MHA variants at mhsa's width, stock HyperMixing at hypermixing's.
WIDTHS = {
    size: {**table.widths, **{name: table.widths["hypermixing" if name == "sb_hypermixing" else "mhsa"]
                              for name in STOCK}}
    for size, table in SIZES.items()
}
LAYERS = {size: table.layers for size, table in SIZES.items()}


class StockConformer(nn.Module):
    """SpeechBrain's ConformerEncoder with the positions its TransformerASR gives each attention type.

    Called like our MixerConformerEncoder: ``(x, src_key_padding_mask=padding) -> (out, attentions)``.
    """

    def __init__(self, attention_type: str, num_layers: int, d_model: int, d_ffn: int, nhead: int) -> None:
        super().__init__()
        self.attention_type = attention_type
        self.encoder = ConformerEncoder(num_layers, d_model, d_ffn, nhead, kernel_size=31, dropout=0.1,
                                        attention_type=attention_type)
        self.relative = RelPosEncXL(d_model) if attention_type == "RelPosMHAXL" else None
        self.absolute = PositionalEncoding(d_model, max_len=2500) if attention_type == "regularMHA" else None

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor, output_hidden_states: bool = False):
        pos_embs = self.relative(x) if self.relative is not None else None
        if self.absolute is not None:
            x = x + self.absolute(x)
        out, attentions = self.encoder(x, src_key_padding_mask=src_key_padding_mask, pos_embs=pos_embs)
        if output_hidden_states:
            raise ValueError("the stock Conformer of the bench returns no hidden states")
        return out, attentions


@dataclass
class Point:
    """One measurement: a model (mixer, size) at one input length."""

    mixer: str
    seconds: float
    size: str = "base"
    batch: int = 6
    mode: str = "infer"
    dtype: str = "float16"
    device: str = "cuda"
    layers: int | None = None  # overrides of the size's depth and width, for small runs
    d_model: int | None = None
    encoder_only: bool = False  # time the Conformer alone (no front-end, no head) on encoder frames
    warmup: int = 3
    repeats: int = 8
    implementation: str = "fast"  # our models' front-end and dropouts (stock models: always SpeechBrain's)
    # Filled in by the measurement.
    ms: float | None = None
    peak_mib: float | None = None
    model_mib: float | None = None
    parameters: int | None = None
    status: str = "not run"
    error: str = field(default="", repr=False)


def build_model(point: Point) -> nn.Module:
    """CNN front-end + encoder + Linear(8192), as the paper times it (or the encoder alone)."""
    layers = point.layers or LAYERS[point.size]
    d_model = point.d_model or WIDTHS[point.size][point.mixer]
    stock = STOCK.get(point.mixer)
    if stock is None and point.mixer not in MIXERS:
        raise ValueError(f"unknown mixer {point.mixer!r}; valid: {', '.join(sorted(MIXERS) + sorted(STOCK))}")
    # Our mixers as the paper's code builds them (speechbrain_ext.sizes), at the point's depth and width.
    # For a stock model, SpeechBrain's own front-end (ConvolutionFrontEnd) around SpeechBrain's own
    # Conformer (our one-layer encoder replaced), as a SpeechBrain user builds it; ours use the fast front-end.
    mixer = point.mixer if stock is None else "fastformer"
    settings = {**paper_encoder_settings(point.size, mixer), "num_layers": layers if stock is None else 1,
                "d_model": d_model, "mixer_kwargs": paper_mixer_kwargs(mixer, d_model), "init": "default",
                # LayerDrop would skip random blocks in timed training steps (SpeechBrain's stock
                # Conformer has none): every model runs all its layers.
                "layerdrop_prob": 0.0, "implementation": point.implementation if stock is None else "speechbrain"}
    speech_encoder = SpeechEncoder(**settings)
    if stock is not None:
        speech_encoder.encoder = StockConformer(stock, layers, d_model, 2048, 8)
    if point.encoder_only:
        return nn.ModuleDict({"speech_encoder": speech_encoder})
    return nn.ModuleDict({"speech_encoder": speech_encoder, "head": nn.Linear(d_model, CODEBOOK_SIZE)})


def _step(model: nn.ModuleDict, inputs: tuple[torch.Tensor, torch.Tensor], targets, train: bool) -> None:
    if "head" not in model:  # the Conformer alone, on encoder frames
        features, padding = inputs
        out = model["speech_encoder"].encoder(features, src_key_padding_mask=padding)[0]
        loss = out.float().pow(2).mean()
    else:
        logits = model["head"](model["speech_encoder"].encode(*inputs).out)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    if train:
        loss.backward()
        model.zero_grad(set_to_none=True)


def measure(point: Point) -> Point:
    """Runs ``point`` in this process and fills in its results (a failure is recorded, not raised)."""
    device = torch.device(point.device)
    dtype = getattr(torch, point.dtype)
    try:
        torch.manual_seed(0)
        model = build_model(point).to(device)
        timed = model["speech_encoder"].encoder if point.encoder_only else model
        point.parameters = sum(p.numel() for p in timed.parameters())
        model.train(point.mode == "train")
        frames = int(point.seconds * FBANK_FRAMES_PER_SECOND)
        frames += -frames % model["speech_encoder"].frames_per_token
        speech_encoder = model["speech_encoder"]
        tokens = frames // speech_encoder.frames_per_token
        if point.encoder_only:
            inputs = (torch.randn(point.batch, tokens, speech_encoder.d_model, device=device),
                      torch.zeros(point.batch, tokens, dtype=torch.bool, device=device))
        else:
            inputs = (torch.randn(point.batch, frames, speech_encoder.n_mels, device=device),
                      torch.full((point.batch,), frames, device=device))
        targets = torch.randint(CODEBOOK_SIZE, (point.batch, tokens), device=device)
        train = point.mode == "train"
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        grad = torch.enable_grad() if train else torch.inference_mode()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            point.model_mib = torch.cuda.memory_allocated(device) / 2**20
        else:
            point.model_mib = peak_rss_mib()
        with grad, autocast:
            for _ in range(point.warmup):
                _step(model, inputs, targets, train)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            timings = []
            for _ in range(point.repeats):
                timings.append(_timed(lambda: _step(model, inputs, targets, train), device))
        point.ms = 1000 * statistics.median(timings)
        point.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()
        point.status = "ok"
    except torch.OutOfMemoryError as err:
        point.status, point.error = "out of memory", str(err).splitlines()[0]
    except Exception as err:  # noqa: BLE001 - recorded per point: the sweep goes on
        point.status, point.error = "failed", f"{type(err).__name__}: {err}".splitlines()[0]
        point.error += "\n" + traceback.format_exc(limit=-3)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return point


def _timed(step, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    start_time = time.perf_counter()
    step()
    return time.perf_counter() - start_time


def peak_rss_mib() -> float:
    """Peak resident memory of this process's own address space.

    ``VmHWM`` rather than ``ru_maxrss``: a spawned child's ``ru_maxrss`` keeps its parent's resident
    size at the fork, so a large parent would hide the child's own peak.
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _measure_in_child(point: Point, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    queue.put(asdict(measure(point)))


def measure_isolated(point: Point, timeout: float = 1800) -> Point:
    """CPU points run in a fresh child process, so its peak resident memory is this point's alone.

    A child killed by the system (out of memory) or past ``timeout`` is recorded as such.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_measure_in_child, args=(point, torch.get_num_threads(), queue))
    child.start()
    try:
        result = queue.get(timeout=timeout)
        child.join()
        return Point(**result)
    except Exception:  # noqa: BLE001 - the child died or hung: its exit code says how
        child.kill()
        child.join()
        point.status = "out of memory" if child.exitcode == -9 else "failed"
        point.error = f"child process ended with exit code {child.exitcode}"
        return point


def run_sweep(points: list[Point], output: Path, command: str) -> list[Point]:
    """Measures every point (printing each as it ends) and writes results.csv / .json / .png to ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    done = []
    for number, point in enumerate(points, 1):
        point = measure(point) if point.device != "cpu" else measure_isolated(point)
        done.append(point)
        result = (f"{point.ms:9.1f} ms {point.peak_mib / 1024:7.2f} GiB" if point.status == "ok"
                  else f"{point.status}: {point.error.splitlines()[0] if point.error else ''}")
        print(f"[{number}/{len(points)}] {point.mixer:<15} {point.seconds:6.0f} s  {result}", flush=True)
        write_results(done, output, command)
    plot_results(done, output / "results.png")
    return done


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    card = torch.cuda.get_device_name(0) if device.startswith("cuda") else _cpu_name()
    return {"device": card, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "date": datetime.date.today().isoformat()}


COLUMNS = ["mixer", "size", "layers", "d_model", "encoder_only", "parameters", "seconds", "batch", "mode", "dtype",
           "device", "ms", "peak_mib", "model_mib", "status", "error"]


def write_results(points: list[Point], output: Path, command: str) -> None:
    rows = []
    for point in points:
        row = asdict(point)
        row["layers"] = point.layers or LAYERS[point.size]
        row["d_model"] = point.d_model or WIDTHS[point.size].get(point.mixer)
        row["error"] = point.error.splitlines()[0] if point.error else ""
        rows.append({key: row[key] for key in COLUMNS})
    with open(output / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    meta = {"command": command, **environment(points[0].device if points else "cpu")}
    (output / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")


def plot_results(points: list[Point], path: Path) -> None:
    """Time and memory against input length, one line per mixer; failed points marked with an x."""
    plt = pyplot("benchmark plot")
    if plt is None:
        return

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mixer in dict.fromkeys(p.mixer for p in points):
        ours = [p for p in points if p.mixer == mixer]
        ok = [p for p in ours if p.status == "ok"]
        style = {"linestyle": "--" if mixer in STOCK else "-", "marker": "o", "markersize": 3}
        line = time_axis.plot([p.seconds for p in ok], [p.ms for p in ok], label=mixer, **style)[0]
        memory_axis.plot([p.seconds for p in ok], [p.peak_mib / 1024 for p in ok], color=line.get_color(), **style)
        failed = [p.seconds for p in ours if p.status != "ok"]
        for axis in (time_axis, memory_axis):
            axis.plot(failed, [axis.get_ylim()[1]] * len(failed), "x", color=line.get_color())
    first = points[0]
    memory_kind = "peak GPU memory allocated" if first.device != "cpu" else "peak resident memory (child process)"
    time_axis.set(xlabel="input length (s)", ylabel=f"{first.mode} time per batch (ms)", yscale="log")
    memory_axis.set(xlabel="input length (s)", ylabel=f"{memory_kind} (GiB)", yscale="log")
    time_axis.legend(fontsize=7)
    model = f"{first.size} model" if first.layers is None and first.d_model is None else (
        f"{first.layers or LAYERS[first.size]} layers, d_model {first.d_model or 'equalised'}")
    model += ", encoder only" if first.encoder_only else ", front-end + encoder + Linear(8192)"
    figure.suptitle(f"{model}, batch {first.batch}, {first.dtype}, {environment(first.device)['device']}"
                    " (x: out of memory or failed)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


PROTOCOLS = ("inference", "paper", "streaming")


def main(argv: list[str] | None = None) -> list:
    """``python -m speechbrain_ext.bench``: this module's sweep, or with ``--protocol paper`` the paper's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m speechbrain_ext.bench " + " ".join(argv)
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--protocol", choices=PROTOCOLS, default="inference")
    chosen, rest = chooser.parse_known_args(argv)
    if chosen.protocol == "paper":
        from speechbrain_ext.bench import paper_protocol

        return paper_protocol.main(rest, command)
    if chosen.protocol == "streaming":
        from speechbrain_ext.bench import streaming

        return streaming.main(rest, command)
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="inference",
                        help="inference (this sweep), paper (Figure 1's protocol: --protocol paper --help) or "
                             "streaming (cost per chunk against stream length: --protocol streaming --help)")
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS) + list(STOCK),
                        help=f"ours ({', '.join(MIXERS)}) and SpeechBrain's ({', '.join(STOCK)})")
    parser.add_argument("--size", choices=sorted(LAYERS), default="base")
    parser.add_argument("--seconds", type=float, nargs="+",
                        default=[10, 20, 30, 40, 50, 60, 70, 80] if gpu else [5, 10, 20])
    parser.add_argument("--batch", type=int, default=6 if gpu else 2)
    parser.add_argument("--mode", choices=["infer", "train"], default="infer")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16" if gpu else "float32")
    parser.add_argument("--device", default="cuda" if gpu else "cpu")
    parser.add_argument("--layers", type=int, default=None, help="override the size's depth")
    parser.add_argument("--d-model", type=int, default=None, help="one width for every mixer (default: equalised)")
    parser.add_argument("--encoder-only", action="store_true",
                        help="time the Conformer alone on encoder frames (no CNN front-end, no head)")
    parser.add_argument("--warmup", type=int, default=3 if gpu else 1)
    parser.add_argument("--repeats", type=int, default=8 if gpu else 3)
    parser.add_argument("--implementation", choices=["fast", "speechbrain"], default="fast",
                        help="our models' CNN front-end and dropouts (SpeechEncoder(implementation=...)); "
                             "the stock models always use SpeechBrain's")
    parser.add_argument("--output", type=Path, default=Path("bench_results"))
    args = parser.parse_args(argv)
    unknown = [m for m in args.mixers if m not in MIXERS and m not in STOCK]
    if unknown:
        parser.error(f"unknown mixers {unknown}; valid: {', '.join(list(MIXERS) + list(STOCK))}")
    points = [
        Point(mixer, seconds, args.size, args.batch, args.mode, args.dtype, args.device, args.layers, args.d_model,
              args.encoder_only, args.warmup, args.repeats, args.implementation)
        for mixer in args.mixers for seconds in args.seconds
    ]
    return run_sweep(points, args.output, command)
