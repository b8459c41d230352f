"""What every training loop of the package shares: exact resumption, batches that survive bad audio, a run
folder whose ``hyperparams.yaml`` always describes the run that trained what is in it, dynamic batches and
option checks.

- :class:`RandomState` checkpoints the random generators (torch, CUDA, numpy, Python), so that a run killed
  mid-epoch and resumed draws the same masks, noise and dropout as one that was never interrupted.
- :class:`ResilientBrain` is SpeechBrain's ``Brain`` with that state among its recoverables, a collate function
  that leaves out utterances whose audio failed to decode (:func:`collate_decoded`), and batches left empty by
  that skipped without touching the running loss. Its samplers are told the epoch (a new order each epoch, the
  same order on a rerun), and a batch whose loss is not finite is skipped. A rerun's hyperparameters become the
  folder's ``hyperparams.yaml`` only once it has passed a validation (:func:`write_run_hyperparams`), which also
  makes the run the only one writing in its folder (:func:`speechbrain_ext.files.lock_folder`).
- :func:`check_training_options` refuses bad batching, schedule and optimizer settings before any data work,
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
from speechbrain.utils.run_opts import RunOptions

from speechbrain_ext.files import atomic_writer, lock_folder

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
        """The generators' states as tensors and plain data (what ``torch.load(weights_only=True)`` reads)."""
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def restore(state: dict) -> None:
        torch.set_rng_state(state["torch"])
        numpy_state = state["numpy"]
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                             numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])

    @mark_as_saver
    def save(self, path: Path) -> None:
        torch.save(self.capture(), path)

    @mark_as_loader
    def load(self, path: Path, end_of_epoch: bool) -> None:
        state = torch.load(path, weights_only=True)  # tensors and plain data only: a crafted pickle is refused
        if end_of_epoch:
            self.pending = None
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
        self.pending = None if end_of_epoch else torch.load(path, weights_only=True)


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
    - Every epoch, the training loader's sampler (a ``DynamicBatchSampler``, a ``ReproducibleRandomSampler``,
      DDP's wrappers) is told the epoch before the loader is iterated: each epoch has its own order, and a rerun
      (or a run resumed mid-epoch) the same one. A resumed data loader position past the end of the epoch is
      an error (the data or the batching changed since the checkpoint was saved).
    - A batch whose loss is NaN or infinite is skipped (no backward pass, the gradients of its accumulation
      window dropped, running loss unchanged) with a warning naming its utterances, up to SpeechBrain's
      ``nonfinite_patience`` per epoch; then training stops with an error naming the optimizer step. In DDP
      every process skips the batch when one of them meets a non-finite loss.
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
        self._epoch, self._batch_ids = None, None  # named in the warning about a non-finite loss
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
            _all_processes_finite(torch.ones((), device=self.device))  # the others' check of this batch's loss
            return SKIPPED_BATCH_LOSS
        self._batch_ids = getattr(batch, "id", None)  # named if its loss is not finite
        try:
            return super().fit_batch(batch)
        except _NonFiniteLoss:
            self.zero_grad(set_to_none=True)  # the window's gradients so far go with it
            return SKIPPED_BATCH_LOSS

    def check_loss_isfinite(self, loss):
        """Skips the batch (see the class docstring) when the loss is not finite on any process."""
        if _all_processes_finite(torch.isfinite(loss.detach()).all().float()):
            return
        self.nonfinite_count += 1
        ids = self._batch_ids
        batch = f" (utterances {', '.join(map(str, ids[:10]))}{' ...' if len(ids) > 10 else ''})" if ids else ""
        where = f"at optimizer step {self.optimizer_step + 1}, batch {self.step} of epoch {self._epoch}"
        if self.nonfinite_count > self.nonfinite_patience:
            raise ValueError(
                f"the loss is not finite {where}{batch}, the {self.nonfinite_count}th time this epoch "
                f"(nonfinite_patience={self.nonfinite_patience}): training stopped. Check that audio for NaN, "
                "inf or huge samples, or lower the learning rate; the last checkpoint holds finite weights"
            )
        logger.warning("the loss is not finite %s%s: batch skipped (%d of nonfinite_patience=%d this epoch)",
                       where, batch, self.nonfinite_count, self.nonfinite_patience)
        raise _NonFiniteLoss

    def _fit_train(self, train_set, epoch, enable):
        self._epoch = epoch
        sampler = _epoch_sampler(train_set)
        if sampler is not None:  # before the position check: the epoch's batches depend on it
            sampler.set_epoch(epoch)
        skip_to = getattr(train_set, "_speechbrain_recovery_skip_to", None)
        if skip_to is not None and skip_to > len(train_set):
            raise ValueError(
                f"the checkpoint resumes epoch {epoch} after batch {skip_to}, but the epoch has {len(train_set)} "
                "batches: the data or the batching (seconds_per_batch, num_buckets, batch_size) changed since it "
                "was saved. Restore them, or move the checkpoint aside to start the epoch again"
            )
        super()._fit_train(train_set, epoch, enable)

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


