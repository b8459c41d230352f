"""SpeechBrain ``Brain`` for BEST-RQ pretraining: loss, masked accuracy, logging, checkpoints."""

from __future__ import annotations

from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from speechbrain_ext.training import ResilientBrain

logger = get_logger(__name__)


class BestRQBrain(ResilientBrain):
    """Trains ``modules.model`` (a :class:`~speechbrain_ext.bestrq.model.BestRQ`).

    Reads from hparams: ``lr_scheduler`` (stepped on every optimizer step), ``train_logger``,
    ``log_interval`` (optimizer steps between log lines), ``use_tensorboard`` and
    ``tensorboard_folder``, ``checkpoints_to_keep``. Precision, gradient accumulation,
    gradient clipping, the optimizer step limit and timed checkpoints are SpeechBrain's
    own options (``precision``, ``grad_accumulation_factor``, ``max_grad_norm``,
    ``optimizer_step_limit``, ``ckpt_interval_minutes``). Resumption is exact and undecodable audio is skipped
    (:class:`~speechbrain_ext.training.ResilientBrain`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # SpeechBrain 1.1.2 parses --optimizer_step_limit without a type (its default is None).
        if isinstance(self.optimizer_step_limit, str):
            self.optimizer_step_limit = int(self.optimizer_step_limit)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        return self.modules.model(wavs, wav_lens)

    def compute_objectives(self, outputs, batch, stage):
        self.masked_correct += float(outputs.accuracy) * outputs.num_masked
        self.masked_total += outputs.num_masked
        if stage == sb.Stage.VALID and outputs.target_counts is not None:
            counts = outputs.target_counts.cpu()
            self.valid_target_counts = counts if self.valid_target_counts is None else self.valid_target_counts + counts
        return outputs.loss

    def on_fit_start(self):
        super().on_fit_start()  # restores the latest checkpoint, if any
        self.tensorboard = None
        if getattr(self.hparams, "use_tensorboard", False):
            try:
                import torch.utils.tensorboard  # noqa: F401 - SpeechBrain's logger needs the tensorboard package
            except ImportError as error:
                raise ImportError(
                    "use_tensorboard=True needs TensorBoard: pip install 'speechbrain_ext[tensorboard]'"
                ) from error
            from speechbrain.utils.train_logger import TensorboardLogger

            self.tensorboard = TensorboardLogger(self.hparams.tensorboard_folder)  # writes on the main process
        if self.optimizer_step > 0:
            logger.info("resumed at optimizer step %d", self.optimizer_step)
            # As text: the logger would round a float to 3 digits.
            digest = f"{self.optimizer_digest():.12g}"
            self._log({"resumed at optimizer step": self.optimizer_step, "optimizer state": digest})

    def on_stage_start(self, stage, epoch=None):
        self.masked_correct, self.masked_total = 0.0, 0
        self.valid_target_counts = None
        if stage == sb.Stage.TRAIN and epoch is not None:  # global normalisation stops updating at its epoch
            getattr(self.modules.model, "module", self.modules.model).set_epoch(epoch)
        super().on_stage_start(stage, epoch)  # a run resumed mid-epoch takes its totals back

    def epoch_totals(self) -> dict:
        return {"masked_correct": self.masked_correct, "masked_total": self.masked_total}

    def restore_epoch_totals(self, totals: dict) -> None:
        self.masked_correct, self.masked_total = totals["masked_correct"], totals["masked_total"]

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if not should_step:
            return
        self.hparams.lr_scheduler(self.optimizer)
        if self.optimizer_step % self.hparams.log_interval == 0:
            stats = {"loss": float(loss.detach()), "masked_accuracy": self.masked_accuracy()}
            self._log({"optimizer step": self.optimizer_step, "lr": self.learning_rate()}, stats)
            if self.tensorboard is not None:
                self.tensorboard.log_stats({"step": self.optimizer_step}, train_stats=stats)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss, "masked_accuracy": self.masked_accuracy()}
        if stage == sb.Stage.VALID:
            self.valid_masked_accuracy = stats["masked_accuracy"]  # the model card's final accuracy
            if self.valid_target_counts is not None and self.valid_target_counts.sum() > 0:
                # What always predicting the most frequent target code would score: the bar to beat.
                stats["majority_code_share"] = float(self.valid_target_counts.max() / self.valid_target_counts.sum())
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        meta = {"epoch": epoch, "optimizer step": self.optimizer_step, "lr": self.learning_rate()}
        self._log(meta, getattr(self, "train_stats", None), stats)
        if self.tensorboard is not None:
            self.tensorboard.log_stats(meta, train_stats=getattr(self, "train_stats", None), valid_stats=stats)
        if stage == sb.Stage.VALID:
            self.checkpointer.save_and_keep_only(
                meta={"loss": stage_loss, "optimizer_step": self.optimizer_step},
                num_to_keep=getattr(self.hparams, "checkpoints_to_keep", 2),
            )

    def masked_accuracy(self) -> float:
        """Share of masked frames whose target code was predicted, in the current stage."""
        return self.masked_correct / max(self.masked_total, 1)

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def optimizer_digest(self) -> float:
        """A number that changes with the optimizer's state: the sum of all its state tensors.

        Logged on resumption, so that a restart can be checked against the checkpoint.
        """
        return optimizer_state_digest(self.optimizer.state_dict())

    def _log(self, meta, train_stats=None, valid_stats=None):
        # Called on every process: SpeechBrain's loggers write on the main one and then
        # broadcast, so a call on the main process alone would desynchronise DDP.
        self.hparams.train_logger.log_stats(meta, train_stats=train_stats, valid_stats=valid_stats)


def optimizer_state_digest(state_dict: dict) -> float:
    """Sum of every tensor in an optimizer state_dict (for comparing saved and restored states)."""
    return float(
        sum(
            value.double().sum()
            for state in state_dict["state"].values()
            for value in state.values()
            if torch.is_tensor(value)
        )
    )


def check_pretraining_options(hparams: dict) -> None:
    """One clear ValueError for the first bad batching or schedule setting, before any data work.

    (The model's sizes are checked when the YAML builds it.)
    """
    positive_numbers = ("seconds_per_batch", "avoid_if_longer_than")
    positive_integers = ("num_buckets", "grad_accumulation_factor", "number_of_epochs", "valid_batch_size",
                         "log_interval")
    for key in positive_numbers:
        value = hparams.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    for key in positive_integers:
        value = hparams.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    shortest, longest = hparams.get("avoid_if_shorter_than", 0.0), hparams.get("avoid_if_longer_than")
    if shortest < 0 or (longest is not None and shortest >= longest):
        raise ValueError(f"avoid_if_shorter_than={shortest} must be >= 0 and below avoid_if_longer_than={longest}")


def dynamic_batching(dataset, seconds_per_batch: float, num_buckets: int, num_workers: int = 0) -> dict:
    """``train_loader_kwargs`` for batches of at most ``seconds_per_batch`` seconds of audio."""
    sampler = DynamicBatchSampler(
        dataset,
        max_batch_length=seconds_per_batch,
        num_buckets=num_buckets,
        length_func=lambda row: row["duration"],
        shuffle=True,
        batch_ordering="random",
    )
    return {"batch_sampler": sampler, "num_workers": num_workers}


def export_encoder(model, folder: str | Path, **card) -> None:
    """Writes the pretrained ``SpeechEncoder`` of a BestRQ model for downstream recipes and for
    ``speechbrain_ext.inference.MixerEncoder.from_hparams``; ``card`` goes into its model card
    (``optimizer_steps``, ``hours``, ``epochs``, ``masked_accuracy``, ``command``)."""
    if if_main_process():  # a plain file write: no collective inside
        model.speech_encoder.save_pretrained(folder, card=card)
        logger.info("encoder exported to %s", folder)
