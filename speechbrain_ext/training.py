"""What every training loop of the package shares: exact resumption, batches that survive bad audio, a run
folder whose ``hyperparams.yaml`` always describes the run that trained what is in it, dynamic batches and
option checks.

- :class:`RandomState` checkpoints the random generators (torch, CUDA, numpy, Python), so that a run killed
  mid-epoch and resumed draws the same masks, noise and dropout as one that was never interrupted.
- :class:`ResilientBrain` is SpeechBrain's ``Brain`` with that state among its recoverables, a collate function
  that leaves out utterances whose audio failed to decode (:func:`collate_decoded`), and batches left empty by
  that skipped without touching the running loss. A rerun's hyperparameters become the folder's
  ``hyperparams.yaml`` only once it has passed a validation (:func:`write_run_hyperparams`).
- :func:`check_training_options` refuses bad batching and schedule settings before any data work,
  :func:`dynamic_batching` gives batches of a fixed amount of audio, and :func:`optimizer_state_digest` lets a
  resumed run be checked against its checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from datetime import date
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from hyperpyyaml import resolve_references
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from speechbrain_ext.files import atomic_writer

logger = get_logger(__name__)

HYPERPARAMS = "hyperparams.yaml"
PENDING_HYPERPARAMS = "hyperparams.pending.yaml"
# What fit_batch / evaluate_batch return for a batch whose every utterance failed to decode.
SKIPPED_BATCH_LOSS = torch.tensor(0.0)


@register_checkpoint_hooks
class RandomState:
    """The state of every random generator a training step draws from, as a SpeechBrain recoverable.

    A checkpoint saved at the end of an epoch is applied when loaded. One saved mid-epoch is applied just before
    the next training batch (:meth:`apply_pending`): between loading and that batch, a resumed run creates its
    data loader iterator, which draws from torch's generator, where the uninterrupted run drew nothing.

    Example
    -------
    >>> state = RandomState()
    >>> saved = state.capture()
    >>> first = torch.rand(3)
    >>> state.restore(saved)
    >>> bool(torch.equal(first, torch.rand(3)))
    True
    """

    def __init__(self) -> None:
        self.pending: dict | None = None

    @staticmethod
    def capture() -> dict:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def restore(state: dict) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])

    @mark_as_saver
    def save(self, path: Path) -> None:
        torch.save(self.capture(), path)

    @mark_as_loader
    def load(self, path: Path, end_of_epoch: bool) -> None:
        state = torch.load(path, weights_only=False)  # numpy's state holds a numpy array: our own file
        if end_of_epoch:
            self.restore(state)
        else:
            self.pending = state

    def apply_pending(self) -> None:
        """Restores the state of a mid-epoch checkpoint, once, just before the first batch after resumption."""
        if self.pending is not None:
            self.restore(self.pending)
            self.pending = None


@register_checkpoint_hooks
class EpochTotals:
    """A brain's running totals of the current training epoch (the ones its logged metrics divide), checkpointed.

    Without them, a run resumed mid-epoch would log running metrics over the batches since the restart only.
    The brain supplies them (``epoch_totals``) and takes them back (``restore_epoch_totals``) at the start of
    the resumed training stage.
    """

    def __init__(self, brain: ResilientBrain) -> None:
        self.brain = brain
        self.pending: dict | None = None

    @mark_as_saver
    def save(self, path: Path) -> None:
        torch.save(self.brain.epoch_totals(), path)

    @mark_as_loader
    def load(self, path: Path, end_of_epoch: bool) -> None:
        self.pending = None if end_of_epoch else torch.load(path)


def collate_decoded(examples: list[dict]) -> PaddedBatch | None:
    """SpeechBrain's ``PaddedBatch`` of the examples whose audio decoded (``sig`` not None); None if none did.

    A file that fails to decode is logged and listed by the dataset (see
    :func:`speechbrain_ext.data.dataset.audio_dataset`); here the batch goes on without it.
    """
    kept = [example for example in examples if example.get("sig", ()) is not None]
    if len(kept) < len(examples):
        logger.warning("batch goes on without %d utterance(s) whose audio failed to decode",
                       len(examples) - len(kept))
    return PaddedBatch(kept) if kept else None


class ResilientBrain(sb.Brain):
    """SpeechBrain's ``Brain`` with exact resumption and batches that survive undecodable audio.

    - The random generators are checkpointed with the other recoverables (as ``random_state``), and so are
      the running totals of the epoch (``epoch_totals``): a subclass with running metrics overrides
      :meth:`epoch_totals` and :meth:`restore_epoch_totals` and calls ``super().on_stage_start`` after
      resetting them. Both are optional on load: a checkpoint of a plain SpeechBrain ``Brain`` resumes too.
    - Data loaders collate with :func:`collate_decoded` unless a ``collate_fn`` is given; a batch left with no
      utterance is skipped (no forward pass, no optimizer step, running loss unchanged).
    - After each validation, a rerun's pending ``hyperparams.yaml`` (see :func:`write_run_hyperparams`)
      replaces the folder's.
    - ``--optimizer_step_limit`` given on the command line is an integer (SpeechBrain 1.1.2 parses it as text).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.optimizer_step_limit, str):
            self.optimizer_step_limit = int(self.optimizer_step_limit)
        self.random_state = RandomState()
        self.resumed_totals = EpochTotals(self)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("random_state", self.random_state, optional_load=True)
            self.checkpointer.add_recoverable("epoch_totals", self.resumed_totals, optional_load=True)

    def epoch_totals(self) -> dict:
        """The running totals of the training epoch so far (saved with intra-epoch checkpoints)."""
        return {}

    def restore_epoch_totals(self, totals: dict) -> None:
        """Takes back what :meth:`epoch_totals` returned, when a run resumes mid-epoch."""

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN and self.resumed_totals.pending is not None:
            self.restore_epoch_totals(self.resumed_totals.pending)
            self.resumed_totals.pending = None

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        loader_kwargs.setdefault("collate_fn", collate_decoded)
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    def fit_batch(self, batch):
        self.random_state.apply_pending()
        if batch is None:
            return SKIPPED_BATCH_LOSS
        return super().fit_batch(batch)

    def evaluate_batch(self, batch, stage):
        if batch is None:
            return SKIPPED_BATCH_LOSS
        return super().evaluate_batch(batch, stage)

    def update_average(self, loss, avg_loss):
        if loss is SKIPPED_BATCH_LOSS:
            return avg_loss
        return super().update_average(loss, avg_loss)

    def _fit_valid(self, valid_set, epoch, enable):
        # Resumed at the end of the training loop (no batch left): the generators are restored here.
        self.random_state.apply_pending()
        super()._fit_valid(valid_set, epoch, enable)
        if valid_set is not None and if_main_process():
            promote_run_hyperparams(getattr(getattr(self, "hparams", None), "output_folder", None))


