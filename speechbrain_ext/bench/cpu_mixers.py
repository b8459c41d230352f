"""Every mixer inside the Conformer encoder, forward and backward on random input, timed.

    python -m speechbrain_ext.bench.cpu_mixers [--lengths 250 2000] [--batch 2] [--d-model 256]

For each registered mixer it checks that a small MixerConformerEncoder trains (finite loss,
gradients on every parameter), times one mixer's forward + backward at each length (median
of a few runs, as a ratio to "mhsa" measured in the same run) and counts the parameters of
the paper's base encoder (12 layers, widths equalised across mixers).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from speechbrain_ext.mixers import MIXERS, build_mixer
from speechbrain_ext.models.encoder import MixerConformerEncoder
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.sizes import paper_encoder_settings


def base_encoder_parameters(mixer: str) -> int:
    """Parameters of the paper's base encoder for ``mixer`` (Conformer alone), counted without allocating it."""
    with torch.device("meta"):
        encoder = SpeechEncoder(**paper_encoder_settings("base", mixer)).encoder
    return sum(p.numel() for p in encoder.parameters())


def check_encoder_trains(mixer: str, d_model: int, nhead: int) -> float:
    """One forward/backward of a 2-layer encoder on a padded toy batch; returns the loss."""
    encoder = MixerConformerEncoder(2, d_model, 4 * d_model, nhead, mixer=mixer)
    x = torch.randn(3, 120, d_model)
    padding = torch.arange(120).unsqueeze(0) >= torch.tensor([[120], [90], [33]])
    out, _ = encoder(x, src_key_padding_mask=padding)
    loss = out[~padding].pow(2).mean()
    loss.backward()
    missing = [name for name, p in encoder.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    if not torch.isfinite(loss) or missing:
        raise RuntimeError(f"{mixer}: loss {loss.item()} or missing/non-finite gradients on {missing[:3]}")
    return loss.item()


def time_mixer(mixer: str, batch: int, length: int, d_model: int, nhead: int, repeats: int) -> float:
    """Median seconds of one forward + backward of the mixer alone."""
    layer = build_mixer(mixer, d_model, nhead)
    x = torch.randn(batch, length, d_model, requires_grad=True)
    timings = []
    for step in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        out, _ = layer(x, x, x)
        out.sum().backward()
        if step:
            timings.append(time.perf_counter() - start)
        layer.zero_grad(set_to_none=True)
        x.grad = None
    return statistics.median(timings)


def run(
    lengths: list[int], batch: int, d_model: int, nhead: int, repeats: int, output: Optional[Path] = None,
    command: Optional[str] = None,
) -> str:
    """Times every mixer and returns (and optionally writes) the table as Markdown, after ``command``."""
    torch.manual_seed(0)
    names = list(MIXERS)
    seconds = {}
    for name in names:
        check_encoder_trains(name, d_model, nhead)
        for length in lengths:
            seconds[name, length] = time_mixer(name, batch, length, d_model, nhead, repeats)
            print(f"  {name:<14} T={length:<6} {1000 * seconds[name, length]:9.1f} ms", flush=True)
    header = ["mixer", "base encoder params"] + [f"fwd+bwd T={t} (ms, x mhsa)" for t in lengths]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        cells = [name, f"{base_encoder_parameters(name) / 1e6:.2f}M"]
        for length in lengths:
            ratio = seconds[name, length] / seconds["mhsa", length]
            cells.append(f"{1000 * seconds[name, length]:.1f} ({ratio:.2f}x)")
        rows.append("| " + " | ".join(cells) + " |")
    table = "\n".join(rows)
    setting = (
        f"one mixer layer, batch {batch}, d_model {d_model}, {nhead} heads, float32, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, median of {repeats}"
    )
    report = (f"`{command}`\n\n" if command else "") + f"{setting}\n\n{table}\n"
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report)
    return report


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[250, 2000], help="frames per input")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--nhead", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    command = "python -m speechbrain_ext.bench.cpu_mixers " + " ".join(argv if argv is not None else sys.argv[1:])
    print(run(args.lengths, args.batch, args.d_model, args.nhead, args.repeats, args.output, command.strip()))


if __name__ == "__main__":
    main()
