"""What every training loop of the package shares: exact resumption, batches that survive bad audio, and a run
folder whose ``hyperparams.yaml`` always describes the run that trained what is in it.

- :class:`RandomState` checkpoints the random generators (torch, CUDA, numpy, Python), so that a run killed
  mid-epoch and resumed draws the same masks, noise and dropout as one that was never interrupted.
- :class:`ResilientBrain` is SpeechBrain's ``Brain`` with that state among its recoverables, a collate function
  that leaves out utterances whose audio failed to decode (:func:`collate_decoded`), and batches left empty by
  that skipped without touching the running loss. A rerun's hyperparameters become the folder's
  ``hyperparams.yaml`` only once it has passed a validation (:func:`write_run_hyperparams`).
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

    - The random generators are checkpointed with the other recoverables (as ``random_state``; optional on
      load, so checkpoints written before it existed still resume), and so are the running totals of the
      epoch (``epoch_totals``): a subclass with running metrics overrides :meth:`epoch_totals` and
      :meth:`restore_epoch_totals` and calls ``super().on_stage_start`` after resetting them.
    - Data loaders collate with :func:`collate_decoded` unless a ``collate_fn`` is given; a batch left with no
      utterance is skipped (no forward pass, no optimizer step, running loss unchanged).
    - After each validation, a rerun's pending ``hyperparams.yaml`` (see :func:`write_run_hyperparams`)
      replaces the folder's.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
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
    """Creates the experiment folder (SpeechBrain's logging, ``env.log``) and writes the resolved hyperparameters.

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
