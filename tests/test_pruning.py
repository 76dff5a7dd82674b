"""Magnitude pruning: the cubic schedule, exact sparsity (ties, existing zeros), the exact selection methods
and the measured choice between them, keep_dense, untouched biases and norms, and gradual pruning on a
tiny synthetic task."""
from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from zoo.compress import selection
from zoo.compress.pruning import (
    apply_gradual_magnitude_pruning, apply_magnitude_pruning, apply_masks, cubic_sparsity, magnitude_masks,
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


def test_apply_masks_writes_positive_zeros_that_autograd_sees() -> None:
    g = torch.Generator().manual_seed(15)
    weights = {
        "param": nn.Parameter(torch.randn(40, 30, generator=g)),
        "transposed": torch.randn(30, 40, generator=g).t(),  # not contiguous
        "half": torch.randn(300, generator=g).half(),
        "bfloat16": torch.randn(300, generator=g).bfloat16(),  # numpy has no bfloat16: masked_fill_
    }
    before = {name: w.detach().clone() for name, w in weights.items()}
    versions = {name: w._version for name, w in weights.items()}
    masks = magnitude_masks(weights, 0.7)
    apply_masks(weights, masks)
    for name, w in weights.items():
        keep = masks[name]
        assert keep.dtype == torch.bool and keep.shape == w.shape
        assert torch.equal(w.detach()[keep], before[name][keep]), name
        assert not w.detach()[~keep].any() and not torch.signbit(w.detach()[~keep].float()).any(), name
        assert (before[name][~keep] < 0).any(), "some pruned weights were negative"
        assert w._version > versions[name], f"{name}: autograd must see the in-place change"
    n = sum(w.numel() for w in weights.values())
    assert pruned(masks) == math.floor(0.7 * n)
    widened = magnitude_masks({name: w.float() for name, w in before.items()}, 0.7)
    assert all(torch.equal(widened[name], masks[name]) for name in weights), "exact for every dtype"


# The exact selection methods ------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def isolated_choices(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """Every test starts without choices and with its own cache file (nothing lands in ~/.cache)."""
    monkeypatch.setenv("ZOO_SELECTION_CACHE", str(tmp_path / "selection.json"))
    selection.forget_choices()
    yield tmp_path / "selection.json"
    selection.forget_choices()


LARGE = 600_000  # both bracketing methods sample it (2^16 and 75,000 values) and bracket


def reference(values: torch.Tensor, k: int) -> tuple[float, int]:
    kth = float(values.sort().values[k - 1])
    return kth, int((values < kth).sum())


def magnitudes_with_ties(n: int, seed: int) -> torch.Tensor:
    """|w|-like values: a run of exact zeros, coarse values repeated thousands of times, fine ones."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, generator=g).abs()
    values[: n // 5] = 0.0
    values[n // 5 : n // 2] = torch.randint(0, 50, (n // 2 - n // 5,), generator=g).float() / 16
    return values[torch.randperm(n, generator=g)]


@pytest.mark.parametrize("n", [1, 7, 1000, 40_000, LARGE])
@pytest.mark.parametrize("method", list(selection.METHODS))
def test_every_method_selects_exactly(method: str, n: int) -> None:
    values = magnitudes_with_ties(n, seed=n)
    ordered = values.sort().values
    ks = {1, 2, n // 5, n // 5 + 1, n // 2, math.floor(0.9 * n), math.floor(0.999 * n), n - 1, n}
    for k in sorted(k for k in ks if 1 <= k <= n):
        kth = ordered[k - 1]
        expected = (float(kth), int(torch.searchsorted(ordered, kth)))  # the first index of kth: how many are below
        assert selection.select_kth(values, k, method) == expected, (method, n, k)


@pytest.mark.parametrize("sparsity", [0.0, 1e-6, 2e-6, 0.2, 0.5, 0.9, 0.999])  # 1e-6: none pruned, 2e-6: one
def test_every_method_gives_the_same_masks(sparsity: float) -> None:
    g = torch.Generator().manual_seed(12)
    big = torch.randn(800, 700, generator=g)
    big[:100] = torch.randint(-3, 4, (100, 700), generator=g).float() / 8  # ties, zeros among them
    weights = {"big": big, "small": torch.randn(30, 30, generator=g), "ties": torch.full((500,), 0.125)}
    n = sum(w.numel() for w in weights.values())
    masks = {method: magnitude_masks(weights, sparsity, selection=method) for method in selection.METHODS}
    expected = masks.pop("kthvalue")
    assert pruned(expected) == math.floor(sparsity * n)
    for method, got in masks.items():
        assert all(torch.equal(got[name], expected[name]) for name in weights), method
    assert all(torch.equal(m, e) for m, e in zip(magnitude_masks(weights, sparsity).values(), expected.values()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_selection_of_other_dtypes_is_exact(dtype: torch.dtype) -> None:
    values = magnitudes_with_ties(50_000, seed=13).to(dtype)
    for method in selection.METHODS:
        assert selection.select_kth(values, 45_000, method) == reference(values.double(), 45_000), method


@pytest.mark.parametrize("method", ["bracket-numpy", "bracket-torch"])
@pytest.mark.parametrize("q", [0.0000001, 0.3, 0.9, 0.999999])
def test_bracketing_brackets_benign_data(method: str, q: float, monkeypatch: pytest.MonkeyPatch) -> None:
    values = torch.rand(LARGE, generator=torch.Generator().manual_seed(3))
    k = max(1, math.floor(q * LARGE))
    expected = reference(values, k)

    def no_full_selection(*args):
        raise AssertionError("the bracket missed on benign data: the full selection should not run")

    monkeypatch.setattr(selection, "partition_float", no_full_selection)
    assert selection.select_kth(values, k, method) == expected


@pytest.mark.parametrize("method", ["bracket-numpy", "bracket-torch"])
def test_an_adversarial_layout_falls_back_to_the_full_selection(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    full = selection.partition_float
    monkeypatch.setattr(selection, "partition_float", lambda v, k: calls.append(k) or full(v, k))
    n = 1 << 20
    values = torch.rand(n, generator=torch.Generator().manual_seed(6))
    values[::8] += 10.0  # every eighth value is large: strided samples of both methods see only those
    k = n // 2
    assert selection.select_kth(values, k, method) == reference(values, k)
    assert calls == [k], "the bracket cannot hold here; the exact full selection must run"


def test_select_kth_refuses_what_it_cannot_select() -> None:
    with pytest.raises(InvalidArgumentError, match="k must be in"):
        selection.select_kth(torch.rand(10), 0)
    with pytest.raises(InvalidArgumentError, match="k must be in"):
        selection.select_kth(torch.rand(10), 11)
    with pytest.raises(InvalidArgumentError, match="flat"):
        selection.select_kth(torch.rand(3, 3), 2)
    with pytest.raises(InvalidArgumentError, match="unknown selection method"):
        selection.select_kth(torch.rand(10), 2, "sort")
    with pytest.raises(RecipeError, match="selection"):
        magnitude_masks({"w": torch.rand(10)}, 0.0, selection="sort")


# The measured choice --------------------------------------------------------------------------------

FILE_SIZE = 2 * selection.SMALL  # the smallest measured size class


def test_the_first_selection_of_a_size_measures_and_the_choice_is_kept(isolated_choices) -> None:
    values = torch.rand(FILE_SIZE, generator=torch.Generator().manual_seed(8))
    assert selection.select_kth(values, 1000) == reference(values, 1000)
    choice = selection.chosen()[selection.size_class(FILE_SIZE)]
    assert choice.source == "measured" and choice.method in selection.METHODS
    assert choice.method == selection.choose(choice.measurement)
    assert sorted([*choice.measurement.finalists, *choice.measurement.screened_out]) == sorted(selection.METHODS)
    assert choice.measurement.measured_on == FILE_SIZE
    stored = json.loads(isolated_choices.read_text())
    assert stored[selection.machine_key()][str(choice.size_class)] == choice.measurement.to_json()
    assert list(isolated_choices.parent.iterdir()) == [isolated_choices], "no temporary file is left behind"
    assert selection.choice_for(values, 5) is choice, "measured once per process and size class"


def write_measurement(path, finalists: dict[str, float], screened_out: dict[str, float]) -> None:
    measurement = selection.Measurement(finalists, screened_out, measured_on=1 << 20, screened_on=1 << 17)
    entry = {str(selection.size_class(FILE_SIZE)): measurement.to_json()}
    path.write_text(json.dumps({"another CPU | torch 0 | numpy 0 | 1 threads": entry, selection.machine_key(): entry}))


def forbid_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    def measure(*args):
        raise AssertionError("the cached measurement should have been used")

    monkeypatch.setattr(selection, "measure", measure)


def test_the_choice_is_deterministic_given_cached_measurements(isolated_choices, monkeypatch) -> None:
    forbid_measuring(monkeypatch)
    values = torch.rand(FILE_SIZE, generator=torch.Generator().manual_seed(9))
    slow = {"bracket-numpy": 9e-9, "bracket-torch": 3e-9, "partition-float": 3e-9}  # a tie: the earlier wins
    for _ in range(3):
        write_measurement(isolated_choices, slow, {"partition-bits": 1e-9, "kthvalue": 2e-8})
        selection.forget_choices()
        choice = selection.choice_for(values, 100)
        assert (choice.method, choice.source) == ("bracket-torch", "cache file"), \
            "screened-out methods never win, whatever their screening time"
    assert choice.seconds(10**9) == pytest.approx(
        {"bracket-numpy": 9.0, "bracket-torch": 3.0, "partition-bits": 1.0, "partition-float": 3.0, "kthvalue": 20.0})
    assert selection.select_kth(values, 100) == reference(values, 100)


@pytest.mark.parametrize("content", [
    "{not json", "[1, 2]", '{"x": 3}', "\udcff".encode("utf-8", "surrogateescape"),
    None,  # a well-formed file whose entry for this machine is malformed
])
def test_a_corrupt_cache_file_is_ignored_and_measured_again(content, isolated_choices) -> None:
    if content is None:
        key, cls = selection.machine_key(), str(selection.size_class(FILE_SIZE))
        isolated_choices.write_text(json.dumps({key: {cls: {"finalists": "fast"}}}))
    elif isinstance(content, bytes):
        isolated_choices.write_bytes(content)
    else:
        isolated_choices.write_text(content)
    values = torch.rand(FILE_SIZE, generator=torch.Generator().manual_seed(10))
    with pytest.warns(UserWarning, match="selection cache"):
        assert selection.select_kth(values, 7) == reference(values, 7)
    choice = selection.chosen()[selection.size_class(FILE_SIZE)]
    assert choice.source == "measured"
    assert json.loads(isolated_choices.read_text())[selection.machine_key()][str(choice.size_class)] \
        == choice.measurement.to_json(), "the file is rewritten with the new measurement"


def test_a_measurement_of_other_candidates_is_measured_again(isolated_choices) -> None:
    write_measurement(isolated_choices, {"bracket-numpy": 1e-9, "radix-sort": 1e-10}, {})
    values = torch.rand(FILE_SIZE, generator=torch.Generator().manual_seed(11))
    assert selection.choice_for(values, 10).source == "measured"


def test_no_cache_file_when_the_setting_is_empty(isolated_choices, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_SELECTION_CACHE", "")
    assert selection.cache_path() is None
    selection.select_kth(torch.rand(FILE_SIZE), 10)
    assert not isolated_choices.parent.exists() or not any(isolated_choices.parent.iterdir())
    monkeypatch.delenv("ZOO_SELECTION_CACHE")
    assert str(selection.cache_path()).endswith(".cache/zoo/selection.json")


def test_small_inputs_are_not_measured(isolated_choices, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_measuring(monkeypatch)
    values = torch.rand(selection.SMALL, generator=torch.Generator().manual_seed(16))
    assert selection.select_kth(values, 1000) == reference(values, 1000)
    assert selection.chosen() == {} and not isolated_choices.exists()


def test_size_classes() -> None:
    assert [selection.size_class(n) for n in (1, 2, 3, 4, 5, 1 << 20, (1 << 20) + 1, 25_000_000)] == \
        [0, 1, 2, 2, 3, 20, selection.LARGE_CLASS, selection.LARGE_CLASS]


def test_the_measurement_of_large_inputs_screens_then_times_the_rest_on_a_slice() -> None:
    values = torch.rand(3 << 20, generator=torch.Generator().manual_seed(14))
    measurement = selection.measure(values, 3 << 19)
    assert (measurement.screened_on, measurement.measured_on) == (selection.SCREEN_SIZE, selection.MEASURE_SIZE)
    assert measurement.complete()
    assert selection.choose(measurement) in measurement.finalists

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
