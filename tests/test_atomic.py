"""zoo.atomic: the one helper every file write of the zoo goes through."""
from __future__ import annotations

import math
import stat
from pathlib import Path

import pytest

from zoo.atomic import atomic_path, atomic_write_json, atomic_write_text


def test_write_replaces_content_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "first\n")
    atomic_write_text(target, "second\r\n")
    assert target.read_bytes() == b"second\r\n"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_json_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_json(target, {"top1": 0.5})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"top1": math.nan})
    assert target.read_text() == '{\n  "top1": 0.5\n}\n'
