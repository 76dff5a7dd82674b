"""Atomic, durable file writes: the one way the zoo writes a file that someone may read.

A reader sees the old content or the new one, never a part; a crash or a kill at any point leaves the
old file (or no file, for a first write) and at most a hidden `.<name>.<random>.tmp` beside it. The
new content goes to a temporary file in the target's folder, is flushed and fsynced, renamed over the
target with `os.replace` (atomic on POSIX and Windows), and the folder is fsynced so that the rename
itself survives a power cut.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"


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
