#!/usr/bin/env python3
"""Recipe for BEST-RQ pretraining on LibriSpeech of a Conformer whose self-attention is a chosen mixer.

Whetten et al. (2024), *An Analysis of Linear Complexity Attention Substitutes with BEST-RQ*.
To run (one GPU, then 8):

    python train.py hparams/base/summarymixing.yaml --data_folder=/data/LibriSpeech
    torchrun --nproc_per_node=8 train.py hparams/base/mamba.yaml --data_folder=/data/LibriSpeech

The YAML builds the model (``speechbrain_ext.bestrq.model.BestRQ``: fbank, masking, random-projection
quantizer, CNN front-end, Conformer with the mixer, 8192-way head) and holds every setting. Each batch is
masked and encoded, and the loss is the cross-entropy of the targets of the masked frames. At the end the
encoder is written to ``<output_folder>/encoder/`` for the MP3S recipes and
``speechbrain_ext.inference.MixerEncoder``: whole (a staging folder renamed once complete), with the final
validation accuracy in its model card, also when a rerun only finishes an export that a kill interrupted.
"""

import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger

from speechbrain_ext.bestrq.model import codebook_health
from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.data.librispeech import prepare_librispeech
from speechbrain_ext.files import atomic_folder
from speechbrain_ext.training import (
    ResilientBrain,
    check_training_options,
    dynamic_batching,
    optimizer_state_digest,
    promote_run_hyperparams,
    write_run_hyperparams,
)

logger = get_logger(__name__)


class BestRQBrain(ResilientBrain):
    """Masked prediction of the quantizer's codes; logs the loss and the masked-frame accuracy.

    ResilientBrain resumes exactly (random generators and the running totals of the epoch are checkpointed)
    and leaves out audio that fails to decode. SpeechBrain's own options set precision, gradient accumulation,
    clipping, the optimizer step limit and timed checkpoints.
    """

    def compute_forward(self, batch, stage):
        """Masks the fbank frames, encodes them and predicts the targets (a ``BestRQOutput``).

        With ``streaming: True`` the YAML's ``dynchunktrain_config_sampler`` draws the chunks of each training
        batch (SpeechBrain's dynamic chunk training; its validation and test configurations, None: full context).
        """
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        dynchunktrain_config = None
        if getattr(self.hparams, "streaming", False):
            dynchunktrain_config = self.hparams.dynchunktrain_config_sampler(stage)
        return self.modules.model(wavs, wav_lens, dynchunktrain_config=dynchunktrain_config)

    def compute_objectives(self, outputs, batch, stage):
        """The loss on the masked frames; counts the correct predictions (and, in validation, the targets)."""
        self.masked_correct += float(outputs.accuracy) * outputs.num_masked
        self.masked_total += outputs.num_masked
        if stage == sb.Stage.VALID:
            self.target_counts += outputs.target_counts.cpu()
            self.prediction_counts += outputs.prediction_counts.cpu()
        return outputs.loss

    def on_fit_start(self):
        super().on_fit_start()  # restores the latest checkpoint, if any
        # The last validation's accuracy (for the model card), also when this run validates nothing more.
        validated = [c for c in self.checkpointer.list_checkpoints() if "masked_accuracy" in c.meta]
        if validated:
            self.valid_masked_accuracy = max(validated, key=lambda c: c.meta["unixtime"]).meta["masked_accuracy"]
        self.tensorboard = None
        if self.hparams.use_tensorboard:
            try:
                from speechbrain.utils.train_logger import TensorboardLogger

                self.tensorboard = TensorboardLogger(self.hparams.tensorboard_folder)
            except ImportError as error:
                raise ImportError("use_tensorboard=True needs TensorBoard: "
                                  "pip install 'speechbrain_ext[tensorboard]'") from error
        if self.optimizer_step > 0:
            # The optimizer's digest as text (the logger rounds numbers to 3 digits): compare it with the checkpoint's.
            digest = f"{optimizer_state_digest(self.optimizer.state_dict()):.12g}"
            resumed = {"resumed at optimizer step": self.optimizer_step, "optimizer state": digest}
            self.hparams.train_logger.log_stats(resumed)

    def on_stage_start(self, stage, epoch=None):
        self.masked_correct, self.masked_total = 0.0, 0
        self.target_counts = torch.zeros(self.hparams.cb_vocab, dtype=torch.long)
        self.prediction_counts = torch.zeros_like(self.target_counts)
        if stage == sb.Stage.TRAIN and epoch is not None:  # global normalisation stops updating at its epoch
            getattr(self.modules.model, "module", self.modules.model).set_epoch(epoch)
        super().on_stage_start(stage, epoch)  # a run resumed mid-epoch takes its running totals back

    def epoch_totals(self):
        return {"masked_correct": self.masked_correct, "masked_total": self.masked_total}

    def restore_epoch_totals(self, totals):
        self.masked_correct, self.masked_total = totals["masked_correct"], totals["masked_total"]

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Steps the learning-rate schedule after each optimizer step; a log line every ``log_interval``."""
        if not should_step:
            return
        self.hparams.lr_scheduler(self.optimizer)
        if self.optimizer_step % self.hparams.log_interval == 0:
            stats = {"loss": float(loss.detach()), "masked_accuracy": self.masked_accuracy()}
            self.log_stats({"optimizer step": self.optimizer_step, "lr": self.learning_rate()}, stats)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the epoch; after validation, saves a checkpoint."""
        stats = {"loss": stage_loss, "masked_accuracy": self.masked_accuracy()}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            self.valid_masked_accuracy = stats["masked_accuracy"]  # the final one goes into the model card
            if self.target_counts.sum() > 0:
                # Codebook use, and what always predicting the most frequent target code would score (last:
                # the bar to beat).
                health = codebook_health(self.target_counts, self.prediction_counts)
                stats.update(health)
                if health["codebook_usage"] < self.hparams.min_codebook_usage:
                    logger.warning(
                        "epoch %s: the validation targets use %.1f%% of the %d codes (min_codebook_usage: %.1f%%): "
                        "the quantizer's input may have collapsed (silence, constant features, broken "
                        "normalisation)", epoch, 100 * health["codebook_usage"], self.target_counts.numel(),
                        100 * self.hparams.min_codebook_usage)
        meta = {"epoch": epoch, "optimizer step": self.optimizer_step, "lr": self.learning_rate()}
        self.log_stats(meta, getattr(self, "train_stats", None), stats)
        if stage == sb.Stage.VALID:
            self.checkpointer.save_and_keep_only(
                meta={"loss": stage_loss, "optimizer_step": self.optimizer_step,
                      "masked_accuracy": stats["masked_accuracy"]},
                num_to_keep=self.hparams.checkpoints_to_keep,
            )

    def masked_accuracy(self):
        """Share of the masked frames of the current stage whose target code was predicted."""
        return self.masked_correct / max(self.masked_total, 1)

    def learning_rate(self):
        return self.optimizer.param_groups[0]["lr"]

    def log_stats(self, meta, train_stats=None, valid_stats=None):
        """Writes to train_log.txt (and TensorBoard). Called on every process: SpeechBrain's loggers write on the
        main one and then synchronise, so a call on the main process alone would hang DDP."""
        self.hparams.train_logger.log_stats(meta, train_stats=train_stats, valid_stats=valid_stats)
        if self.tensorboard is not None:
            self.tensorboard.log_stats(meta, train_stats=train_stats, valid_stats=valid_stats)


