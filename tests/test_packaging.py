"""The distribution installs one top-level package, `zoo`, and coexists with Hugging Face's `evaluate`."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )
    (path,) = out.glob("the_zoo-*.whl")
    return path


def test_wheel_installs_only_the_zoo_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"zoo"}
    for sub in ("hub", "compress", "evaluate", "model_cards"):
        assert f"zoo/{sub}/__init__.py" in names


def test_installs_beside_huggingface_evaluate(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel), "evaluate"],
        capture_output=True, text=True,
    )
    if install.returncode != 0 and "evaluate" in install.stderr and "No matching distribution" in install.stderr:
        pytest.skip("Hugging Face's evaluate cannot be downloaded here")
    assert install.returncode == 0, install.stderr
    probe = (
        "import evaluate, zoo.evaluate, zoo.evaluate.report as r; "
        "print(evaluate.__file__); print(zoo.evaluate.__file__); print(hasattr(evaluate, 'load'))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                            cwd=tmp_path, check=True)
    hf_file, ours_file, hf_has_load = result.stdout.split()
    assert Path(hf_file) == target / "evaluate" / "__init__.py"
    assert Path(ours_file) == target / "zoo" / "evaluate" / "__init__.py"
    assert hf_has_load == "True"
