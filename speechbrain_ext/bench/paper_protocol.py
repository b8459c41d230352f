"""The paper's Figure 1 protocol: ``memory_test_v2.py`` of whettenr/brq-att-alt-exp, reproduced.

    python -m speechbrain_ext.bench --protocol paper [--size base large] [--mixers mhsa mamba ...]
        [--seconds 10 20 ... 80] [--batch 6] [--warmup-rounds 10] [--calls 10] [--warmup-peak carry|reset]
        [--settings figure1|sizes] [--dtype float16] [--layers N] [--d-model D] [--output DIR]

What that script does, for one model (each of its runs was a fresh process, started by
``run/toy_test_adel.sh``), and what this module does the same way:

* the BEST-RQ model in **training mode** (never put in eval mode: dropout and LayerDrop active) with
  **autograd on** (no ``no_grad``, no backward): the graph of the forward pass is kept, as in training;
* each call in its own fp16 autocast (``torch.cuda.amp.autocast()``), on uniform noise
  (``torch.rand(seconds * 16000)``, the same waveform in every row of the batch);
* warm-up: 10 rounds over every length with a batch of one utterance, the peak memory not reset;
* then, per length (10, 20, ... 80 s), 10 calls at batch 6; after each call the peak memory is read
  (``torch.cuda.max_memory_allocated``) and reset (``reset_peak_memory_stats``), so a call's window holds
  its input, fbank, normalisation, quantizer targets and mask noise as well as the timed region;
* the timed region, between ``torch.cuda.synchronize()`` calls, is the CNN front-end, the encoder
  (projection, positions, Conformer) and the Linear(d_model, 8192) head over every frame; fbank,
  normalisation, targets and noise run before the timer;
* the mean over the calls, with the standard deviation, minimum and maximum.

As the script never resets the peak after the warm-up, the first call of the first length reports
the warm-up's peak when that is higher (batch 1 at the longest length): ``--warmup-peak carry``, the
default, reproduces it; ``reset`` opens the first window after the warm-up. Every call is kept in
``runs.csv``, so the first call can be told apart.

``--settings figure1`` (default) builds each model with the flags ``run/toy_test_adel.sh`` passed to
``memory_test_v2.py`` beyond the experiment YAMLs (:data:`FIGURE1_FLAGS`); ``sizes`` builds
``SpeechEncoder.paper(size, mixer)`` unchanged. ``--implementation speechbrain`` (default) runs
SpeechBrain's own front-end and dropouts, the modules the script ran.

On the CPU (a smoke test): no autocast unless ``--dtype bfloat16``; the timer is the wall clock; the peak
is the process's peak resident memory (``VmHWM``), reset per window through ``/proc/self/clear_refs``.
Results: ``results.csv`` (one row per model and length), ``runs.csv`` (one row per call),
``results.json`` (with the command and the protocol) and ``figure1.png`` (time and peak memory against
length, one line per mixer and size) in ``--output``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from speechbrain_ext.bench.speed_memory import environment, peak_rss_mib
from speechbrain_ext.bestrq.masking import apply_mask_noise, compute_span_mask
from speechbrain_ext.bestrq.model import BestRQ
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.paths import pyplot
from speechbrain_ext.sizes import CODEBOOK_SIZE, PAPER_MIXERS, SIZES, paper_encoder_settings, paper_mixer_kwargs

# memory_test_v2.py: BATCH_SIZE, range(10, 90, 10), WARMUP_STEPS (at batch 1), EVAL_AVG_STEPS.
PAPER_SECONDS = (10, 20, 30, 40, 50, 60, 70, 80)
PAPER_BATCH = 6
PAPER_WARMUP_ROUNDS = 10
PAPER_CALLS = 10
WARMUP_BATCH = 1
# The seed of each experiment YAML (hparams/*.yaml ``seed``: 1000, but 84 in brq_mamba_bidirectional_lg.yaml).
SEED = 1000
SEEDS = {("large", "mamba"): 84}
# The flags run/toy_test_adel.sh passes to memory_test_v2.py beyond each experiment YAML.
FIGURE1_FLAGS = {
    ("base", "summarymixing"): {"d_model": 536, "nhead": 1},  # brq_summarymixing.yaml --nhead 1 --d_model 536
    ("large", "summarymixing"): {"d_model": 848, "nhead": 1},  # brq_summarymixing_lg.yaml --nhead 1 --d_model 848
    # fastformer.yaml ... --transformer_dropout 0.2 --mask_prob .05 (the fork's Fastattention gets that dropout)
    ("base", "fastformer"): {"dropout": 0.2, "mask_prob": 0.05},
}
SETTINGS = ("figure1", "sizes")
WARMUP_PEAKS = ("carry", "reset")
# The timer; a module attribute so that a test can watch when it is read.
clock = time.perf_counter


@dataclass(frozen=True)
class ModelSpec:
    """One model of the sweep: the paper's ``size`` with ``mixer``, the run-script flags or not."""

    size: str
    mixer: str
    settings: str = "figure1"
    layers: int | None = None  # overrides for small runs
    d_model: int | None = None
    implementation: str = "speechbrain"


