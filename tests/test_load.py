"""`zoo.load` end to end on timm's tiny test ResNet trained on digits (one epoch, to stay fast), with a
temporary local hub and variant cache: train once and cache, derive and cache variants, parse variant
names, refuse bad arguments without side effects, detect corrupted cache files, prefer the hub."""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
import zoo.api
import zoo.models
import zoo.tasks
from zoo.compress.checkpoint import WEIGHTS_FILE
from zoo.compress.pruning import GradualMagnitudePruningConfig, prunable_weights
from zoo.compress.quantization import QuantConv2d, QuantLinear
from zoo.compress.recipe import Recipe
from zoo.errors import ChecksumError, InvalidArgumentError, UnknownNameError
from zoo.evaluate.report import EVALUATOR_VERSION, VariantReport
from zoo.hub import LocalHub
from zoo.options import TrainOptions
from zoo.store import REPORT_FILE, Store

BASE = "test_resnet.zoo_digits"
UPSTREAM = "test_resnet.r160_in1k"


@dataclass
class Zoo:
    """A temporary store whose base model was trained (one epoch) by the first `zoo.load`."""

    root: Path
    store: Store
    trainings: list[str]
    base: nn.Module


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    root = tmp_path_factory.mktemp("zoo")
    original = zoo.api.train_base_model
    trainings: list[str] = []

    def counted(entry, **kwargs):
        trainings.append(entry.name)
        return original(entry, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zoo.api, "train_base_model", counted)  # a spy: the budget is the store's options
        store = Store(hub=LocalHub(root / "hub"), cache_root=root / "cache",
                      options=TrainOptions(epochs=1, graph_runtimes=()))
        base = zoo.load(BASE, store=store, progress=False)
        yield Zoo(root, store, trainings, base)


@pytest.fixture(scope="module")
def oneshot90(trained: Zoo) -> nn.Module:
    return zoo.load(BASE, sparsity=0.9, method="oneshot", store=trained.store, progress=False)


@pytest.fixture
def no_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("this load must not derive the variant again")

    monkeypatch.setattr(Recipe, "apply", refuse)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def top1_by_hand(model: nn.Module) -> float:
    """Top-1 accuracy on the entry's evaluation split, counted here: argmax of the logits == label."""
    entry = zoo.get_entry(BASE)
    task = zoo.tasks.task_of(entry)
    right = total = 0
    with torch.no_grad():
        for images, labels in task.batches(entry, entry.eval_data, batch_size=256, shuffle=False):
            right += int((model.eval()(images).argmax(1) == labels).sum())
            total += len(labels)
    return right / total


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


# The base model ----------------------------------------------------------------------------------

def test_base_is_trained_once_then_loaded_from_the_cache(trained: Zoo) -> None:
    first = trained.base
    assert trained.trainings == [BASE]
    assert first.zoo.source == "trained" and first.zoo.name == BASE and not first.training
    assert set(first.zoo.report.metrics) >= {"top1", "top5"}
    # One epoch on digits: top-1 0.436 measured, where chance and the untrained model (seed 0) score 0.100
    assert first.zoo.report.metrics["top1"] == pytest.approx(top1_by_hand(first), abs=1e-6)
    assert first.zoo.report.metrics["top1"] > 0.3, first.zoo.report.metrics
    torch.manual_seed(zoo.get_entry(BASE).train.seed)
    assert top1_by_hand(zoo.models.build_model(zoo.get_entry(BASE))) < 0.2, "untrained: about chance"
    again = zoo.load(BASE, store=trained.store, progress=False)
    assert trained.trainings == [BASE], "the second load must not train again"
    assert again.zoo.source == "cache" and again.zoo.path == first.zoo.path
    assert again.zoo.report.metrics == first.zoo.report.metrics
    assert_same_weights(again, first)
    assert len(trained.store.cached_entries(BASE)) == 1


# Derived variants --------------------------------------------------------------------------------

