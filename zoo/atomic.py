"""Atomic, durable file writes: the one way the zoo writes a file that someone may read.

A reader sees the old content or the new one, never a part; a crash or a kill at any point leaves the
old file (or no file, for a first write) and at most a hidden `.<name>.<random>.tmp` beside it. The
new content goes to a temporary file in the target's folder, is flushed and fsynced, renamed over the
target with `os.replace` (atomic on POSIX and Windows), and the folder is fsynced so that the rename
itself survives a power cut.

Whole folders (a checkpoint) are swapped in by `swap_in`: written as `.<name>.tmp-<random>` beside the
target, then renamed into place; an existing target is first moved aside to `.<name>.old-<random>`. A
kill between those two renames leaves no folder at the target's path, only its `.old-` copy:
`recover_folder` (run by the next read or write of the path) puts it back and sweeps the leftovers of
killed swaps, holding the folder's lock (`zoo.locks.folder_lock`) as every swap does, so it never takes a
swap in flight for a dead one. `is_leftover` tells such leftovers from the folders they belong beside.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from zoo.locks import LOCK_SUFFIX, folder_lock, try_acquire

TMP_SUFFIX = ".tmp"
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{12}")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flushes a file's or a folder's metadata and content to disk (folders: a no-op where the OS
    cannot open them, as on Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[Path]:
    """Yields a temporary path beside `path` for the caller to write (by any library: safetensors,
    matplotlib, numpy); on a clean exit it is fsynced and renamed over `path`, on an error removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp creates 0600
        fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8, newlines written as given (no platform translation)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: object, *, indent: int | None = 2,
                      sort_keys: bool = False) -> Path:
    """`data` as JSON (NaN and infinities refused: they are not JSON), with a final newline."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=False)
    return atomic_write_text(path, text + "\n")


# Folder swaps -------------------------------------------------------------------------------------

def staging_folder(folder: Path) -> Path:
    """A new empty `.<name>.tmp-<random>` folder beside `folder`, for the caller to fill and `swap_in`."""
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def swap_in(tmp: Path, folder: Path) -> None:
    """Renames the finished folder `tmp` to `folder`, the caller holding `folder_lock(folder)`. An existing
    `folder` is moved aside first and put back on an error; after a kill, by `recover_folder`."""
    fsync_path(tmp)
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:12]}"
    os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def is_leftover(name: str) -> bool:
    """Whether a file name is one a folder swap leaves beside its target: an unfinished `.<name>.tmp-<random>`
    folder, a `.<name>.old-<random>` one moved aside, or the target's `.<name>.lock`."""
    return _LEFTOVER.fullmatch(name) is not None or (name.startswith(".") and name.endswith(LOCK_SUFFIX))


def leftover_target(name: str) -> str | None:
    """The name of the folder a `.tmp-`/`.old-` leftover belongs beside; None for any other name."""
    match = _LEFTOVER.fullmatch(name)
    return match["name"] if match else None


def recover_folder(folder: str | os.PathLike[str], *, complete: str, blocking: bool = True) -> bool:
    """After a killed swap: puts the previous `folder` back (when it is missing and a `.old-` copy holding
    the file `complete` is beside it) and removes the `.tmp-`/`.old-` leftovers. Takes the folder's lock;
    with `blocking=False` does nothing while another process holds it (a swap in flight). Cheap when
    there are no leftovers (no lock taken). Returns whether `folder/complete` is a file now."""
    folder = Path(folder)
    if folder.parent.is_dir() and (_leftovers(folder, "old") or _leftovers(folder, "tmp")):
        lock = folder_lock(folder)
        if blocking:
            lock.acquire()
        if blocking or try_acquire(lock):
            try:
                tidy_locked(folder, complete=complete)
            finally:
                lock.release()
    return (folder / complete).is_file()


def tidy_locked(folder: Path, *, complete: str) -> None:
    """`recover_folder`'s work, the caller holding `folder_lock(folder)`: no swap of it is in flight."""
    if not folder.exists():
        moved = [p for p in _leftovers(folder, "old") if (p / complete).is_file()]
        if moved:
            os.replace(moved[-1], folder)  # the newest, should there be several
            fsync_path(folder.parent)
    for leftover in [*_leftovers(folder, "tmp"), *_leftovers(folder, "old")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _leftovers(folder: Path, kind: str) -> list[Path]:
    """The `.tmp-` or `.old-` folders beside `folder`, oldest first."""
    import glob

    found = []
    for path in folder.parent.glob(f".{glob.escape(folder.name)}.{kind}-*"):
        try:
            if _LEFTOVER.fullmatch(path.name) and path.is_dir():
                found.append((path.stat().st_mtime_ns, path))
        except FileNotFoundError:  # removed meanwhile by the process holding the lock
            continue
    return [path for _, path in sorted(found)]
