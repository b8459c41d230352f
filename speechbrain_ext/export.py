"""Deployable encoders: an exported encoder folder as a ``torch.export`` program or an ONNX model.

The whole :class:`~speechbrain_ext.models.speech_encoder.SpeechEncoder` is exported, fbank included (the
STFT exports, to ONNX's ``STFT`` too), so a deployer feeds waveforms as ``MixerEncoder.encode_batch``
does::

    python -m speechbrain_ext.export runs/summarymixing/encoder exported/ --format onnx

Inputs: ``wavs`` (B, S) float32 at the encoder's sample rate and ``wav_lens`` (B,) float32, SpeechBrain's
relative lengths (samples past ``wav_lens * S`` are padding and change no valid frame). Outputs: ``out``,
(B, T, E) after the final norm (``output="last"``) or every hidden state (L, B, T, E) (``output="all"``),
and ``lengths`` (B,) int64, the valid frames of each row (40 ms frames). Batch size and length are
dynamic. Every mixer exports; Mamba through the PyTorch selective scan, traced as one step repeated over
time (ONNX's ``Scan``), never mamba_ssm's kernels or the numba ones. The output folder holds the program
(``encoder.pt2`` or ``encoder.onnx``) and ``export.json`` (names, shapes, sample rate, mixer), written whole
or not at all.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from speechbrain_ext.files import atomic_folder, atomic_writer
from speechbrain_ext.models.speech_encoder import SpeechEncoder

FORMATS = {"torch": "encoder.pt2", "onnx": "encoder.onnx"}
OUTPUTS = ("last", "all")
INFO_FILE = "export.json"
INPUT_NAMES = ["wavs", "wav_lens"]
OUTPUT_NAMES = ["out", "lengths"]
ONNX_PACKAGES = ("onnx", "onnxscript")


class ExportableEncoder(nn.Module):
    """A :class:`SpeechEncoder` as a function of tensors only: ``(wavs, wav_lens) -> (out, lengths)``.

    Arguments
    ---------
    encoder : SpeechEncoder
        The encoder (exported in eval mode).
    output : str
        ``"last"``: ``out`` is the encoder output (B, T, E); ``"all"``: every hidden state (L, B, T, E),
        the encoder input first (as ``MixerEncoder.encode_batch(output="all")``).

    Example
    -------
    >>> encoder = SpeechEncoder("fastformer", num_layers=2, d_model=32, d_ffn=64, nhead=4).eval()
    >>> out, lengths = ExportableEncoder(encoder)(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> out.shape, lengths.tolist()
    (torch.Size([2, 26, 32]), [26, 13])
    """

    def __init__(self, encoder: SpeechEncoder, output: str = "last") -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; valid: {', '.join(OUTPUTS)}")
        self.encoder = encoder
        self.output = output

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, S) and relative lengths (B,) to encoder frames and valid frames per row (B,)."""
        encoded = self.encoder(wavs, wav_lens, output_hidden_states=self.output == "all")
        out = encoded.out if self.output == "last" else torch.stack(encoded.hidden)
        return out, (~encoded.padding_mask).sum(dim=1)


def export_program(encoder: SpeechEncoder, output: str = "last") -> torch.export.ExportedProgram:
    """``torch.export`` of ``encoder`` (put in eval mode) with a dynamic batch size and length.

    Traced on a batch of two one-second waveforms, one of them padded; run it with ``program.module()``.
    """
    module = ExportableEncoder(encoder, output).eval()
    sample_rate = int(encoder.sample_rate)
    example = (torch.randn(2, sample_rate), torch.tensor([1.0, 0.75]))
    # Dim.DYNAMIC lets export derive the bounds itself: the frame count of a length is a derived size.
    dynamic = ({0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}, {0: torch.export.Dim.DYNAMIC})
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes=dynamic)
    # The inference IR: the training IR keeps autocast regions as calls that torch.export.save cannot write.
    return program.run_decompositions({})


def shapes(output: str = "last") -> dict[str, list[str]]:
    """The axes of each input and output of an exported encoder, by name."""
    out = ["batch", "frames", "d_model"] if output == "last" else ["layers", "batch", "frames", "d_model"]
    return {"wavs": ["batch", "samples"], "wav_lens": ["batch"], "out": out, "lengths": ["batch"]}


def onnx_program(program: torch.export.ExportedProgram) -> torch.onnx.ONNXProgram:
    """The ONNX model of a program of :func:`export_program` (``torch.onnx.export(..., dynamo=True)``),
    with the inputs and outputs named ``wavs, wav_lens -> out, lengths`` and their dynamic axes named
    as in :func:`shapes` (batch, samples, frames)."""
    check_onnx_packages()
    import onnx_ir as ir  # installed with onnxscript

    with torch.no_grad():
        model = torch.onnx.export(program, dynamo=True, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                  verbose=False)
    graph = model.model.graph
    output = "last" if len(graph.outputs[0].shape) == 3 else "all"
    for value in [*graph.inputs, *graph.outputs]:
        names = shapes(output)[value.name]
        value.shape = ir.Shape([dim if isinstance(dim, int) else name for dim, name in zip(value.shape, names)])
    return model


