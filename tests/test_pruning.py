"""Magnitude pruning: the cubic schedule, exact sparsity (ties, existing zeros, the bracketed selection of
large tensors), keep_dense, untouched biases and norms, and gradual pruning on a tiny synthetic task."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from zoo.compress import pruning
from zoo.compress.pruning import (
    _kth_smallest, apply_gradual_magnitude_pruning, apply_magnitude_pruning, cubic_sparsity, magnitude_masks,
    prunable_weights,
)
from zoo.compress.recipe import RecipeContext
from zoo.errors import InvalidArgumentError, RecipeError


# The cubic schedule ------------------------------------------------------------------------------

def test_cubic_schedule_holds_before_begin_and_after_end() -> None:
    kwargs = dict(initial=0.1, final=0.9, begin=10, end=110)
    assert cubic_sparsity(0, **kwargs) == 0.1
    assert cubic_sparsity(10, **kwargs) == 0.1
    assert cubic_sparsity(110, **kwargs) == 0.9
    assert cubic_sparsity(500, **kwargs) == 0.9


def test_cubic_schedule_middle_value() -> None:
    # s = 0.9 + (0.1 - 0.9) * (1 - 50/100)^3 = 0.9 - 0.8 / 8
    assert cubic_sparsity(60, initial=0.1, final=0.9, begin=10, end=110) == pytest.approx(0.8)
    values = [cubic_sparsity(t, initial=0.0, final=0.9, begin=0, end=100) for t in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:])), "the schedule only grows"
    steps = np.diff(values)
    assert steps[0] > steps[50] > steps[-1], "the cubic prunes fast first, then slowly"


def test_exponent_one_is_linear() -> None:
    for t in range(0, 101, 5):
        assert cubic_sparsity(t, initial=0.2, final=0.8, begin=0, end=100, exponent=1.0) == pytest.approx(0.2 + 0.006 * t)


# Exact sparsity ----------------------------------------------------------------------------------

def pruned(masks: dict[str, torch.Tensor]) -> int:
    return sum(int((~m).sum()) for m in masks.values())


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.333, 0.5, 0.9, 0.99])
def test_global_scope_prunes_exactly_floor_s_n(sparsity: float) -> None:
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(37, 11, generator=g), "b": torch.randn(5, 3, 3, 3, generator=g) * 3, "c": torch.randn(101, generator=g)}
    n = sum(w.numel() for w in weights.values())
    masks = magnitude_masks(weights, sparsity, "global")
    assert pruned(masks) == math.floor(sparsity * n)
    kept = torch.cat([w[m].abs() for w, m in zip(weights.values(), masks.values())])
    dropped = torch.cat([w[~m].abs() for w, m in zip(weights.values(), masks.values())])
    if dropped.numel() and kept.numel():
        assert dropped.max() <= kept.min(), "one threshold over all layers: the smallest magnitudes go"


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8])
def test_layer_scope_prunes_exactly_floor_s_n_in_each_tensor(sparsity: float) -> None:
    g = torch.Generator().manual_seed(1)
    weights = {"small": torch.randn(9, 7, generator=g) * 0.01, "large": torch.randn(13, 4, 3, generator=g) * 10}
    masks = magnitude_masks(weights, sparsity, "layer")
    for name, w in weights.items():
        assert int((~masks[name]).sum()) == math.floor(sparsity * w.numel()), name
        assert w[~masks[name]].abs().max() <= w[masks[name]].abs().min()


def test_ties_are_broken_to_prune_exactly_floor_s_n() -> None:
    weights = {"a": torch.ones(10, 10), "b": torch.full((7,), -1.0), "c": torch.tensor([2.0, 0.5, -0.5])}
    n = 110
    for sparsity in (0.05, 0.3, 0.5, 0.95):
        masks = magnitude_masks(weights, sparsity, "global")
        assert pruned(masks) == math.floor(sparsity * n)
        assert not (~masks["c"])[0], "the largest weight is never among the tied ones pruned"


def test_a_tensor_that_already_has_many_zeros() -> None:
    w = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    w[:700] = 0.0
    w[:300] = -0.0
    for sparsity, scope in ((0.5, "global"), (0.7, "layer"), (0.85, "global")):
        masks = magnitude_masks({"w": w}, sparsity, scope)
        assert pruned(masks) == math.floor(sparsity * 1000)
        if sparsity >= 0.7:
            assert not masks["w"][:700].any(), "existing zeros are pruned first"
        else:
            assert int(masks["w"][700:].sum()) == 300, "no non-zero weight is pruned before the zeros run out"


def test_invalid_sparsity_and_scope_are_refused() -> None:
    weights = {"w": torch.randn(10)}
    for sparsity in (1.0, 1.5, -0.1):
        with pytest.raises(InvalidArgumentError):
            magnitude_masks(weights, sparsity)
    with pytest.raises(RecipeError):
        magnitude_masks(weights, 0.5, "x")


# The bracketed selection of large tensors ----------------------------------------------------------

LARGE = 5 * pruning._SAMPLE  # above the 4 * _SAMPLE (about 1M) where bracketing starts


def forbid_full_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_full_selection(*args, **kwargs):
        raise AssertionError("the bracket missed on benign data: np.partition should not run")

    monkeypatch.setattr(pruning.np, "partition", no_full_selection)


@pytest.mark.parametrize("q", [0.0000001, 0.3, 0.9, 0.999999])
def test_bracketed_selection_is_exact_on_large_tensors(q: float, monkeypatch: pytest.MonkeyPatch) -> None:
    values = torch.rand(LARGE, generator=torch.Generator().manual_seed(3))
    k = max(1, math.floor(q * LARGE))
    forbid_full_selection(monkeypatch)
    kth, below = _kth_smallest(values, k)
    expected = float(values.kthvalue(k).values)
    assert kth == expected
    assert below == int((values < expected).sum())


def test_bracketed_selection_with_many_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_full_selection(monkeypatch)
    values = torch.rand(LARGE, generator=torch.Generator().manual_seed(4))
    values[: LARGE * 6 // 10] = 0.0  # the quantile lands on a run of equal values: lo == hi
    values = values[torch.randperm(LARGE, generator=torch.Generator().manual_seed(5))]
    for k in (LARGE // 2, LARGE * 6 // 10, LARGE * 6 // 10 + 1):
        kth, below = _kth_smallest(values, k)
        assert kth == float(values.kthvalue(k).values)
        assert below == int((values < kth).sum())


def test_adversarial_layout_falls_back_to_the_exact_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    partition = np.partition
    monkeypatch.setattr(pruning.np, "partition", lambda *a, **kw: calls.append(1) or partition(*a, **kw))
    n = 8 * pruning._SAMPLE
    stride = n // pruning._SAMPLE
    values = torch.rand(n, generator=torch.Generator().manual_seed(6))
    values[::stride] += 10.0  # the strided sample sees only large values: its bracket misses
    k = n // 2
    kth, below = _kth_smallest(values, k)
    assert calls == [1], "the bracket cannot hold here; the exact full selection must run"
    assert kth == float(values.kthvalue(k).values)
    assert below == int((values < kth).sum())


def test_global_masks_of_a_large_model_are_exact() -> None:
    g = torch.Generator().manual_seed(7)
    weights = {"big": torch.randn(1024, 1100, generator=g), "small": torch.randn(64, 64, generator=g)}
    n = sum(w.numel() for w in weights.values())
    assert n > 4 * pruning._SAMPLE
    masks = magnitude_masks(weights, 0.9, "global")
    assert pruned(masks) == math.floor(0.9 * n)


# Modules: which weights are pruned -----------------------------------------------------------------

class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(torch.relu(self.bn(self.stem(x))))
        return self.head(self.norm(x.mean(dim=(2, 3))))


def test_prunable_weights_are_conv_linear_embedding_weights() -> None:
    model = nn.ModuleDict({"emb": nn.Embedding(10, 4), "conv1d": nn.Conv1d(2, 2, 3), "lin": nn.Linear(3, 3),
                           "bn": nn.BatchNorm1d(3), "ln": nn.LayerNorm(3)})
    weights = prunable_weights(model)
    assert set(weights) == {"emb", "conv1d", "lin"}
    assert all(weights[name] is model[name].weight for name in weights)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_keep_dense_layers_biases_and_norms_are_untouched(scope: str) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = apply_magnitude_pruning(model, 0.8, scope=scope, keep_dense=("stem", r"body\.2"))
    assert set(masks) == {"body.0", "head"}
    after = model.state_dict()
    for key, value in after.items():
        if key in ("body.0.weight", "head.weight"):
            assert torch.equal(value == 0, ~masks[key.rpartition(".")[0]])
            assert torch.equal(value[masks[key.rpartition(".")[0]]], before[key][masks[key.rpartition(".")[0]]])
        else:
            assert torch.equal(value, before[key]), f"{key} must stay as it was"
    n = model.body[0].weight.numel() + model.head.weight.numel()
    zeros = int((model.body[0].weight == 0).sum() + (model.head.weight == 0).sum())
    assert zeros == math.floor(0.8 * n) if scope == "global" else zeros == (
        math.floor(0.8 * model.body[0].weight.numel()) + math.floor(0.8 * model.head.weight.numel()))


def test_keep_dense_patterns_match_whole_module_names() -> None:
    model = TinyNet()
    assert "body.0" in prunable_weights(model, keep_dense=("body",))
    assert "body.0" not in prunable_weights(model, keep_dense=(r"body\..*",))


# Gradual magnitude pruning on a tiny synthetic task -------------------------------------------------

def synthetic_task(n_batches: int = 6, batch: int = 32) -> tuple[list, Callable]:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n_batches * batch, 1, 6, 6, generator=g)
    y = (x[:, 0, :3].mean(dim=(1, 2)) > x[:, 0, 3:].mean(dim=(1, 2))).long() + 2 * (x[:, 0, :, :3].mean(dim=(1, 2)) > 0).long()
    data = [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(n_batches)]
    return data, lambda model, b: F.cross_entropy(model(b[0]), b[1])


def mean_loss(model: nn.Module, data: list, loss_fn) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(loss_fn(model, b)) for b in data) / len(data)


def test_gmp_reaches_the_final_sparsity_in_each_layer_and_trains() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    data, loss_fn = synthetic_task()
    before = mean_loss(model, data, loss_fn)
    bias_before = model.body[0].bias.clone()
    seen_sparsity: list[float] = []

    def recording_loss(m: nn.Module, b) -> torch.Tensor:
        w = m.body[0].weight
        seen_sparsity.append(float((w == 0).sum()) / w.numel())
        return loss_fn(m, b)

    context = RecipeContext(train_batches=lambda epoch: data, loss_fn=recording_loss, progress=False)
    masks = apply_gradual_magnitude_pruning(
        model, context, final_sparsity=0.75, epochs=2, lr=0.05, end_fraction=0.5, frequency=2,
        scope="layer", keep_dense=("stem",),
    )
    assert set(masks) == {"body.0", "body.2", "head"}
    for name, w in prunable_weights(model, ("stem",)).items():
        assert int((w == 0).sum()) == math.floor(0.75 * w.numel()), name
        assert torch.equal(w == 0, ~masks[name])
    assert int((model.stem.weight == 0).sum()) == 0, "keep_dense layers stay dense"
    assert not torch.equal(model.body[0].bias, bias_before), "biases train but are not pruned"
    assert int((model.body[0].bias == 0).sum()) == 0
    # The schedule: no pruning before the first step, growing, final from the end step (6 of 12) on.
    assert len(seen_sparsity) == 12
    assert seen_sparsity[0] == 0.0
    assert all(a <= b for a, b in zip(seen_sparsity, seen_sparsity[1:]))
    assert seen_sparsity[7:] == [math.floor(0.75 * model.body[0].weight.numel()) / model.body[0].weight.numel()] * 5
    after = mean_loss(model, data, loss_fn)
    assert after < before, f"fine-tuning while pruning must lower the loss ({before:.3f} -> {after:.3f})"


def test_gmp_through_a_recipe_uses_the_config() -> None:
    from zoo.compress import GradualMagnitudePruningConfig, Recipe

    torch.manual_seed(0)
    model = TinyNet()
    data, loss_fn = synthetic_task(n_batches=3)
    context = RecipeContext(train_batches=lambda epoch: data, loss_fn=loss_fn, progress=False)
    recipe = Recipe((GradualMagnitudePruningConfig(final_sparsity=0.6, epochs=2, lr=0.05, scope="global",
                                                   keep_dense=("head",)),))
    recipe.apply(model, context)
    weights = prunable_weights(model, ("head",))
    n = sum(w.numel() for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == math.floor(0.6 * n)
    assert int((model.head.weight == 0).sum()) == 0


def test_recipe_context_require_raises_when_data_is_missing() -> None:
    data, loss_fn = synthetic_task(n_batches=1)
    RecipeContext(train_batches=lambda e: data, loss_fn=loss_fn).require("train_batches", "loss_fn", step="x")
    with pytest.raises(RecipeError, match="loss_fn"):
        RecipeContext(train_batches=lambda e: data).require("train_batches", "loss_fn", step="x")
    with pytest.raises(RecipeError, match="gradual magnitude pruning needs train_batches, loss_fn"):
        apply_gradual_magnitude_pruning(TinyNet(), RecipeContext(), final_sparsity=0.5, epochs=1, lr=0.1)
