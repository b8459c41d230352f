"""The MP3S suite on the toy corpora, for encoders pretrained by the demo: the pipeline, end to end.

    python -m speechbrain_ext.bench.mp3s_toy --work mp3s_toy --mixers summarymixing fastformer --folds 1-3 \
        --profile mp3s --results benchmarks/results/mp3s_toy

Writes every toy corpus in its real layout (``speechbrain_ext.data.toy``), pretrains one demo
encoder per mixer (``python -m speechbrain_ext.demo``), runs ``python -m speechbrain_ext.mp3s.suite``
in the chosen profile (``--profile``: paper or mp3s; ``--quick``: small heads; the toy settings below), and copies
the tables and layer-weight plots to ``--results`` with this command. The toy corpora are far too
small for ASR (WER near 100%); the classification tasks learn from them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from speechbrain_ext.data import toy

# Toy settings of the tests (tests/test_mp3s.py, TOY): batches and rates for a few epochs on tiny sets.
TOY_SETTINGS = ["VoxCeleb1.lr=0.002", "VoxCeleb1.batch_size=8", "VoxCeleb1.valid_ratio=0.25",
                "IEMOCAP.batch_size=8", "SLURP.lr=0.01", "SLURP.batch_size=8"]


def write_corpora(root: Path) -> dict[str, Path]:
    """Every toy corpus, written once (a rerun reuses them)."""
    writers = {
        "ls": lambda folder: toy.write_toy_librispeech(
            folder, splits=("train-clean-100", "dev-clean", "test-clean", "test-other"), speakers_per_split=2,
            chapters_per_speaker=1, utterances_per_chapter=6),
        "cv": lambda folder: toy.write_toy_commonvoice(folder, clips_per_split=6),
        "vox": lambda folder: toy.write_toy_voxceleb1(folder, num_speakers=4, test_speakers=3, videos_per_speaker=3,
                                                      utterances_per_video=6),
        "iemocap": lambda folder: toy.write_toy_iemocap(folder, utterances_per_emotion_per_speaker=8),
        "slurp": lambda folder: toy.write_toy_slurp(folder, recordings_per_scenario=8,
                                                    scenarios=("alarm", "music", "weather", "email")),
    }
    folders = {}
    for name, write in writers.items():
        done = root / f"{name}.done"
        folders[name] = Path(done.read_text()) if done.is_file() else write(root / name)
        done.write_text(str(folders[name]))
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("mp3s_toy"))
    parser.add_argument("--mixers", nargs="+", default=["summarymixing", "fastformer"])
    parser.add_argument("--demo-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--folds", default="1-3")
    parser.add_argument("--profile", choices=("paper", "mp3s"), default="paper")
    parser.add_argument("--results", type=Path, help="folder to copy the tables and plots to")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    corpora = write_corpora(args.work / "corpora")
    demo = args.work / "demo"
    for mixer in args.mixers:
        if not (demo / mixer / "encoder" / "encoder.ckpt").is_file():
            subprocess.run([sys.executable, "-m", "speechbrain_ext.demo", "--mixer", mixer, "--epochs",
                            str(args.demo_epochs), "--output", str(demo)], check=True)
    suite = [sys.executable, "-m", "speechbrain_ext.mp3s.suite",
             *(arg for mixer in args.mixers for arg in ("--encoder", str(demo / mixer / "encoder"))),
             "--librispeech", str(corpora["ls"]), "--commonvoice", f"cy={corpora['cv']}",
             "--voxceleb1", str(corpora["vox"]), "--iemocap", str(corpora["iemocap"]), "--slurp", str(corpora["slurp"]),
             "--output", str(args.work / "results"), "--epochs", str(args.epochs), "--quick", "--folds", args.folds,
             "--profile", args.profile,
             *(arg for setting in TOY_SETTINGS for arg in ("--set", setting))]
    print("running:", " ".join(suite), flush=True)
    status = subprocess.run(suite).returncode
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        for name in ("results.csv", "results.md", "results_wide.csv", "results_wide.md", "results.png"):
            if (args.work / "results" / name).is_file():
                shutil.copy(args.work / "results" / name, args.results / name)
        if (args.work / "results" / "layer_weights").is_dir():
            shutil.copytree(args.work / "results" / "layer_weights", args.results / "layer_weights", dirs_exist_ok=True)
        command = " ".join(["python", "-m", "speechbrain_ext.bench.mp3s_toy", *(argv or sys.argv[1:])])
        (args.results / "command.txt").write_text(f"{command}\n\nsuite: {' '.join(suite[1:])}\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