@dataclass
class Protocol:
    """How the calls are made (the defaults: memory_test_v2.py's)."""

    seconds: tuple[float, ...] = PAPER_SECONDS
    batch: int = PAPER_BATCH
    warmup_rounds: int = PAPER_WARMUP_ROUNDS
    calls: int = PAPER_CALLS
    warmup_peak: str = "carry"
    dtype: str = "float16"
    device: str = "cuda"
    seed: int | None = None  # None: each model's YAML seed (SEEDS)


@dataclass
class PaperPoint:
    """One model at one length: statistics over the timed calls."""

    size: str
    mixer: str
    seconds: float
    batch: int
    calls: int
    dtype: str
    device: str
    layers: int | None = None
    d_model: int | None = None
    nhead: int | None = None
    parameters: int | None = None
    ms_mean: float | None = None
    ms_std: float | None = None
    ms_min: float | None = None
    ms_max: float | None = None
    peak_mib_mean: float | None = None
    peak_mib_std: float | None = None
    peak_mib_min: float | None = None
    peak_mib_max: float | None = None
    train_mode: bool | None = None  # every module in training mode during every timed call
    autograd: bool | None = None  # every timed call's logits carry a graph
    status: str = "not run"
    error: str = ""


class CudaPeak:
    """``torch.cuda.max_memory_allocated``, reset by ``torch.cuda.reset_peak_memory_stats``."""

    kind = "peak GPU memory allocated (torch.cuda.max_memory_allocated)"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**20


class ResidentPeak:
    """The process's peak resident memory (``VmHWM``); Linux resets it to the current resident size when
    ``5`` is written to ``/proc/self/clear_refs``. Where that fails, the peak runs from the process start."""

    kind = "peak resident memory of the process (VmHWM, reset through /proc/self/clear_refs)"

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
        except OSError:
            self.kind = "peak resident memory of the process since its start (no reset on this system)"

    def peak_mib(self) -> float:
        return peak_rss_mib()


@dataclass
class Call:
    """One timed call: its time, the peak of its window, and whether it ran in training mode with a graph."""

    seconds: float  # the timed region's wall time
    peak_mib: float
    train_mode: bool
    autograd: bool


def model_settings(spec: ModelSpec) -> tuple[dict, dict]:
    """What ``spec`` changes in ``SpeechEncoder.paper(size, mixer)`` (its keyword arguments), and the ``BestRQ``
    keyword arguments.

    Example
    -------
    >>> overrides, bestrq = model_settings(ModelSpec("base", "summarymixing"))
    >>> overrides["d_model"], overrides["nhead"], bestrq
    (536, 1, {'cb_vocab': 8192})
    """
    if spec.settings not in SETTINGS:
        raise ValueError(f"unknown settings {spec.settings!r}; valid: {', '.join(SETTINGS)}")
    flags = dict(FIGURE1_FLAGS.get((spec.size, spec.mixer), {})) if spec.settings == "figure1" else {}
    bestrq = {"cb_vocab": CODEBOOK_SIZE}
    if "mask_prob" in flags:
        bestrq["mask_prob"] = flags.pop("mask_prob")
    overrides = dict(flags)
    if spec.layers is not None:
        overrides["num_layers"] = spec.layers
    if spec.d_model is not None:
        overrides["d_model"] = spec.d_model
    d_model = overrides.get("d_model", paper_encoder_settings(spec.size, spec.mixer)["d_model"])
    mixer_kwargs = paper_mixer_kwargs(spec.mixer, d_model)
    if "dropout" in flags:  # the fork's transformer dropout reaches the input, the blocks and the mixer
        overrides["input_dropout"] = flags["dropout"]
        if "dropout" in mixer_kwargs:
            mixer_kwargs["dropout"] = flags["dropout"]
    overrides.update(mixer_kwargs=mixer_kwargs, implementation=spec.implementation)
    return overrides, bestrq


