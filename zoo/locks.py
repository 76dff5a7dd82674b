"""Cross-process file locks of the zoo, and scratch folders that a killed process cannot leave forever.

- `folder_lock(folder)`: the lock of one checkpoint folder (a cache key, a trained base), the file
  `.<name>.lock` beside it. `save_checkpoint` holds it while it writes and swaps the folder in (and
  while it puts back a previous checkpoint a killed save moved aside); `zoo.load` holds it while it
  derives or trains what goes there (`derivation_lock`), so N processes loading one missing variant
  derive it once: the others wait, then load what the first wrote. One lock object per path and
  process (filelock's singletons), reentrant within a thread: a nested load that takes the same lock
  again does not wait for itself. Locks are taken in the order of what depends on what (a variant's,
  then its sparse parent's, then its base's, then the base its training starts from), never the other
  way, so processes cannot deadlock on one another.
- `derivation_lock(folder)`: `folder_lock` on rank 0 of a distributed run (or the only process) and
  nothing on the other ranks, which train collectively with rank 0 and read only what it decided
  (zoo.distributed): were they to wait for rank 0's lock, rank 0 would wait for them in the collective.
- `scratch_folder(root, prefix)`: a fresh folder under `root`, removed on exit; one that a killed
  process left is removed by the next call under `root` (its lock is free once its owner is dead).
"""
from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_SUFFIX = ".lock"


def lock_for(path: Path) -> FileLock:
    """This process's lock on the file `path` (one object per path: reentrant, never two fds of one process
    waiting for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), is_singleton=True)


def try_acquire(lock: FileLock) -> bool:
    """Takes `lock` if no other process (or thread) holds it, without waiting; whether it did."""
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return False
    return True


def folder_lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


def folder_lock(folder: Path) -> FileLock:
    """The lock of the checkpoint folder `folder` (see the module doc)."""
    return lock_for(folder_lock_path(Path(folder)))


@contextlib.contextmanager
def derivation_lock(folder: Path) -> Iterator[None]:
    """Held while this process (rank 0 of a distributed run) makes what goes into `folder`."""
    from zoo.distributed import is_main

    if not is_main():
        yield
        return
    with folder_lock(folder):
        yield


@contextlib.contextmanager
def scratch_folder(root: Path, prefix: str) -> Iterator[Path]:
    """A new empty folder `root/<prefix><random>`, removed on exit. Its lock, `<folder>.lock`, is held
    from before it exists until it is gone, so `sweep_scratch` (run first) removes only the folders of
    processes that died."""
    root.mkdir(parents=True, exist_ok=True)
    sweep_scratch(root, prefix)
    folder = root / f"{prefix}{uuid.uuid4().hex[:12]}"
    lock = lock_for(folder.with_name(folder.name + LOCK_SUFFIX))
    with lock:
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    Path(lock.lock_file).unlink(missing_ok=True)


def sweep_scratch(root: Path, prefix: str) -> list[Path]:
    """Removes the scratch folders under `root` whose owner is gone (their lock is free); returns them."""
    swept = []
    for folder in sorted(root.glob(f"{prefix}*")):
        if not folder.is_dir():
            continue
        lock = lock_for(folder.with_name(folder.name + LOCK_SUFFIX))
        if not try_acquire(lock):
            continue  # a live push or write is using it
        try:
            if lock.lock_counter > 1:  # this very process holds it: its own folder, in use
                continue
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder)
        finally:
            lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)
    return swept
