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

Use it wherever SpeechBrain's ``Checkpointer`` goes::

    checkpointer: !new:speechbrain_ext.checkpoints.AtomicCheckpointer
        checkpoints_dir: !ref <save_folder>
        recoverables: {model: !ref <model>}
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

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
                self.load_checkpoint(checkpoint)
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