def test_oneshot_pruning_gives_90_percent_zeros_and_a_report(trained: Zoo, oneshot90: nn.Module) -> None:
    entry = zoo.get_entry(BASE)
    assert oneshot90.zoo.source == "derived" and oneshot90.zoo.name == f"{BASE}_os90"
    assert oneshot90.zoo.sparsity == 0.9 and oneshot90.zoo.quant is None
    weights = prunable_weights(oneshot90, entry.keep_dense)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == int(0.9 * total), f"{zeros}/{total} zeros"
    for name, w in prunable_weights(oneshot90).items():
        if name not in weights:
            assert int((w == 0).sum()) == 0, f"{name} is kept dense"
    report = oneshot90.zoo.report
    assert set(report.metrics) >= {"top1", "top5"}
    assert report.metrics["top1"] == pytest.approx(top1_by_hand(oneshot90), abs=1e-6)
    assert report.sparsity == 0.9 and report.params_nonzero < report.params_total
    assert report.flops_sparse < report.flops_dense
    assert VariantReport.load(oneshot90.zoo.path / REPORT_FILE).to_dict() == report.to_dict()
    assert oneshot90.zoo.path.parent == trained.store.cache_root / f"{BASE}_os90"


def test_the_same_request_again_loads_from_the_cache(trained: Zoo, oneshot90: nn.Module, no_derivation) -> None:
    again = zoo.load(BASE, sparsity=0.9, method="oneshot", store=trained.store, progress=False)
    assert again.zoo.source == "cache" and again.zoo.path == oneshot90.zoo.path
    assert again.zoo.recipe == oneshot90.zoo.recipe
    assert again.zoo.report.metrics == oneshot90.zoo.report.metrics
    assert_same_weights(again, oneshot90)


def test_a_variant_name_loads_the_same_variant(trained: Zoo, oneshot90: nn.Module, no_derivation) -> None:
    by_name = zoo.load(f"{BASE}_os90", store=trained.store, progress=False)
    assert by_name.zoo.name == oneshot90.zoo.name and by_name.zoo.path == oneshot90.zoo.path
    assert_same_weights(by_name, oneshot90)
    assert zoo.resolve(f"{BASE}_os90") == zoo.resolve(BASE, sparsity=0.9, method="oneshot")


def test_int8_quantization_is_derived_then_cached(trained: Zoo) -> None:
    model = zoo.load(BASE, quant="int8", store=trained.store, progress=False)
    assert model.zoo.source == "derived" and model.zoo.name == f"{BASE}_int8" and model.zoo.quant == "int8"
    quantized = [n for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert "fc" in quantized and len(quantized) == sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert model.zoo.report.quant == "int8" and "top1" in model.zoo.report.metrics
    dense = model.zoo.report.dense_export  # the dense export drops the inputs' uint8 rounding: it differs
    assert dense.max_abs > 0 and dense.relative_rms > 0 and dense.inputs.endswith("evaluation examples")
    assert trained.base.zoo.report.dense_export is None
    base_top1 = trained.base.zoo.report.metrics["top1"]
    assert abs(model.zoo.report.metrics["top1"] - base_top1) < 0.1, "int8 keeps the base's accuracy"
    again = zoo.load(f"{BASE}_int8", store=trained.store, progress=False)
    assert again.zoo.source == "cache"
    assert {n: type(m) for n, m in again.named_modules()} == {n: type(m) for n, m in model.named_modules()}
    assert_same_weights(again, model)
    example = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(example), model(example))


def test_a_sparse_int8_variant_is_quantized_from_its_cached_sparse_parent(trained: Zoo, oneshot90: nn.Module) -> None:
    model = zoo.load(BASE, sparsity=0.9, method="oneshot", quant="int8", store=trained.store, progress=False)
    assert model.zoo.name == f"{BASE}_os90_int8" and model.zoo.source == "derived"
    assert [type(step).__name__ for step in model.zoo.recipe.steps] == ["MagnitudePruningConfig", "Int8PTQConfig"]
    assert len(trained.store.cached_entries(f"{BASE}_os90")) == 1, "the sparse parent is reused, not derived again"
    assert isinstance(model.fc, QuantLinear)
    # Quantizing the cached parent gives exactly what the whole recipe gives from the base.
    base = zoo.load(BASE, store=trained.store, progress=False)
    expected = model.zoo.recipe.apply(base, zoo.api._recipe_context(zoo.get_entry(BASE), progress=False)).eval()
    assert_same_weights(model, expected)
    parent_zeros = {k: v == 0 for k, v in oneshot90.state_dict().items() if k.endswith("weight")}
    for key, zeros in parent_zeros.items():
        assert bool((model.state_dict()[key][zeros] == 0).all()), f"{key}: pruned weights stay zero after int8"


