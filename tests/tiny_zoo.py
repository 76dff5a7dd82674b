"""Shared by test_sweep.py and test_cli.py: the tiny zoo entry `test_resnet.zoo_digits`, trained for one
epoch (not its ten) once per test session, and stores (local hub + variant cache) seeded with it.

Training is what costs, so the stores here carry `SHORT` training options (base training and every
fine-tune one epoch, every latency measure short: explicit, and part of the cache keys), and
`one_torch_thread` runs torch on one thread: on a busy 2-core machine two OpenMP threads fighting other
processes made an epoch ten times slower than one thread did (28 s against 2.3 s). Nothing else about
the zoo changes. Not a test module: pytest does not collect it.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import zoo
import zoo.api
from zoo.hub import LocalHub
from zoo.options import TrainOptions
from zoo.store import Store

BASE = "test_resnet.zoo_digits"
SHORT = TrainOptions(epochs=1, finetune_epochs=1, latency_seconds=0.05, graph_runtimes=())
_TRAINED: dict[str, Path] = {}  # base name -> a variant cache holding only it, for this session


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's intra-op thread count set to 1 inside the block, restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def short_store(folder: Path) -> Store:
    """An empty store under `folder` whose derivations get the `SHORT` options."""
    return Store(hub=LocalHub(folder / "hub"), cache_root=folder / "cache", options=SHORT)


def refuse_derivation(mp: pytest.MonkeyPatch) -> None:
    """From here on any recipe step or base training fails the test: loads must find, not make."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("derived or trained a model that should have been found")

    from zoo.compress.recipe import Recipe

    mp.setattr(Recipe, "apply", refuse)
    mp.setattr(zoo.api, "train_base_model", refuse)


def _trained_base_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if BASE not in _TRAINED:
        root = tmp_path_factory.mktemp("trained-base")
        with one_torch_thread():
            model = zoo.load(BASE, store=short_store(root), progress=False)
        assert model.zoo.source == "trained"
        _TRAINED[BASE] = root / "cache"
    return _TRAINED[BASE]


def store_with_base(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Store:
    """A store under `folder` (empty hub, cache holding the briefly trained base)."""
    shutil.copytree(_trained_base_cache(tmp_path_factory), folder / "cache")
    return short_store(folder)


def store_env(store: Store) -> dict[str, str]:
    """What the CLI reads to find `store` (its --hub/--cache defaults, and its training options)."""
    return {"ZOO_HUB": str(store.hub.root), "ZOO_CACHE": str(store.cache_root),
            "ZOO_TRAIN_OPTIONS": store.options.to_text()}


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def assert_bit_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """The same names in the same order, each tensor of the same dtype, shape and bits (-0.0 is not 0.0)."""
    assert list(actual) == list(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        bits = _BITS[want.element_size()]
        assert torch.equal(got.contiguous().view(bits), want.contiguous().view(bits)), name


@contextmanager
def benchmark_module(name: str) -> Iterator[object]:
    """`benchmarks/<name>.py` imported as module `name` (registered in sys.modules while in use: dataclasses
    look their module up by name), so tests can run a benchmark's own functions."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
