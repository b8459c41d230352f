#!/usr/bin/env python3
"""BEST-RQ pretraining on LibriSpeech of a Conformer whose self-attention is a chosen mixer.

    python train.py hparams/base/summarymixing.yaml --data_folder=/data/LibriSpeech
    torchrun --nproc_per_node=8 train.py hparams/base/mamba.yaml --data_folder=/data/LibriSpeech

The mixer, the sizes and every setting are in the YAML; the logic is in speechbrain_ext.bestrq.
At the end the encoder is exported to <output_folder>/encoder/ for the MP3S recipes.
"""

import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_ext.bestrq.brain import BestRQBrain, check_pretraining_options, dynamic_batching, export_encoder
from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.data.librispeech import prepare_librispeech
from speechbrain_ext.training import write_run_hyperparams


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)  # builds the model: its sizes are checked here
    check_pretraining_options(hparams)
    write_run_hyperparams(hparams["output_folder"], hparams_file, overrides)

    splits = hparams["train_splits"] + hparams["valid_splits"]
    prep = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"], "splits": splits}
    run_on_main(prepare_librispeech, kwargs={**prep, "skip_prep": hparams["skip_prep"]})

    def dataset(split_names, sort=False):
        csvs = [f"{hparams['output_folder']}/{name}.csv" for name in split_names]
        return audio_dataset(
            csvs,
            hparams["sample_rate"],
            hparams["avoid_if_shorter_than"],
            hparams["avoid_if_longer_than"],
            report_file=f"{hparams['output_folder']}/skipped_audio.txt",
            header_cache=f"{hparams['output_folder']}/audio_headers.json",
            sort_by_duration=sort,
            check_decoding=hparams.get("check_decoding", False),
        )

    train_data, valid_data = dataset(hparams["train_splits"]), dataset(hparams["valid_splits"], sort=True)
    brain = BestRQBrain(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"],
        train_data,
        valid_data,
        train_loader_kwargs=dynamic_batching(
            train_data, hparams["seconds_per_batch"], hparams["num_buckets"], hparams["num_workers"]
        ),
        valid_loader_kwargs={"batch_size": hparams["valid_batch_size"], "num_workers": hparams["num_workers"]},
    )
    card = {
        "optimizer_steps": brain.optimizer_step,
        "hours": sum(row["duration"] for row in train_data.data.values()) / 3600,
        "epochs": hparams["epoch_counter"].current,
        "masked_accuracy": getattr(brain, "valid_masked_accuracy", None),
        "command": " ".join(["python", *sys.argv]),
    }
    export_encoder(hparams["model"], hparams["encoder_folder"], **card)


if __name__ == "__main__":
    main(sys.argv[1:])
