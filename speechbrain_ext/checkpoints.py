"""Checkpoints that are either complete or absent.

SpeechBrain's ``Checkpointer`` writes ``CKPT.yaml`` (the file that marks a folder as a checkpoint) before the
parameter files. A process killed during a save therefore leaves a folder that the next run takes as the latest
checkpoint and fails to load (``EOFError`` on a half-written ``optimizer.ckpt``): the run cannot resume, although
older checkpoints were complete. ``AtomicCheckpointer`` writes every file into a staging folder, flushes it to disk
and only then renames it to its ``CKPT+...`` name, so the folder that resumption picks is always whole.

A checkpoint can still break after it was written (a disk error, a truncated copy, an edited ``CKPT.yaml``).
Resumption then falls back: it loads the newest (or best) checkpoint that loads, names every one that does not
(path and error) in the log, and moves those aside as ``corrupt-CKPT+...`` so that they are kept for inspection
but never picked again. When none loads, it raises with every path and error.

Each checkpoint records the SHA-256 of each of its files (``checksums.sha256``, the format of ``sha256sum -c``).
Nothing of a checkpoint is applied before all of its files are verified: a flipped bit or an emptied file makes
the checkpoint broken, never a model that loads. A fallback starts from a clean slate (no data loader position or
random state left over from the broken checkpoint). A read that fails with an ``OSError`` (a network file
system's hiccup) is tried again before the checkpoint counts as broken. A checkpoint whose modules or optimizers
hold a NaN or an infinity is never written: the save raises, naming the tensor and the optimizer step, and the
last good checkpoint stays the one to resume from.

Use it wherever SpeechBrain's ``Checkpointer`` goes::

    checkpointer: !new:speechbrain_ext.checkpoints.AtomicCheckpointer
        checkpoints_dir: !ref <save_folder>
        recoverables: {model: !ref <model>}
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from speechbrain.utils.checkpoints import (
    DEFAULT_SAVE_HOOKS,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    get_default_hook,
)
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

# Not starting with "CKPT", so SpeechBrain never lists a staging folder as a checkpoint.
STAGING_PREFIX = ".incomplete-"
REPLACED_PREFIX = "replaced-"
CORRUPT_PREFIX = "corrupt-"
CHECKSUM_FILE = "checksums.sha256"
READ_ATTEMPTS = 3  # reads that fail with an OSError are tried this many times
RETRY_DELAY_S = 0.5


class BrokenCheckpoint(ValueError):
    """A checkpoint whose files are not the ones that were saved (checksum mismatch, missing or extra file)."""


class NonFiniteState(RuntimeError):
    """A save refused: a module or optimizer holds NaN or infinite values."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensors(value, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a (nested) state dict, with its dotted name."""
    if torch.is_tensor(value):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{name}.{index}")


