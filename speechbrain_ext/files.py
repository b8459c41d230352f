"""Writing files and folders so that a reader never sees half of one, and one run per output folder."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

LOCK_FILE = ".run.lock"
STAGING_PREFIX = ".incomplete-"
REPLACED_PREFIX = ".replaced-"


@contextmanager
def atomic_writer(path: Path, binary: bool = False) -> Iterator[IO]:
    """Opens a temporary file beside `path` (text, or bytes with ``binary``) and renames it to `path`
    on success: the one way files are written here (manifests, caches, encoder weights, settings)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yields an empty staging folder beside ``path``; on success it becomes ``path`` (replacing the folder there).

    ``path`` is therefore always either the previous complete folder or the new complete one. What an
    interrupted call leaves (a staging folder; the previous folder set aside between the two renames) is
    cleaned up, or put back, by the next call.
    """
    path = Path(path)
    staging = path.with_name(STAGING_PREFIX + path.name)
    replaced = path.with_name(REPLACED_PREFIX + path.name)
    if replaced.is_dir() and not path.exists():  # interrupted between the two renames: the old one is whole
        os.rename(replaced, path)
    shutil.rmtree(replaced, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for file in staging.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    if path.exists():
        os.rename(path, replaced)
    os.rename(staging, path)
    shutil.rmtree(replaced, ignore_errors=True)


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), to tell it from a later one with its PID."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return started is None or _process_start(pid) in (None, started)


_HELD: dict[Path, Path] = {}


def lock_folder(folder: str | Path) -> Path:
    """Makes this process the one run writing in ``folder`` until it exits; returns the lock file.

    A second process that asks for the same folder gets a RuntimeError naming the first one's PID and host.
    A lock left by a process that no longer runs (killed, crashed) is taken over with a warning. Asking again
    from the same process is a no-op.
    """
    folder = Path(folder).resolve()
    if folder in _HELD:
        return _HELD[folder]
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    me = f"{os.getpid()} {socket.gethostname()} {_process_start(os.getpid())}\n"
    for _ in range(3):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            fields = lock.read_text(errors="replace").split()
            try:
                pid, host = int(fields[0]), fields[1]
            except (IndexError, ValueError):
                pid, host = None, None
            started = fields[2] if len(fields) > 2 and fields[2] != "None" else None
            if pid is not None and (host != socket.gethostname() or _alive(pid, started)):
                raise RuntimeError(
                    f"{folder} is in use by another run (PID {pid} on {host}, lock file {lock}): wait for it to "
                    "finish or give another output_folder; if that process is gone, delete the lock file"
                ) from None
            logger.warning("taking over %s: the run that held it (PID %s) no longer runs", lock, pid)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(me)
        _HELD[folder] = lock
        atexit.register(_release, folder, me)
        return lock
    raise RuntimeError(f"could not take the lock {lock}: another run keeps creating it")


def _release(folder: Path, me: str) -> None:
    lock = _HELD.pop(folder, None)
    try:
        if lock is not None and lock.read_text() == me:
            lock.unlink()
    except OSError:
        pass