def check_onnx_packages() -> None:
    """An ImportError naming the missing packages (and the install command) when ONNX export cannot run."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)} (not installed): pip install 'speechbrain_ext[onnx]' "
            "(onnx, onnxscript, and onnxruntime to run the model)"
        )


def min_samples(program: torch.export.ExportedProgram, sample_rate: int) -> int:
    """The shortest waveform (samples) the program accepts.

    Export assumes every dynamic size is at least 2 (sizes 0 and 1 would be specialised), the encoder frames
    included, and checks that on every call: the bound is found by bisection on calls with silence, which
    the program refuses before computing anything when they are too short.
    """

    def accepted(samples: int) -> bool:
        try:
            with torch.no_grad():
                run(torch.zeros(1, samples), torch.ones(1))
        except (AssertionError, RuntimeError):  # "Guard failed: ...", or the computation itself
            return False
        return True

    run = program.module()
    wavs = next(node for node in program.graph.nodes if node.op == "placeholder" and node.name == INPUT_NAMES[0])
    size = wavs.meta["val"].shape[1]
    low = int(program.range_constraints[size.node.expr].lower) if isinstance(size, torch.SymInt) else int(size)
    high = max(sample_rate, low)  # traced on one second: accepted
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if accepted(middle) else (middle + 1, high)
    return low


def export_info(encoder: SpeechEncoder, format: str, output: str, shortest: int) -> dict:
    """What ``export.json`` holds: the file, its inputs and outputs, the sample rate and the mixer."""
    config = encoder.config
    axes = shapes(output)
    return {
        "format": format,
        "file": FORMATS[format],
        "mixer": config["mixer"],
        "sample_rate": int(config["sample_rate"]),
        "frame_shift_ms": config["hop_length"] * encoder.frames_per_token,
        "num_layers": config["num_layers"],
        "d_model": config["d_model"],
        "output": output,
        "min_samples": shortest,
        "inputs": [
            {"name": "wavs", "shape": axes["wavs"], "dtype": "float32",
             "meaning": "waveforms at sample_rate, padded to the longest"},
            {"name": "wav_lens", "shape": axes["wav_lens"], "dtype": "float32",
             "meaning": "relative lengths in (0, 1]: the share of each row that is not padding"},
        ],
        "outputs": [
            {"name": "out", "shape": axes["out"], "dtype": "float32",
             "meaning": "encoder output after the final norm" if output == "last"
             else "every hidden state: the encoder input, then each block's output"},
            {"name": "lengths", "shape": axes["lengths"], "dtype": "int64",
             "meaning": "valid frames of each row; frames past it are padding"},
        ],
        "torch": torch.__version__,
    }


def export_encoder(
    folder: str | Path, out: str | Path, format: str = "torch", output: str = "last"
) -> Path:
    """Exports the encoder folder ``folder`` (what ``MixerEncoder.from_hparams`` loads) to the folder ``out``:
    ``encoder.pt2`` (load with ``torch.export.load``) or ``encoder.onnx``, and ``export.json``.

    ``out`` is replaced whole, and only once everything is written. Raises a FileNotFoundError when
    ``folder`` is not an exported encoder, a ValueError for an unknown format or output (or an ``out``
    that would replace ``folder``), an ImportError when ONNX export's packages are missing.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; valid: {', '.join(FORMATS)}")
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; valid: {', '.join(OUTPUTS)}")
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: give an exported encoder folder "
                                "(BEST-RQ pretraining writes <output_folder>/encoder/)")
    if out.resolve() == folder.resolve() or out.resolve() in folder.resolve().parents:
        raise ValueError(f"the output folder {out} would replace the encoder folder {folder}: give another one")
    if format == "onnx":
        check_onnx_packages()
    encoder = SpeechEncoder.from_pretrained(folder)
    program = export_program(encoder, output)
    info = export_info(encoder, format, output, min_samples(program, int(encoder.sample_rate)))
    with atomic_folder(out) as staging:
        if format == "torch":
            torch.export.save(program, staging / FORMATS[format])
        else:
            onnx_program(program).save(str(staging / FORMATS[format]))
        with atomic_writer(staging / INFO_FILE) as handle:
            handle.write(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: Optional[list[str]] = None) -> Path:
    """``python -m speechbrain_ext.export <encoder folder> <out> --format {torch,onnx} [--output {last,all}]``."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_ext.export",
        description="Export a pretrained encoder folder with torch.export (.pt2) or to ONNX (.onnx).",
    )
    parser.add_argument("folder", help="exported encoder folder (<pretraining output_folder>/encoder)")
    parser.add_argument("out", help="output folder: the program and export.json (replaced whole)")
    parser.add_argument("--format", choices=tuple(FORMATS), default="torch")
    parser.add_argument("--output", choices=OUTPUTS, default="last",
                        help="last: the encoder output (B, T, E); all: every hidden state (L, B, T, E)")
    args = parser.parse_args(argv)
    try:
        written = export_encoder(args.folder, args.out, args.format, args.output)
    except (FileNotFoundError, ValueError, ImportError) as error:
        parser.error(str(error))
    print(f"{args.format} export of {args.folder} written to {written}")
    return written


if __name__ == "__main__":
    main()