def write_run_hyperparams(output_folder: str | Path, hparams_file: str | Path, overrides: str | dict) -> Path:
    """Creates the experiment folder (SpeechBrain's logging, ``env.log``, a copy of the running script) and writes
    the resolved hyperparameters.

    A first run writes ``hyperparams.yaml``. A rerun into a folder that has one writes
    ``hyperparams.pending.yaml`` instead, which :class:`ResilientBrain` promotes after its first validation:
    a rerun that fails (a typo, a missing file, a crash) never overwrites the description of what was trained.
    Returns the file written.
    """
    sb.create_experiment_directory(str(output_folder), hyperparams_to_save=None, overrides=overrides)
    folder = Path(output_folder)
    target = folder / (PENDING_HYPERPARAMS if (folder / HYPERPARAMS).is_file() else HYPERPARAMS)
    if if_main_process():
        with open(hparams_file, encoding="utf-8") as handle:
            resolved = resolve_references(handle, overrides)
        with atomic_writer(target) as out:
            out.write(f"# Generated {date.today()} from:\n# {os.path.abspath(hparams_file)}\n# yamllint disable\n")
            shutil.copyfileobj(resolved, out)
        # SpeechBrain copied the file that called it (this module): the run's script goes there instead.
        (folder / Path(__file__).name).unlink(missing_ok=True)
        script = Path(sys.argv[0])
        if script.suffix == ".py" and script.is_file():
            shutil.copy(script, folder)
    return target