@pytest.mark.slow
def test_a_custom_gradual_recipe_is_derived_under_its_hash_then_cached(trained: Zoo) -> None:
    entry = zoo.get_entry(BASE)
    recipe = Recipe((GradualMagnitudePruningConfig(final_sparsity=0.5, epochs=1, lr=0.02, frequency=4,
                                                   keep_dense=entry.keep_dense),))
    model = zoo.load(BASE, recipe=recipe, store=trained.store, progress=False)
    assert model.zoo.source == "derived" and model.zoo.recipe == recipe
    assert re.fullmatch(rf"{BASE}_r[0-9a-f]{{8}}", model.zoo.name)
    for name, w in prunable_weights(model, entry.keep_dense).items():
        assert int((w == 0).sum()) == int(0.5 * w.numel()), name
    again = zoo.load(BASE, recipe=recipe, store=trained.store, progress=False)
    assert again.zoo.source == "cache" and again.zoo.name == model.zoo.name
    assert_same_weights(again, model)


# Refused requests leave no trace ------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [
    (BASE, {"sparsity": 1.5}),
    (BASE, {"sparsity": -0.1}),
    (BASE, {"sparsity": True}),
    (BASE, {"sparsity": 1.0}),
    (BASE, {"sparsity": "0.5"}),
    (BASE, {"quant": "int4"}),
    (BASE, {"sparsity": 0.5, "method": "x"}),
    (BASE, {"method": "x"}),
    (UPSTREAM, {"sparsity": 0.5, "method": "gmp"}),
    (f"{BASE}_os90", {"sparsity": 0.5}),
    (f"{BASE}_os90", {"quant": "int8"}),
    (f"{BASE}_os100", {}),
    (BASE, {"revision": "0" * 40}),
], ids=lambda v: repr(v) if isinstance(v, dict) else v)
def test_invalid_arguments_are_refused_without_creating_anything(trained: Zoo, name: str, kwargs: dict) -> None:
    before = files_under(trained.root)
    with pytest.raises(InvalidArgumentError):
        zoo.load(name, store=trained.store, progress=False, **kwargs)
    assert files_under(trained.root) == before


@pytest.mark.parametrize("name, close", [
    ("test_resnet.zoo_digit", "test_resnet.zoo_digits"),
    ("test_resnet.zoo_digit_os90", "test_resnet.zoo_digits"),
    ("resnet18", "resnet18.zoo_digits"),
    ("test_resnet.zoo_digits_os90_int4", None),
])
def test_unknown_names_are_refused_with_close_names(trained: Zoo, name: str, close: str | None) -> None:
    before = files_under(trained.root)
    with pytest.raises(UnknownNameError) as info:
        zoo.load(name, store=trained.store, progress=False)
    if close is not None:
        assert close in info.value.suggestions
    assert files_under(trained.root) == before


# Corrupted cache files ---------------------------------------------------------------------------

