"""The speed and memory benchmark (python -m speechbrain_ext.bench) on small CPU settings."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechbrain_ext.bench import speed_memory
from speechbrain_ext.bench.speed_memory import Point, measure

ROOT = Path(__file__).resolve().parents[1]


def test_measure_times_the_model_in_process():
    point = measure(Point("mamba", 1.0, batch=1, mode="train", dtype="float32", device="cpu", layers=1, d_model=32,
                          warmup=1, repeats=2))
    assert point.status == "ok", point.error
    assert point.ms > 0 and point.peak_mib >= point.model_mib > 0
    assert 1e5 < point.parameters < 1e6  # front-end + 1 layer at width 32 + Linear(32, 8192)


@pytest.mark.parametrize("mixer", ["summarymixing", "sb_RoPEMHA"])
def test_encoder_only_times_the_conformer_alone(mixer):
    settings = dict(batch=1, mode="train", dtype="float32", device="cpu", layers=2, d_model=32, warmup=0, repeats=1)
    encoder_only = measure(Point(mixer, 4.0, encoder_only=True, **settings))
    whole = measure(Point(mixer, 4.0, **settings))
    assert encoder_only.status == whole.status == "ok", encoder_only.error + whole.error
    # The whole model adds the CNN front-end and the 8192-way head to the same Conformer.
    assert whole.parameters - encoder_only.parameters > 32 * 8192


def test_a_failing_point_is_recorded_not_raised():
    # SpeechBrain's absolute positional table ends at 2500 encoder frames = 100 s.
    point = measure(Point("sb_regularMHA", 101.0, batch=1, dtype="float32", device="cpu", layers=1, d_model=32,
                          warmup=0, repeats=1))
    assert point.status == "failed" and "2500" in point.error and point.ms is None


@pytest.mark.slow
def test_sweep_writes_csv_json_and_plot_with_each_point_in_its_own_process(tmp_path, capsys):
    points = speed_memory.main(["--mixers", "fastformer", "sb_regularMHA", "--seconds", "1", "101", "--layers", "1",
                                "--d-model", "32", "--batch", "1", "--repeats", "1", "--output", str(tmp_path)])
    assert [(p.mixer, p.seconds, p.status) for p in points] == [
        ("fastformer", 1, "ok"), ("fastformer", 101, "ok"), ("sb_regularMHA", 1, "ok"), ("sb_regularMHA", 101, "failed")
    ]
    printed = capsys.readouterr().out
    assert "[4/4] sb_regularMHA" in printed and "failed" in printed
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "failed"]
    assert float(rows[1]["peak_mib"]) > float(rows[0]["peak_mib"])  # a longer input, a higher peak in its process
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["command"].startswith("python -m speechbrain_ext.bench --mixers fastformer") and meta["torch"]
    assert (tmp_path / "results.png").stat().st_size > 10_000


@pytest.mark.slow
def test_gpu_check_script_runs_end_to_end_as_a_dry_run_on_the_cpu(tmp_path):
    """Every sweep of benchmarks/gpu_check.sh runs (shrunk to tiny CPU runs) and writes its results;
    the sweeps it would run on a GPU name only mixers the bench knows: first the paper's Figure 1 protocol
    (its GPU defaults: memory_test_v2.py's), then the inference protocol at the same lengths."""
    script = ROOT / "benchmarks" / "gpu_check.sh"
    result = subprocess.run(["bash", str(script), str(tmp_path), "--dry-run"], capture_output=True, text=True,
                            timeout=900, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                                              "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    log = (tmp_path / "gpu_check.log").read_text()
    assert "CUDA tests (cuda): " in log and "skipped" in (tmp_path / "pytest_cuda.txt").read_text()
    commands = dict(re.findall(r"\] sweep (\S+): python -m speechbrain_ext.bench (.*)", log))
    assert list(commands) == ["figure1_paper", "base_infer", "base_train", "base_infer_600s", "large_infer",
                              "large_train"]
    assert commands["figure1_paper"] == ("--protocol paper --size base large --mixers "
                                         "mhsa hypermixing fastformer summarymixing mamba")
    assert commands["base_infer"].startswith("--protocol inference --size base --mode infer --mixers mhsa ")
    assert commands["base_infer"].endswith("--seconds 10 20 30 40 50 60 70 80")
    for name, command in commands.items():
        mixers = command.split("--mixers ")[1].split(" --")[0].split()
        assert set(mixers) <= set(speed_memory.MIXERS) | set(speed_memory.STOCK), (name, mixers)
        rows = list(csv.DictReader(open(tmp_path / name / "results.csv")))
        assert [row["status"] for row in rows] == ["ok"] * (2 if name == "figure1_paper" else 1), (name, rows)
    paper_rows = list(csv.DictReader(open(tmp_path / "figure1_paper" / "results.csv")))
    assert [(row["size"], row["mixer"]) for row in paper_rows] == [("base", "mhsa"), ("large", "mhsa")]
    assert (tmp_path / "figure1_paper" / "figure1.png").stat().st_size > 10_000
    meta = json.loads((tmp_path / "large_train" / "results.json").read_text())["meta"]
    assert "--mode train" in meta["command"] and "--size large" in meta["command"]
    assert "mamba_ssm kernels: no" in (tmp_path / "environment.txt").read_text()
    assert (tmp_path / "skipped_sweeps.txt").read_text().strip() == ""


def test_paper_protocol_writes_mean_std_per_length_and_both_panels(tmp_path, capsys):
    from speechbrain_ext.bench.paper_protocol import plot_figure

    points = speed_memory.main(["--protocol", "paper", "--size", "base", "large", "--mixers", "fastformer",
                                "summarymixing", "--layers", "1", "--d-model", "32", "--seconds", "1", "2",
                                "--batch", "2", "--warmup-rounds", "1", "--calls", "2", "--output", str(tmp_path)])
    models = [("base", "fastformer"), ("base", "summarymixing"), ("large", "fastformer"), ("large", "summarymixing")]
    assert [(p.size, p.mixer, p.seconds) for p in points] == [(*m, s) for m in models for s in (1.0, 2.0)]
    assert "[4/4] large summarymixing" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [row["status"] for row in rows] == ["ok"] * 8, rows
    for row in rows:
        assert row["train_mode"] == row["autograd"] == "True" and row["dtype"] == "float32" and row["calls"] == "2"
        assert float(row["ms_min"]) <= float(row["ms_mean"]) <= float(row["ms_max"])
        assert float(row["peak_mib_min"]) <= float(row["peak_mib_mean"]) <= float(row["peak_mib_max"])
        assert float(row["ms_std"]) >= 0 and float(row["peak_mib_std"]) >= 0
    # Figure 1's SummaryMixing ran with one head (run/toy_test_adel.sh: --nhead 1); --d-model 32 overrides the width.
    assert {row["mixer"]: row["nhead"] for row in rows} == {"fastformer": "8", "summarymixing": "1"}
    runs = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert len(runs) == 16 and {run["call"] for run in runs} == {"0", "1"}
    first = points[0]
    calls = [float(run["ms"]) for run in runs[:2]]
    assert first.ms_mean == pytest.approx(sum(calls) / 2)
    assert first.ms_std == pytest.approx(abs(calls[0] - calls[1]) / 2)
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["command"].startswith("python -m speechbrain_ext.bench --protocol paper --size base large")
    assert (meta["protocol"], meta["batch"], meta["warmup_batch"], meta["warmup_peak"]) == ("paper", 2, 1, "carry")
    assert meta["train_mode"] and meta["autograd"] and meta["autocast"] is None and "clear_refs" in meta["memory"]
    assert (tmp_path / "figure1.png").stat().st_size > 10_000
    labels = [f"{mixer} ({size})" for size, mixer in models]
    assert plot_figure(points, tmp_path / "again.png", "peak resident memory") == {"time": labels, "memory": labels}


@pytest.mark.parametrize("warmup_peak", ["carry", "reset"])
def test_paper_protocol_times_a_training_mode_model_with_autograd_in_per_call_windows(monkeypatch, warmup_peak):
    """The event order of memory_test_v2.py: the model built in a fresh window; warm-up at batch 1 with no reset
    (the first window carries its peak unless reset); each timed call's fbank, targets and mask noise before the
    clock starts, the CNN front-end and the head between its two readings, every module in training mode with
    autograd on, then the peak read and the window reset."""
    import time

    from speechbrain_ext.bench import paper_protocol
    from speechbrain_ext.bench.paper_protocol import ModelSpec, Protocol, run_model

    events = []
    build, noise = paper_protocol.build_model, paper_protocol.apply_mask_noise

    def build_watched(spec):
        model = build(spec)
        speech_encoder = model.speech_encoder
        speech_encoder.compute_features.register_forward_hook(lambda *_: events.append("fbank"))
        model.quantizer.register_forward_hook(lambda *_: events.append("targets"))
        speech_encoder.front_end.register_forward_pre_hook(lambda _, args: events.append(("cnn", len(args[0]))))

        def head(module, args, out):
            events.append(("head", all(m.training for m in model.modules()), torch.is_grad_enabled(),
                           torch.is_inference_mode_enabled(), out.requires_grad))

        model.heads[0].register_forward_hook(head)
        return model

    class Probe:
        kind = "watched"

        def reset(self):
            events.append("reset")

        def peak_mib(self):
            events.append("peak")
            return 1.0

    monkeypatch.setattr(paper_protocol, "build_model", build_watched)
    monkeypatch.setattr(paper_protocol, "apply_mask_noise", lambda *a, **k: events.append("noise") or noise(*a, **k))
    monkeypatch.setattr(paper_protocol, "clock", lambda: events.append("clock") or time.perf_counter())
    spec = ModelSpec("base", "mamba", layers=1, d_model=32)
    protocol = Protocol(seconds=(1.0, 0.5), batch=3, warmup_rounds=2, calls=2, warmup_peak=warmup_peak,
                        dtype="float32", device="cpu")
    runs = []
    points = run_model(spec, protocol, Probe(), runs)
    assert [p.status for p in points] == ["ok", "ok"], points[0].error

    def call(batch):
        return ["fbank", "targets", "noise", "clock", ("cnn", batch), ("head", True, True, False, True), "clock",
                "peak"]

    warmup = call(1) * 2 * 2  # 2 rounds over the 2 lengths at batch 1
    timed = (call(3) + ["reset"]) * 2 * 2  # 2 calls at each length, batch 3
    assert events == ["reset", *warmup, *(["reset"] if warmup_peak == "reset" else []), *timed]
    assert [(run["seconds"], run["call"]) for run in runs] == [(1.0, 0), (1.0, 1), (0.5, 0), (0.5, 1)]
    assert all(p.train_mode and p.autograd and p.peak_mib_mean == 1.0 for p in points)


def test_paper_protocol_records_an_out_of_memory_length_and_goes_on(monkeypatch, tmp_path):
    from speechbrain_ext.bench import paper_protocol
    from speechbrain_ext.bench.paper_protocol import ModelSpec, Protocol, ResidentPeak, plot_figure, run_model

    call = paper_protocol.paper_call

    def failing(model, seconds, batch, *args):
        if seconds == 2.0 and batch > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return call(model, seconds, batch, *args)

    monkeypatch.setattr(paper_protocol, "paper_call", failing)
    protocol = Protocol(seconds=(1.0, 2.0, 0.5), batch=2, warmup_rounds=1, calls=1, dtype="float32", device="cpu")
    points = run_model(ModelSpec("base", "hypermixing", layers=1, d_model=32), protocol, ResidentPeak())
    assert [p.status for p in points] == ["ok", "out of memory", "ok"]
    assert points[1].error == "OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 GiB"
    assert points[1].ms_mean is None and points[2].ms_mean > 0
    assert plot_figure(points, tmp_path / "figure1.png", "peak resident memory") == {
        "time": ["hypermixing"], "memory": ["hypermixing"]}


def test_paper_protocol_builds_figure1_models_from_the_run_script_flags():
    from speechbrain_ext.bench.paper_protocol import ModelSpec, build_model, model_settings
    from speechbrain_ext.sizes import SIZES, paper_mixer_kwargs

    overrides, bestrq = model_settings(ModelSpec("base", "summarymixing"))
    assert (overrides["d_model"], overrides["nhead"], overrides["mixer_kwargs"]["summary_out"]) == (536, 1, 536)
    assert model_settings(ModelSpec("large", "summarymixing"))[0]["d_model"] == 848
    overrides, bestrq = model_settings(ModelSpec("base", "fastformer"))
    assert (overrides["dropout"], overrides["input_dropout"], overrides["mixer_kwargs"]["dropout"]) == (0.2, 0.2, 0.2)
    assert bestrq == {"cb_vocab": 8192, "mask_prob": 0.05}
    # The other models, and every model with --settings sizes, are SpeechEncoder.paper(size, mixer) as it is.
    assert model_settings(ModelSpec("large", "mhsa")) == (
        {"mixer_kwargs": paper_mixer_kwargs("mhsa", SIZES["large"].widths["mhsa"]), "implementation": "speechbrain"},
        {"cb_vocab": 8192})
    assert model_settings(ModelSpec("base", "summarymixing", settings="sizes", implementation="fast"))[0] == {
        "mixer_kwargs": paper_mixer_kwargs("summarymixing", SIZES["base"].widths["summarymixing"]),
        "implementation": "fast"}
    model = build_model(ModelSpec("base", "fastformer", layers=1))
    assert model.mask_prob == 0.05 and model.heads[0].out_features == 8192
    assert model.speech_encoder.d_model == SIZES["base"].widths["fastformer"]
    assert model.speech_encoder.encoder.layerdrop_prob == 0.05 and model.speech_encoder.input_dropout.p == 0.2


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's clear_refs resets the peak")
def test_resident_peak_window_resets():
    from speechbrain_ext.bench.paper_protocol import ResidentPeak

    probe = ResidentPeak()
    probe.reset()
    before = probe.peak_mib()
    block = torch.ones(2**25)  # 128 MiB, touched
    high = probe.peak_mib()
    del block
    probe.reset()
    assert high > before + 100 and probe.peak_mib() < high - 100
    assert "clear_refs" in probe.kind


def write_results(folder, times, peak=1000.0):
    """A bench results.csv with the given {(mixer, seconds): ms or None (failed)}."""
    folder.mkdir(parents=True)
    with open(folder / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["mixer", "seconds", "ms", "peak_mib", "status"])
        writer.writeheader()
        for (mixer, seconds), ms in times.items():
            writer.writerow({"mixer": mixer, "seconds": seconds, "ms": "" if ms is None else ms,
                             "peak_mib": peak, "status": "failed" if ms is None else "ok"})
    return folder


def test_report_states_the_ratios_of_one_run(tmp_path):
    from speechbrain_ext.bench.report import fit_line, report

    linear = {"hypermixing": 2000.0, "fastformer": 2500.0, "summarymixing": 2000.0, "mamba": 5000.0}
    train = write_results(tmp_path / "train", {**{(m, 80.0): ms for m, ms in linear.items()}, ("mhsa", 80.0): 9000.0,
                                               ("sb_RelPosMHAXL", 80.0): 10000.0, ("sb_hypermixing", 80.0): 2500.0})
    encoder = write_results(tmp_path / "enc", {("mhsa", 80.0): 8000.0, ("mamba", 80.0): 1000.0,
                                               ("hypermixing", 80.0): 900.0, ("sb_hypermixing", 80.0): 1000.0})
    lengths = (10.0, 20.0, 40.0)
    infer = write_results(tmp_path / "infer", {
        **{(m, s): 10 * s + 5 for m in linear for s in lengths},
        **{("sb_RelPosMHAXL", s): s * s for s in lengths},
        **{("sb_hypermixing", s): (12 * s if s < 40 else None) for s in lengths},  # its positions fail at 40 s
    })
    text = report(train, infer, encoder)
    # 10000 / 2500 = 4x stock RelPosMHAXL; 2500 / 2500 = 1x stock hypermixing
    assert "| fastformer | 2500 | 4.00x | 1.00x | 1000 |" in text
    assert ("the linear mixers (hypermixing, fastformer, summarymixing, mamba) run 2.00-5.00x the speed of the "
            "stock RelPosMHAXL Conformer and 0.50-1.25x that of the stock HyperMixing one.") in text
    # at 10 s, sb_RelPosMHAXL (100 ms) beats the linear mixers (105 ms); a failed stock point is no bar
    assert ("every linear mixer is faster than every stock attention type at every length, except hypermixing at "
            "10 s, fastformer at 10 s, summarymixing at 10 s, mamba at 10 s (there") in text
    assert "| mamba | 105 | 205 | 405 | 10.0 | 1.0000 | 1.98 |" in text
    assert "| sb_hypermixing | 120 | 240 | failed |" in text
    assert "speed against mhsa: hypermixing 8.89x, mamba 8.00x; our hypermixing runs 1.11x the speed of SpeechBrain's" \
        in text
    assert "lowest R² of a linear mixer's least-squares line is 1.0000" in text
    assert "not met" not in text and "target" not in text
    slope, intercept, r2 = fit_line([1, 2, 3, 4], [3, 5, 7, 9])
    assert (round(slope, 6), round(intercept, 6), round(r2, 6)) == (2.0, 1.0, 1.0)


def test_docs_show_the_report_of_the_committed_cpu_results(monkeypatch):
    """docs/benchmarks.md holds the report of benchmarks/results, as it reads now."""
    from speechbrain_ext.bench.report import report

    monkeypatch.chdir(ROOT)
    results = Path("benchmarks/results")
    text = report(results / "cpu_train_4x256", results / "cpu_infer_4x256", results / "cpu_encoder_train_4x256")
    assert text in (ROOT / "docs" / "benchmarks.md").read_text()
    assert text == (results / "cpu_report.md").read_text()


def test_scan_cpu_times_each_variant_interleaved(capsys):
    from speechbrain_ext.bench import scan_cpu
    from speechbrain_ext.mixers import mamba
    from speechbrain_ext.mixers.scan import selective_scan

    scan_cpu.main(["--lengths", "24", "--batch", "1", "--d-model", "16", "--d-state", "4", "--repeats", "1",
                   "--chunk-sizes", "4", "8"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == ["T=   24    chunk=4", "T=   24    chunk=8"]
    assert lines[1].endswith("1.00x faster than chunk=4")
    assert mamba.selective_scan is selective_scan  # put back after timing