def dataio_prepare(hparams):
    """The training and validation sets: the audio of the manifests' splits (BEST-RQ needs no labels).

    Files that are unreadable, of the wrong rate, or outside ``avoid_if_shorter_than`` ..
    ``avoid_if_longer_than`` seconds are left out up front and listed in ``skipped_audio.txt``; a file that
    fails to decode during training is left out of its batch and of later runs (``audio_undecodable.tsv``).
    The validation set is sorted by duration (less padding).
    """
    folder = hparams["output_folder"]

    def dataset(splits, sort_by_duration):
        return audio_dataset(
            [f"{folder}/{split}.csv" for split in splits],
            hparams["sample_rate"],
            min_duration=hparams["avoid_if_shorter_than"],
            max_duration=hparams["avoid_if_longer_than"],
            report_file=f"{folder}/skipped_audio.txt",
            header_cache=f"{folder}/audio_headers.json",
            sort_by_duration=sort_by_duration,
            check_decoding=hparams["check_decoding"],
        )

    return dataset(hparams["train_splits"], False), dataset(hparams["valid_splits"], True)


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)  # builds the model: its sizes are checked here
    check_training_options(hparams, run_opts)  # before anything is written
    write_run_hyperparams(hparams["output_folder"], hparams_file, overrides)

    run_on_main(
        prepare_librispeech,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "splits": hparams["train_splits"] + hparams["valid_splits"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    train_data, valid_data = dataio_prepare(hparams)

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

    card = {  # the model card (README.md) of the exported encoder
        "optimizer_steps": brain.optimizer_step,
        "hours": sum(row["duration"] for row in train_data.data.values()) / 3600,
        "epochs": hparams["epoch_counter"].current,
        "masked_accuracy": getattr(brain, "valid_masked_accuracy", None),
        "command": " ".join(["python", *sys.argv]),
    }
    run_on_main(export, args=[hparams["speech_encoder"], hparams["encoder_folder"], card])
    logger.info("encoder written to %s", hparams["encoder_folder"])
    run_on_main(promote_run_hyperparams, args=[hparams["output_folder"]])  # a rerun that only exported


def export(speech_encoder, folder, card):
    """Writes the encoder and its model card into ``folder``, which is the previous export until it is complete."""
    with atomic_folder(folder) as staging:
        speech_encoder.save_pretrained(staging, card=card)


if __name__ == "__main__":
    main(sys.argv[1:])