def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("which", ["base", "variant"])
def test_a_corrupted_cached_weight_file_raises_and_is_not_replaced(
    trained: Zoo, oneshot90: nn.Module, tmp_path: Path, how: str, which: str,
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(trained.store.cache_root, cache)
    store = Store(hub=LocalHub(tmp_path / "hub"), cache_root=cache, options=trained.store.options)
    source = trained.base.zoo.path if which == "base" else oneshot90.zoo.path
    folder = cache / source.relative_to(trained.store.cache_root)
    corrupt(folder / WEIGHTS_FILE, how)
    before = files_under(tmp_path)
    kwargs = {} if which == "base" else {"sparsity": 0.9, "method": "oneshot"}
    with pytest.raises(ChecksumError):
        zoo.load(BASE, store=store, progress=False, **kwargs)
    assert files_under(tmp_path) == before, "the corrupted entry is neither replaced nor joined by a partial one"


# The local hub is preferred ----------------------------------------------------------------------

def test_a_published_variant_is_preferred_over_the_cache(trained: Zoo, oneshot90: nn.Module, tmp_path: Path,
                                                        no_derivation) -> None:
    hub, repo_id = LocalHub(tmp_path / "hub"), f"zoo/{BASE}_os90"
    revision = hub.push(repo_id, oneshot90.zoo.path, message="publish os90")
    store = Store(hub=hub, cache_root=trained.store.cache_root, options=trained.store.options)
    model = zoo.load(BASE, sparsity=0.9, method="oneshot", store=store, progress=False)
    assert model.zoo.source == "hub"
    assert model.zoo.path == hub.snapshot(repo_id, revision)
    assert model.zoo.report.metrics == oneshot90.zoo.report.metrics
    assert_same_weights(model, oneshot90)
    by_name = zoo.load(f"{BASE}_os90", store=store, progress=False)
    assert by_name.zoo.source == "hub"
    base = zoo.load(BASE, store=store, progress=False)
    assert base.zoo.source == "cache", "only the published repo comes from the hub"


def test_a_cache_entry_whose_measurement_was_interrupted_is_measured_on_load(
    trained: Zoo, oneshot90: nn.Module, no_derivation
) -> None:
    report_file = oneshot90.zoo.path / REPORT_FILE
    expected = report_file.read_text()
    report_file.unlink()  # as if the process died between the checkpoint write and the report write
    again = zoo.load(BASE, sparsity=0.9, method="oneshot", store=trained.store, progress=False)
    assert again.zoo.source == "cache" and again.zoo.report is not None
    assert again.zoo.report.metrics == oneshot90.zoo.report.metrics
    written = VariantReport.load(report_file)
    assert set(eval_keys(report_file.read_text())) == set(eval_keys(expected))
    assert written.to_dict() == again.zoo.report.to_dict() and written.metrics == oneshot90.zoo.report.metrics


def test_a_report_of_an_older_evaluator_is_measured_again_on_load(
    trained: Zoo, oneshot90: nn.Module, no_derivation
) -> None:
    import json

    report_file = oneshot90.zoo.path / REPORT_FILE
    old = json.loads(report_file.read_text())
    del old["evaluator_version"]  # as written before reports carried one
    old["layers"] = []
    report_file.write_text(json.dumps(old))
    again = zoo.load(BASE, sparsity=0.9, method="oneshot", store=trained.store, progress=False)
    assert again.zoo.report.is_current and again.zoo.report.layers
    assert again.zoo.report.metrics == oneshot90.zoo.report.metrics
    assert json.loads(report_file.read_text())["evaluator_version"] == EVALUATOR_VERSION


def eval_keys(text: str) -> list[str]:
    import json

    return list(json.loads(text))


def test_a_base_that_starts_from_another_entry_gets_its_trained_weights(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`TrainSpec.init_from`: the named entry is loaded (trained first if need be) and handed to the
    family's initializer; the cache key includes its weights."""
    import dataclasses

    from zoo.models import INITIALIZERS, MODELS, build_model

    base = zoo.get_entry(BASE)
    child = dataclasses.replace(base, name="test_resnet.zoo_digits_child", repo_id="zoo/test_resnet.zoo_digits_child",
                                train=dataclasses.replace(base.train, init_from=BASE, epochs=1))
    monkeypatch.setitem(MODELS._items, child.name, child)
    seen: list[str] = []

    def copy_weights(entry, init):
        seen.append(init.zoo.name)
        model = build_model(entry)
        model.load_state_dict(init.state_dict())
        return model

    monkeypatch.setitem(INITIALIZERS._items, "resnet", copy_weights)
    store = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache",
                  options=TrainOptions(epochs=1, graph_runtimes=()))
    model = zoo.load(child.name, store=store, progress=False)
    assert seen == [BASE] and model.zoo.source == "trained"
    assert zoo.load(child.name, store=store, progress=False).zoo.source == "cache" and seen == [BASE]
    with pytest.raises(InvalidArgumentError, match="starts from"):
        zoo.native.train_base_model(child, progress=False)


def test_a_briefly_trained_base_is_never_taken_for_the_fully_trained_one(
        trained: Zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's training options are part of the trained base's cache key, and its config says them."""
    import json

    def refuse(entry, **kwargs):
        raise RuntimeError(f"would train {entry.name} by its own recipe")

    assert trained.base.zoo.path.parent.parent == trained.store.cache_root
    config = json.loads((trained.base.zoo.path / "config.json").read_text())
    assert config["train_options"] == {"epochs": 1, "finetune_epochs": None, "latency_seconds": 0.5,
                                       "graph_runtimes": []}
    monkeypatch.setattr(zoo.api, "train_base_model", refuse)
    by_recipe = Store(hub=trained.store.hub, cache_root=trained.store.cache_root, options=TrainOptions())
    with pytest.raises(RuntimeError, match="would train"):
        zoo.load(BASE, store=by_recipe, progress=False)
    with pytest.raises(RuntimeError, match="would train"):  # options given to load() override the store's
        zoo.load(BASE, store=trained.store, options=TrainOptions(epochs=2), progress=False)
    assert zoo.load(BASE, store=trained.store, progress=False).zoo.source == "cache"