def promote_run_hyperparams(output_folder: str | Path | None) -> bool:
    """Makes a rerun's pending hyperparameters the folder's ``hyperparams.yaml``; True if there were any."""
    if output_folder is None:
        return False
    pending = Path(output_folder) / PENDING_HYPERPARAMS
    if not pending.is_file():
        return False
    os.replace(pending, pending.with_name(HYPERPARAMS))
    logger.info("the run passed validation: %s now describes it", pending.with_name(HYPERPARAMS))
    return True


def optimizer_state_digest(state_dict: dict) -> float:
    """Sum of every tensor in an optimizer ``state_dict``: a number that changes with the optimizer's state.

    Logged when a run resumes, it can be compared with the one of the checkpoint the run resumed from.

    Example
    -------
    >>> weight = torch.nn.Parameter(torch.ones(2))
    >>> optimizer = torch.optim.Adam([weight])
    >>> optimizer_state_digest(optimizer.state_dict())
    0.0
    >>> weight.sum().backward(); optimizer.step()
    >>> optimizer_state_digest(optimizer.state_dict()) > 0
    True
    """
    return float(
        sum(
            value.double().sum()
            for state in state_dict["state"].values()
            for value in state.values()
            if torch.is_tensor(value)
        )
    )


POSITIVE_NUMBERS = ("seconds_per_batch", "avoid_if_longer_than")
POSITIVE_INTEGERS = ("num_buckets", "grad_accumulation_factor", "number_of_epochs", "valid_batch_size",
                     "log_interval")


def check_training_options(hparams: dict) -> None:
    """One clear ValueError for the first bad batching or schedule setting, before any data work.

    Checks those of ``seconds_per_batch``, ``avoid_if_longer_than`` (positive numbers), ``num_buckets``,
    ``grad_accumulation_factor``, ``number_of_epochs``, ``valid_batch_size``, ``log_interval`` (positive
    integers) and ``avoid_if_shorter_than`` (at least 0, below ``avoid_if_longer_than``) that ``hparams`` holds.

    Example
    -------
    >>> check_training_options({"seconds_per_batch": 400, "num_buckets": 150})
    >>> check_training_options({"num_buckets": 0})
    Traceback (most recent call last):
    ...
    ValueError: num_buckets must be a positive integer, got 0
    """
    for key in POSITIVE_NUMBERS:
        value = hparams.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    for key in POSITIVE_INTEGERS:
        value = hparams.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    shortest, longest = hparams.get("avoid_if_shorter_than", 0.0), hparams.get("avoid_if_longer_than")
    if shortest < 0 or (longest is not None and shortest >= longest):
        raise ValueError(f"avoid_if_shorter_than={shortest} must be >= 0 and below avoid_if_longer_than={longest}")


def dynamic_batching(dataset, seconds_per_batch: float, num_buckets: int, num_workers: int = 0) -> dict:
    """``train_loader_kwargs`` for shuffled batches of at most ``seconds_per_batch`` seconds of audio each.

    SpeechBrain's ``DynamicBatchSampler`` over the rows' ``duration``, utterances of similar length grouped in
    ``num_buckets`` buckets, the batches in random order.
    """
    sampler = DynamicBatchSampler(
        dataset,
        max_batch_length=seconds_per_batch,
        num_buckets=num_buckets,
        length_func=lambda row: row["duration"],
        shuffle=True,
        batch_ordering="random",
    )
    return {"batch_sampler": sampler, "num_workers": num_workers}