def build_model(spec: ModelSpec) -> BestRQ:
    """The paper's BEST-RQ model of ``spec``: ``SpeechEncoder.paper(size, mixer)`` with the changes of
    :func:`model_settings`, the quantizer and the Linear(d_model, 8192) head (``heads[0]``)."""
    overrides, bestrq = model_settings(spec)
    return BestRQ(SpeechEncoder.paper(spec.size, spec.mixer, **overrides), **bestrq)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paper_call(model: BestRQ, seconds: float, batch: int, device: torch.device, dtype: torch.dtype,
               probe) -> Call:
    """One ``compute_benchmark`` of memory_test_v2.py, in its own autocast: the input and targets, then the
    timed CNN + encoder + head; the peak of the current window read at the end (not reset)."""
    speech_encoder = model.speech_encoder
    span = speech_encoder.frames_per_token
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        # One uniform waveform, in every row of the batch (the script's collate pads copies of one x).
        wave = torch.rand(int(seconds * speech_encoder.sample_rate))
        wavs, wav_lens = wave.repeat(batch, 1).to(device), torch.ones(batch, device=device)
        feats, lengths = speech_encoder.features(wavs, wav_lens)
        rows, frames, n_mels = feats.shape
        # The targets are computed and left unused, as the script does (inside the memory window).
        model.quantizer(feats.reshape(rows, frames // span, span * n_mels))
        mask = compute_span_mask(lengths, frames, model.mask_prob, span, per_utterance=False)
        noisy = apply_mask_noise(feats, mask, model.noise_std)
        _synchronize(device)
        start = clock()
        logits = model.heads[0](speech_encoder.encode(noisy, lengths).out)
        _synchronize(device)
        elapsed = clock() - start
        peak = probe.peak_mib()
    return Call(elapsed, peak, all(module.training for module in model.modules()), logits.requires_grad)


def _failed(points: list[PaperPoint], err: BaseException) -> None:
    oom = isinstance(err, torch.OutOfMemoryError)
    for point in points:
        point.status = "out of memory" if oom else "failed"
        point.error = f"{type(err).__name__}: {err}".splitlines()[0]
        if not oom:
            point.error += "\n" + traceback.format_exc(limit=-3)


def run_model(spec: ModelSpec, protocol: Protocol, probe, runs: list[dict] | None = None) -> list[PaperPoint]:
    """Warm-up and timed calls of one model at every length of ``protocol``; a failure is recorded per point
    (a failed warm-up fails them all). Each call is appended to ``runs``."""
    device, dtype = torch.device(protocol.device), getattr(torch, protocol.dtype)
    encoder_settings = {**paper_encoder_settings(spec.size, spec.mixer), **model_settings(spec)[0]}
    points = [PaperPoint(spec.size, spec.mixer, float(seconds), protocol.batch, protocol.calls, protocol.dtype,
                         protocol.device, encoder_settings["num_layers"], encoder_settings["d_model"],
                         encoder_settings["nhead"]) for seconds in protocol.seconds]
    with torch.enable_grad():
        model = _warm_model(spec, protocol, probe, points)
        for point in points if model is not None else []:
            calls = []
            try:
                for number in range(protocol.calls):
                    calls.append(paper_call(model, point.seconds, protocol.batch, device, dtype, probe))
                    probe.reset()
                    if runs is not None:
                        runs.append({"size": spec.size, "mixer": spec.mixer, "seconds": point.seconds,
                                     "call": number, "ms": 1000 * calls[-1].seconds, "peak_mib": calls[-1].peak_mib})
            except Exception as err:  # noqa: BLE001 - recorded for its point: the next length is tried
                _failed([point], err)
            if point.status != "not run":  # failed: its tensors are freed now; the next window opens clean
                _release(device)
                probe.reset()
                continue
            _fill(point, calls)
    del model
    _release(device)
    return points


def _warm_model(spec: ModelSpec, protocol: Protocol, probe, points: list[PaperPoint]) -> BestRQ | None:
    """Builds the model in a fresh window and runs the warm-up; None (every point failed) where either fails."""
    device, dtype = torch.device(protocol.device), getattr(torch, protocol.dtype)
    try:
        # Each model as in a process of its own: its window opens before it is built.
        _release(device)
        probe.reset()
        torch.manual_seed(SEEDS.get((spec.size, spec.mixer), SEED) if protocol.seed is None else protocol.seed)
        model = build_model(spec).to(device).train()  # never eval: dropout and LayerDrop on
        for point in points:
            point.parameters = sum(p.numel() for p in model.parameters())
        for _ in range(protocol.warmup_rounds):
            for seconds in protocol.seconds:
                paper_call(model, seconds, WARMUP_BATCH, device, dtype, probe)
        if protocol.warmup_peak == "reset":
            probe.reset()
        return model
    except Exception as err:  # noqa: BLE001 - recorded for every point: the sweep goes on
        _failed(points, err)
        return None


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fill(point: PaperPoint, calls: list[Call]) -> None:
    """Mean, standard deviation (of the calls: the population's), minimum and maximum."""
    times = [1000 * call.seconds for call in calls]
    peaks = [call.peak_mib for call in calls]
    point.ms_mean, point.ms_std, point.ms_min, point.ms_max = (
        statistics.fmean(times), statistics.pstdev(times), min(times), max(times))
    point.peak_mib_mean, point.peak_mib_std, point.peak_mib_min, point.peak_mib_max = (
        statistics.fmean(peaks), statistics.pstdev(peaks), min(peaks), max(peaks))
    point.train_mode = all(call.train_mode for call in calls)
    point.autograd = all(call.autograd for call in calls)
    point.status = "ok"


COLUMNS = [name for name in PaperPoint.__dataclass_fields__]
RUN_COLUMNS = ["size", "mixer", "seconds", "call", "ms", "peak_mib"]


def write_results(points: list[PaperPoint], runs: list[dict], output: Path, meta: dict) -> None:
    rows = [{**asdict(point), "error": point.error.splitlines()[0] if point.error else ""} for point in points]
    for name, columns, table in (("results.csv", COLUMNS, rows), ("runs.csv", RUN_COLUMNS, runs)):
        with open(output / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(table)
    (output / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")


def plot_figure(points: list[PaperPoint], path: Path, memory_kind: str) -> dict[str, list[str]] | None:
    """Figure 1's two panels, time and peak memory against input length, one line per mixer (base solid,
    large dashed; time with its standard deviation); failed points marked x. Returns each panel's line labels
    (None without matplotlib)."""
    plt = pyplot("Figure 1 plot")
    if plt is None:
        return None
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = list(dict.fromkeys(point.size for point in points))
    colours = {}
    panels = {"time": [], "memory": []}
    for size, mixer in dict.fromkeys((point.size, point.mixer) for point in points):
        ours = [p for p in points if (p.size, p.mixer) == (size, mixer)]
        ok = [p for p in ours if p.status == "ok"]
        label = mixer if len(sizes) == 1 else f"{mixer} ({size})"
        style = {"linestyle": "--" if size == "large" else "-", "marker": "o", "markersize": 3, "label": label}
        if mixer in colours:
            style["color"] = colours[mixer]
        line = time_axis.errorbar([p.seconds for p in ok], [p.ms_mean for p in ok], yerr=[p.ms_std for p in ok],
                                  capsize=2, **style).lines[0]
        colours[mixer] = line.get_color()
        memory_axis.plot([p.seconds for p in ok], [p.peak_mib_mean / 1024 for p in ok], **{**style,
                                                                                          "color": colours[mixer]})
        panels["time"].append(label)
        panels["memory"].append(label)
        failed = [p.seconds for p in ours if p.status != "ok"]
        for axis in (time_axis, memory_axis):
            axis.plot(failed, [axis.get_ylim()[1]] * len(failed), "x", color=colours[mixer])
    first = points[0]
    time_axis.set(xlabel="input length (s)", ylabel="time per batch (ms)")
    memory_axis.set(xlabel="input length (s)", ylabel=f"{memory_kind.split(' (')[0]} (GiB)")
    time_axis.legend(fontsize=7)
    precision = "fp32" if first.dtype == "float32" else f"{first.dtype} autocast"
    figure.suptitle(f"memory_test_v2.py protocol: train mode, autograd on, {precision}, batch {first.batch}, "
                    f"mean (time: and std) of {first.calls} calls per length\n{environment(first.device)['device']}; "
                    f"memory: {memory_kind} (x: out of memory or failed)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return panels


def run_sweep(specs: list[ModelSpec], protocol: Protocol, output: Path, command: str) -> list[PaperPoint]:
    """Every model of ``specs`` under ``protocol``; results and figure rewritten after each model."""
    output.mkdir(parents=True, exist_ok=True)
    device = torch.device(protocol.device)
    probe = CudaPeak(device) if device.type == "cuda" else ResidentPeak()
    points, runs = [], []
    for number, spec in enumerate(specs, 1):
        done = run_model(spec, protocol, probe, runs)
        points += done
        for point in done:
            result = (f"{point.ms_mean:9.1f} ms (std {point.ms_std:.1f}) {point.peak_mib_mean / 1024:7.2f} GiB"
                      if point.status == "ok" else f"{point.status}: {point.error.splitlines()[0]}")
            print(f"[{number}/{len(specs)}] {spec.size:<5} {spec.mixer:<14} {point.seconds:5.0f} s {result}",
                  flush=True)
        meta = {"command": command, **environment(protocol.device), "protocol": "paper",
                "reference": "whettenr/brq-att-alt-exp memory_test_v2.py (run by run/toy_test_adel.sh)",
                **asdict(protocol), "warmup_batch": WARMUP_BATCH, "train_mode": True, "autograd": True,
                "autocast": None if protocol.dtype == "float32" else protocol.dtype,
                "timed": "CNN front-end + encoder + Linear(8192) head, synchronized wall clock",
                "memory": probe.kind, "statistic": "mean, population std, min, max over the calls",
                "settings": specs[0].settings, "implementation": specs[0].implementation,
                "mamba_kernels": _mamba_kernels(device)}
        write_results(points, runs, output, meta)
        plot_figure(points, output / "figure1.png", probe.kind)
    return points


def _mamba_kernels(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    from speechbrain_ext.mixers.mamba import cuda_selective_scan

    return cuda_selective_scan() is not None


def main(argv: list[str] | None = None, command: str | None = None) -> list[PaperPoint]:
    """``python -m speechbrain_ext.bench --protocol paper ...`` (the arguments after ``--protocol paper``)."""
    gpu = torch.cuda.is_available()
    mixers = [name for name in SIZES["base"].widths]
    parser = argparse.ArgumentParser(prog="python -m speechbrain_ext.bench --protocol paper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs="+", choices=sorted(SIZES), default=["base"],
                        help="one or both sizes (one figure)")
    parser.add_argument("--mixers", nargs="+", choices=mixers, default=list(PAPER_MIXERS))
    parser.add_argument("--seconds", type=float, nargs="+", default=list(PAPER_SECONDS) if gpu else [1, 2],
                        help="input lengths (GPU default: 10 to 80 s; CPU smoke test: 1 and 2 s)")
    parser.add_argument("--batch", type=int, default=PAPER_BATCH if gpu else 2)
    parser.add_argument("--warmup-rounds", type=int, default=PAPER_WARMUP_ROUNDS if gpu else 1,
                        help="rounds over every length at batch 1 before the timed calls")
    parser.add_argument("--calls", type=int, default=PAPER_CALLS if gpu else 2, help="timed calls per length")
    parser.add_argument("--warmup-peak", choices=WARMUP_PEAKS, default="carry",
                        help="carry: the warm-up's peak stays in the first call's window, as in the script; "
                             "reset: the first window opens after the warm-up")
    parser.add_argument("--settings", choices=SETTINGS, default="figure1",
                        help="figure1: the run script's flags (FIGURE1_FLAGS); sizes: SpeechEncoder.paper as is")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16" if gpu else "float32",
                        help="autocast dtype (float32: no autocast; the CPU default)")
    parser.add_argument("--device", default="cuda" if gpu else "cpu")
    parser.add_argument("--layers", type=int, default=None, help="override the size's depth")
    parser.add_argument("--d-model", type=int, default=None, help="one width for every mixer (small runs)")
    parser.add_argument("--implementation", choices=["speechbrain", "fast"], default="speechbrain",
                        help="SpeechEncoder(implementation=...): SpeechBrain's front-end and dropouts, as the "
                             "script ran, or ours")
    parser.add_argument("--seed", type=int, default=None, help="one seed for every model (default: its YAML's)")
    parser.add_argument("--output", type=Path, default=Path("bench_results"))
    args = parser.parse_args(argv)
    if args.batch < 1 or args.calls < 1 or args.warmup_rounds < 0:
        parser.error(f"--batch and --calls must be >= 1 and --warmup-rounds >= 0, got {args.batch}, {args.calls} "
                     f"and {args.warmup_rounds}")
    specs = [ModelSpec(size, mixer, args.settings, args.layers, args.d_model, args.implementation)
             for size in args.size for mixer in args.mixers]
    protocol = Protocol(tuple(args.seconds), args.batch, args.warmup_rounds, args.calls, args.warmup_peak,
                        args.dtype, args.device, args.seed)
    command = command or "python -m speechbrain_ext.bench --protocol paper " + " ".join(argv or [])
    return run_sweep(specs, protocol, args.output, command)
