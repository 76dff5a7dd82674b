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


# Files that move whole folders or file sets into place (a checkpoint swap, a hub push's staged revision,
# an OpenVINO export's .bin then .xml): their own renames are the atomic step; every single file anywhere
# else is written through zoo.atomic.
# files that write into a temporary file or folder of their own and rename it into place (reviewed by hand)
FOLDER_SWAPS = {"compress/checkpoint.py", "compress/compressed_tensors.py", "hub/local.py", "hub/remote.py",
                "zoo/atomic.py", "zoo/runtimes/export.py"}


def test_every_file_write_of_the_package_goes_through_zoo_atomic() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\.write_text\(|\.write_bytes\(|savefig\(|np\.save|"
                         r"open\([^)]*[\"'][wa]b?[\"']")
    offenders = []
    for folder in ("zoo", "compress", "evaluate", "hub", "model_cards"):
        for path in (root / folder).rglob("*.py"):
            rel = path.relative_to(root).as_posix()
            if rel in FOLDER_SWAPS:
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            for number, line in enumerate(lines, 1):
                code = line.split("#")[0]
                inside = "atomic_path" in " ".join(lines[max(0, number - 3):number])  # this or the 2 lines above
                if pattern.search(code) and not inside:
                    offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "write these through zoo.atomic:\n" + "\n".join(offenders)
