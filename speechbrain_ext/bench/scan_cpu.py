"""CPU time of forward + backward of a bidirectional Mamba mixer, i.e. of its selective scan.

    python -m speechbrain_ext.bench.scan_cpu                            # the scan, default chunk size
    python -m speechbrain_ext.bench.scan_cpu --chunk-sizes 16 32 64 128 # sweep the chunk size
    python -m speechbrain_ext.bench.scan_cpu --baseline old_scan.py     # also a saved copy of scan.py
    python -m speechbrain_ext.bench.scan_cpu --implementations          # PyTorch ops against the numba kernels

Variants run interleaved, repeat after repeat, so that a noisy machine slows them alike; compare
the ratios. ``--rss`` also runs one forward + backward per variant in a fresh process and prints
its peak resident memory.
"""

import argparse
import functools
import importlib.util
import statistics
import subprocess
import sys
import time

import torch

from speechbrain_ext.mixers import build_mixer, mamba
from speechbrain_ext.mixers.scan import selective_scan


def variants(args):
    """name -> scan function, in the order they are timed."""
    found = {}
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_scan", args.baseline)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found["baseline"] = module.selective_scan
    if args.implementations:
        found["pytorch"] = functools.partial(selective_scan, fused=False)
        found["numba"] = functools.partial(selective_scan, fused=True)
        return found
    for chunk_size in args.chunk_sizes or [None]:
        if chunk_size is None:
            found["current"] = selective_scan
        else:
            found[f"chunk={chunk_size}"] = functools.partial(selective_scan, chunk_size=chunk_size)
    return found


def step(mixer, x):
    """One forward + backward; returns its wall time in seconds."""
    mixer.zero_grad(set_to_none=True)
    x.grad = None
    start = time.perf_counter()
    out, _ = mixer(x, x, x)
    out.square().mean().backward()
    return time.perf_counter() - start


def make(args, length):
    torch.manual_seed(0)
    mixer = build_mixer("mamba", args.d_model, 8, d_state=args.d_state)
    x = torch.randn(args.batch, length, args.d_model, requires_grad=True)
    return mixer, x


def peak_rss_mib(args, name, length):
    """Peak RSS of a fresh process running one forward + backward with one variant."""
    command = [sys.executable, "-m", "speechbrain_ext.bench.scan_cpu", "--child", name, "--lengths", str(length)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    command += ["--batch", str(args.batch), "--d-model", str(args.d_model), "--d-state", str(args.d_state)]
    if args.baseline:
        command += ["--baseline", args.baseline]
    if args.chunk_sizes:
        command += ["--chunk-sizes", *map(str, args.chunk_sizes)]
    if args.implementations:
        command += ["--implementations"]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a saved scan.py to time beside this tree's")
    parser.add_argument("--chunk-sizes", type=int, nargs="*")
    parser.add_argument("--implementations", action="store_true",
                        help="time selective_scan(fused=False) and (fused=True) instead of chunk sizes")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 250])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS per variant")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    scans = variants(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.child:
        mamba.selective_scan = scans[args.child]
        step(*make(args, args.lengths[0]))
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
        with open("/proc/self/status") as status:
            print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch}, E={args.d_model}")
    try:
        for length in args.lengths:
            time_length(args, scans, length)
    finally:
        mamba.selective_scan = selective_scan


def time_length(args, scans, length):
    """Times every variant at one length, interleaved, and prints one line per variant."""
    mixer, x = make(args, length)
    times = {name: [] for name in scans}
    for scan in scans.values():  # warm-up
        mamba.selective_scan = scan
        step(mixer, x)
    for _ in range(args.repeats):
        for name, scan in scans.items():
            mamba.selective_scan = scan
            times[name].append(step(mixer, x))
    reference = statistics.median(next(iter(times.values())))
    for name, seconds in times.items():
        median = statistics.median(seconds)
        line = f"T={length:5d} {name:>10}: median {median:.3f} s, min {min(seconds):.3f} s"
        line += f", {reference / median:.2f}x faster than {next(iter(times))}"
        if args.rss:
            line += f", peak RSS {peak_rss_mib(args, name, length):.0f} MiB"
        print(line, flush=True)

if __name__ == "__main__":
    main()