def non_finite_tensors(state: dict, name: str) -> list[str]:
    """Names of the floating-point tensors of ``state`` (a ``state_dict``) that hold a NaN or an infinity.

    Example
    -------
    >>> non_finite_tensors({"w": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}, "model")
    ['model.b']
    """
    return [key for key, tensor in _tensors(state, name)
            if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all())]


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself, so a rename after it publishes data on disk."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AtomicCheckpointer(Checkpointer):
    """SpeechBrain's ``Checkpointer`` whose checkpoints appear only once every file is written.

    Same arguments, recovery, selection and deletion as ``speechbrain.utils.checkpoints.Checkpointer``; only
    ``save_checkpoint`` (staging folder, fsync, rename) and recovery from a broken checkpoint differ: see the
    module docstring. Staging folders left by an interrupted save are removed, with a warning, by the next save.
    """

    def list_checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint whose ``CKPT.yaml`` reads as a mapping; the others are reported and left out."""
        checkpoints = []
        self.unlisted = {}  # folder -> why it is not a checkpoint
        for folder in self._list_checkpoint_dirs():
            try:
                with open(folder / METAFNAME, encoding="utf-8") as handle:
                    meta = yaml.safe_load(handle)
                if not isinstance(meta, dict) or "end-of-epoch" not in meta:
                    raise ValueError(f"{METAFNAME} is not a checkpoint description: {str(meta)[:80]!r}")
            except (OSError, ValueError, yaml.YAMLError) as err:
                logger.error(f"Ignoring the broken checkpoint {folder}: {type(err).__name__}: {err}")
                self.unlisted[folder] = err
                continue
            paramfiles = {path.stem: path for path in folder.iterdir() if path.suffix == PARAMFILE_EXT}
            checkpoints.append(Checkpoint(folder, meta, paramfiles))
        return checkpoints

    def recover_if_possible(
        self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None
    ) -> Checkpoint | None:
        """Loads the first checkpoint, in SpeechBrain's order of preference, that loads; None if there is none.

        Checkpoints before it that fail to load are logged with their path and error and, once an older one has
        loaded, moved aside (``corrupt-CKPT+...``). If every checkpoint fails (a model that no longer matches its
        checkpoints, say), nothing is moved and the errors are raised together.
        """
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate)
        failures = []
        for checkpoint in candidates:
            try:
                self._load_with_retries(checkpoint)
            except Exception as err:  # noqa: BLE001 - any failure to read or apply a file: try an older one
                logger.error(f"Could not load the checkpoint {checkpoint.path}: {type(err).__name__}: {err}")
                failures.append((checkpoint, err))
                continue
            for folder, err in [*self.unlisted.items(), *((c.path, e) for c, e in failures)]:
                self._set_aside(folder, err)
            return checkpoint
        if failures:
            details = "\n".join(f"  {c.path}: {type(e).__name__}: {e}" for c, e in failures)
            raise RuntimeError(f"no checkpoint in {self.checkpoints_dir} loads:\n{details}") from failures[0][1]
        logger.info("Would load a checkpoint here, but none found yet.")
        return None

    def _load_with_retries(self, checkpoint: Checkpoint) -> None:
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                self.load_checkpoint(checkpoint)
                return
            except OSError as err:
                if isinstance(err, FileNotFoundError) or attempt == READ_ATTEMPTS:
                    raise
                logger.warning(f"Reading the checkpoint {checkpoint.path} failed ({type(err).__name__}: {err}); "
                               f"trying again ({attempt + 1} of {READ_ATTEMPTS})")
                time.sleep(RETRY_DELAY_S)

    def load_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Verifies every file of ``checkpoint`` against its checksums, then applies all of its recoverables.

        Nothing is applied when a file differs from what was saved (:class:`BrokenCheckpoint`). Before applying,
        what a previous load may have left pending (a data loader's position) is cleared, so that nothing of an
        earlier, broken checkpoint survives a fallback to this one.
        """
        self.verify(checkpoint)
        for obj in self.recoverables.values():
            if hasattr(obj, "_speechbrain_recovery_skip_to"):  # SaveableDataLoader
                obj._speechbrain_recovery_skip_to = None
        super().load_checkpoint(checkpoint)

    @staticmethod
    def verify(checkpoint: Checkpoint) -> None:
        """Raises :class:`BrokenCheckpoint` unless the files of ``checkpoint`` are exactly those saved.

        A checkpoint without a checksum file (one written by SpeechBrain's own ``Checkpointer``) is loaded
        unverified, with a warning.
        """
        folder = Path(checkpoint.path)
        listing = folder / CHECKSUM_FILE
        if not listing.exists():
            logger.warning(f"The checkpoint {folder} has no {CHECKSUM_FILE}: loaded without verifying its files")
            return
        expected = {}
        for line in listing.read_text(encoding="utf-8").splitlines():
            digest, _, name = line.partition("  ")
            if len(digest) != 64 or not name:
                raise BrokenCheckpoint(f"{listing} has a malformed line: {line[:100]!r}")
            expected[name] = digest
        present = {path.name for path in folder.iterdir() if path.is_file() and path.name != CHECKSUM_FILE}
        missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
        if missing or extra:
            raise BrokenCheckpoint(f"{folder}: files missing {missing}, files not saved with it {extra}")
        differing = [name for name, digest in expected.items() if _sha256(folder / name) != digest]
        if differing:
            raise BrokenCheckpoint(f"{folder}: {', '.join(differing)} changed since the checkpoint was saved "
                                   "(checksum mismatch)")

    def check_finite(self) -> None:
        """Raises :class:`NonFiniteState` if a module or optimizer among the recoverables holds NaN or inf."""
        bad = []
        for key, obj in self.recoverables.items():
            if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
                bad += non_finite_tensors(obj.state_dict(), key)
        if bad:
            step = getattr(self.recoverables.get("brain"), "optimizer_step", None)
            where = f" at optimizer step {step}" if step is not None else ""
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteState(
                f"not saving a checkpoint{where}: {shown} hold NaN or infinite values. Training diverged or read "
                f"non-finite data; the last checkpoint in {self.checkpoints_dir} stays the one to resume from "
                "(lower the learning rate, check the audio)"
            )

    def _set_aside(self, folder: Path, err: Exception) -> None:
        if not if_main_process() or not folder.exists():
            return
        target = folder.with_name(CORRUPT_PREFIX + folder.name)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(folder, target)
        logger.warning(f"Moved the checkpoint that fails to load ({type(err).__name__}) aside to {target}; "
                       f"resumed from an older one")

    def save_checkpoint(
        self, meta: dict | None = None, end_of_epoch: bool = True, name: str | None = None,
        verbosity: int = logging.INFO,
    ) -> Checkpoint | None:
        self.check_finite()
        final_dir = staging_dir = None
        if if_main_process():
            final_dir = self._new_checkpoint_dirpath() if name is None else self._custom_checkpoint_dirpath(name)
            self.remove_incomplete()
            staging_dir = final_dir.with_name(STAGING_PREFIX + final_dir.name)
            staging_dir.mkdir(parents=True)
        staging_dir = ddp_broadcast(staging_dir, src=0)

        for key, obj in self.recoverables.items():
            hook = self.custom_save_hooks.get(key) or get_default_hook(obj, DEFAULT_SAVE_HOOKS)
            if hook is None:
                raise RuntimeError(f"Don't know how to save {type(obj)} ('{key}'): register a save hook for it.")
            hook(obj, staging_dir / f"{key}{PARAMFILE_EXT}")
        ddp_barrier()  # every process has written its part before the main one publishes the folder
        if not if_main_process():
            return None

        saved_meta = self._save_checkpoint_metafile(staging_dir / METAFNAME, meta or {}, end_of_epoch)
        sums = "".join(f"{_sha256(path)}  {path.name}\n" for path in sorted(staging_dir.iterdir()) if path.is_file())
        (staging_dir / CHECKSUM_FILE).write_text(sums, encoding="utf-8")
        _fsync_tree(staging_dir)
        if final_dir.exists():  # a named checkpoint saved again: swap, so one complete version always exists
            replaced = final_dir.with_name(STAGING_PREFIX + REPLACED_PREFIX + final_dir.name)
            shutil.rmtree(replaced, ignore_errors=True)
            os.rename(final_dir, replaced)
            os.rename(staging_dir, final_dir)
            shutil.rmtree(replaced)
        else:
            os.rename(staging_dir, final_dir)
        _fsync_dir(final_dir.parent)
        kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, f"Saved an {kind} checkpoint in {final_dir}")
        paramfiles = {key: final_dir / f"{key}{PARAMFILE_EXT}" for key in self.recoverables}
        return Checkpoint(final_dir, saved_meta, paramfiles)

    def remove_incomplete(self) -> int:
        """Delete staging folders left by interrupted saves; returns how many there were.

        A named checkpoint caught between its swap's two renames gets its previous, complete version back.
        """
        replaced_prefix = STAGING_PREFIX + REPLACED_PREFIX
        for replaced in self.checkpoints_dir.glob(replaced_prefix + "*"):
            original = replaced.with_name(replaced.name[len(replaced_prefix):])
            if not original.exists():  # interrupted between the two renames: the old version is the complete one
                os.rename(replaced, original)
        leftovers = [path for path in self.checkpoints_dir.glob(STAGING_PREFIX + "*") if path.is_dir()]
        for path in leftovers:
            shutil.rmtree(path)
        if leftovers:
            logger.warning(f"Removed {len(leftovers)} incomplete checkpoint folder(s) left by an interrupted save "
                           f"in {self.checkpoints_dir}: {', '.join(p.name for p in leftovers)}")
        return len(leftovers)