class _NonFiniteLoss(Exception):
    """Raised by ResilientBrain.check_loss_isfinite to skip the rest of a batch's fit_batch."""


def _all_processes_finite(finite: torch.Tensor) -> bool:
    """True if ``finite`` (1.0 or 0.0) is 1.0 on every process of the DDP group (on this one without DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite)


def _epoch_sampler(loader):
    """The sampler of ``loader`` (a DataLoader, or SpeechBrain's LoopedLoader) that takes ``set_epoch``, if any."""
    loader = getattr(loader, "loader", loader)
    for name in ("batch_sampler", "sampler"):
        sampler = getattr(loader, name, None)
        if hasattr(sampler, "set_epoch"):
            return sampler
        inner = getattr(sampler, "sampler", None)  # torch's BatchSampler around a sampler
        if hasattr(inner, "set_epoch"):
            return inner
    return None


def write_run_hyperparams(output_folder: str | Path, hparams_file: str | Path, overrides: str | dict) -> Path:
    """Makes this process the one run of the experiment folder (:func:`speechbrain_ext.files.lock_folder`: a second
    run there refuses, naming the first one's PID), creates it (SpeechBrain's logging, ``env.log``, a copy of
    the running script) and writes the resolved hyperparameters.

    A first run writes ``hyperparams.yaml``. A rerun into a folder that has one writes
    ``hyperparams.pending.yaml`` instead, which :class:`ResilientBrain` promotes after its first validation:
    a rerun that fails (a typo, a missing file, a crash) never overwrites the description of what was trained.
    Returns the file written.
    """
    if if_main_process():
        lock_folder(output_folder)
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


POSITIVE_NUMBERS = ("seconds_per_batch", "avoid_if_longer_than", "lr", "lr_weights")
POSITIVE_INTEGERS = ("num_buckets", "grad_accumulation_factor", "number_of_epochs", "valid_batch_size",
                     "log_interval", "warmup_steps", "optimizer_step_limit")


def check_training_options(hparams: dict, run_opts: RunOptions | dict | None = None) -> None:
    """One clear ValueError for the first bad batching, schedule or optimizer setting, before any data work.

    Checks those of ``seconds_per_batch``, ``avoid_if_longer_than``, ``lr``, ``lr_weights`` (positive numbers),
    ``num_buckets``,
    ``grad_accumulation_factor``, ``number_of_epochs``, ``valid_batch_size``, ``log_interval``, ``warmup_steps``,
    ``optimizer_step_limit`` (positive integers; the limit may be None) and ``avoid_if_shorter_than`` (at least
    0, below ``avoid_if_longer_than``) that ``hparams`` holds. ``run_opts`` (SpeechBrain's run options, or a
    dict) adds the options given on the command line that SpeechBrain takes as run options
    (``--grad_accumulation_factor``, ``--optimizer_step_limit``); they win over ``hparams``, as in ``Brain``.

    Example
    -------
    >>> check_training_options({"seconds_per_batch": 400, "num_buckets": 150})
    >>> check_training_options({"num_buckets": 0})
    Traceback (most recent call last):
    ...
    ValueError: num_buckets must be a positive integer, got 0
    >>> check_training_options({}, {"optimizer_step_limit": "-5"})
    Traceback (most recent call last):
    ...
    ValueError: optimizer_step_limit must be a positive integer, got '-5'
    """
    options = dict(hparams)
    if isinstance(run_opts, dict):
        options.update(run_opts)
    elif run_opts is not None:
        options.update({key: getattr(run_opts, key) for key in getattr(run_opts, "overridden_args", ())})
    for key in POSITIVE_NUMBERS:
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    for key in POSITIVE_INTEGERS:
        value = options.get(key)
        number = value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():  # SpeechBrain's text step limit
            number = int(value)
        if value is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    shortest, longest = options.get("avoid_if_shorter_than", 0.0), options.get("avoid_if_longer_than")
    if not isinstance(shortest, (int, float)) or shortest < 0 or (longest is not None and shortest >= longest):
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
