"""The README's code runs (Composer style): its Python blocks are executed, its recipe YAML parses,
and its two commands are the ones `.ci/run` and the quick start use."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from zoo.compress import Recipe
from zoo.hub import LocalHub
from zoo.options import ENV_VAR, TrainOptions
from zoo.store import Store

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def quick_store(tmp_path, monkeypatch) -> Store:
    """A private hub and cache, and training and fine-tuning cut to one epoch (the default store's
    options, from the environment), so the README's loads run in seconds."""
    options = TrainOptions(epochs=1, finetune_epochs=1, latency_seconds=0.05, graph_runtimes=())
    monkeypatch.setenv("ZOO_HUB", str(tmp_path / "hub"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(ENV_VAR, options.to_text())
    return Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache", options=options)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run(index: int, quick_store: Store) -> None:
    exec(compile(blocks("python")[index], f"README.md python block {index}", "exec"), {})


def test_recipe_yaml_block_parses() -> None:
    (recipe_yaml,) = [b for b in blocks("yaml") if "recipe_version" in b]
    recipe = Recipe.from_yaml(recipe_yaml)
    assert [type(s).__name__ for s in recipe.steps] == ["GradualMagnitudePruningConfig", "Int8PTQConfig"]
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe


def test_ci_installs_and_tests_as_the_readme_says() -> None:
    """.ci/run runs the README's test command and installs from the same lock; the README's main job
    writes its cards where git does not track them, so the checkout stays clean."""
    import shlex
    import subprocess

    setup, tests = blocks("bash")[:2]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests.strip().split("&&")[-1].strip() in ci_lines
    commands = [shlex.split(part) for part in setup.split("&&")]
    install = next(c for c in commands if c[:2] == ["pip", "install"])
    assert install[2:] == ["-c", "constraints.txt", "-e", ".[test]"]
    assert any(shlex.split(line)[-4:] == install[2:] for line in ci_lines if "pip install" in line)
    sweep = next(c for c in commands if c[:2] == ["zoo", "sweep"])
    cards_dir = sweep[sweep.index("--cards") + 1]
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{cards_dir}/x/README.md"], cwd=ROOT)
    assert ignored.returncode == 0, f"the main job's {cards_dir}/ would dirty the checkout"
