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
    installed beside it: each import finds its own package. (Where HF's package is installed comes from its
    distribution's metadata: `python -m pytest` in the checkout puts the repository's own `evaluate/`
    folder first on this process's path.)"""
    from importlib.metadata import distribution

    hf_init = Path(distribution("evaluate").locate_file("evaluate/__init__.py")).resolve()
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
    assert Path(hf_file).resolve() == hf_init
    assert Path(ours_file) == target / "zoo" / "evaluate" / "__init__.py"
    assert hf_has_load == "True"


def _declared(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower().replace("_", "-") for req in requirements}


def _third_party_imports(folders: list[Path]) -> set[str]:
    """Top-level names imported anywhere in `folders`' Python files (module level or inside functions)."""
    import ast

    names: set[str] = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "zoo"}


@pytest.mark.parametrize("folders, extra", [
    (("zoo", "hub", "compress", "evaluate", "model_cards"), None),
    (("tests",), "test"),
])
def test_every_imported_package_is_declared(folders: tuple[str, ...], extra: str | None) -> None:
    """Each third-party module the code imports comes from a distribution pyproject.toml declares (the
    package's dependencies and its feature extras, such as `compressed-tensors`; for the tests, those plus
    the `test` extra)."""
    import importlib.metadata
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"])
    for name, requirements in project["optional-dependencies"].items():
        if name != "test" or extra == "test":
            declared |= _declared(requirements)
    providers = importlib.metadata.packages_distributions()
    local = {path.stem for path in (ROOT / "tests").glob("*.py")}  # helper modules beside the tests
    undeclared = {}
    for name in sorted(_third_party_imports([ROOT / f for f in folders]) - local):
        dists = {d.lower().replace("_", "-") for d in providers.get(name, [name])}
        if not dists & declared:
            undeclared[name] = sorted(dists)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_pyproject_lists_every_package_under_zoo() -> None:
    """setuptools installs only the packages pyproject lists: every folder of `zoo/` with an
    `__init__.py` (the family sub-packages included) must be there."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "zoo").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
