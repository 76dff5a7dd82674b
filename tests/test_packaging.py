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
    for family in ("vision", "translation", "mcbert", "wavernn", "invertible"):
        for module in ("__init__", "entries", "model", "task", "data"):
            assert f"zoo/families/{family}/{module}.py" in names


def test_installs_beside_huggingface_evaluate(wheel: Path, tmp_path: Path) -> None:
    """Hugging Face's `evaluate` (a test dependency, installed in this environment) and the zoo's wheel
    installed beside it: each import finds its own package."""
    import evaluate

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = (
        "import evaluate, zoo.evaluate, zoo.evaluate.report; "
        "print(evaluate.__file__); print(zoo.evaluate.__file__); print(callable(evaluate.load))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hf_file, ours_file, hf_has_load = result.stdout.split()
    assert Path(hf_file) == Path(evaluate.__file__)
    assert Path(ours_file) == target / "zoo" / "evaluate" / "__init__.py"
    assert hf_has_load == "True"


def test_pyproject_lists_every_package_under_zoo() -> None:
    """setuptools installs only the packages pyproject lists: every folder of `zoo/` with an
    `__init__.py` (the family sub-packages included) must be there."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "zoo").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
