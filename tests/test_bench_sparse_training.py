"""benchmarks/bench_sparse_training.py cannot rot: its core runs end to end on a tiny setting, and the
equal-parameter arithmetic its tables rest on matches hand computations."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tiny_zoo import benchmark_module



@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_sparse_training") as module:
        yield module


def test_model_sizes_and_equal_parameter_sparsities(bench):
    # prunable weights 90 w^2 + 49 w; dense w=2 has 458 of them + 2*(2+4+8) norm params + 10 biases = 496
    assert bench.prunable_size(8) == 90 * 64 + 49 * 8 == 6152
    assert bench.first_layer_size(8) == 72
    assert bench.erk_count(8, 0.9) == 615
    # uniform keeps conv1's 72 weights dense: the other 6080 keep 615 - 72
    assert bench.uniform_sparsity_at_count(8, 615) == pytest.approx(1 - 543 / 6080)
    # w=4 holds 1636 weights and 2*(4+8+16)+10 = 66 other parameters: 496 - 66 = 430 weights to keep
    assert bench.matched_sparsity(2, 4) == pytest.approx(1 - 430 / 1636)
    with pytest.raises(bench.InvalidArgumentError):
        bench.uniform_sparsity_at_count(8, 50)  # fewer than the dense first layer


def test_magnitude_masks_at_counts_keep_the_largest_of_each_layer(bench):
    weights = {"a": torch.tensor([[0.1, -0.5, 0.3], [0.2, -0.05, 0.4]]), "b": torch.tensor([[1.0, -2.0], [0.5, 3.0]])}
    masks = bench.magnitude_masks_at_counts(weights, {"a": 2, "b": 3})
    assert masks["a"].tolist() == [[False, True, False], [False, False, True]]
    assert masks["b"].tolist() == [[True, True], [False, True]]
    every_or_none = bench.magnitude_masks_at_counts(weights, {"a": 6, "b": 0})
    assert every_or_none["a"].all() and not every_or_none["b"].any()


def test_tiny_run_gives_every_cell_with_the_stated_counts(bench, tmp_path):
    setting = replace(bench.QUICK, width=4, epochs=1, finetune_epochs=1, batch_size=256, prune_sparsities=(0.9,),
                      method_sparsities=(0.9,), rigl_multipliers=(2,), dense_widths=(2,), sparse_widths=(4,))
    cells = bench.run_benchmark(setting)
    by_label = {(c.table, c.label): c for c in cells}
    kept = bench.erk_count(4, 0.9)
    pruned = [by_label[("a", f"{label}, {when}")] for label in ("magnitude", "random")
              for when in ("no fine-tune", "fine-tuned")]
    assert {c.active for c in pruned} == {kept}  # ERK's per-layer counts, kept through fine-tuning
    for method in ("static", "set", "rigl"):  # equal parameters: uniform raised to ERK's count
        assert by_label[("c", f"{method} erk")].active == by_label[("c", f"{method} uniform")].active == kept
    assert by_label[("c", "rigl erk 2x")].active == kept
    assert all(c.weights <= c.active for c in cells)
    assert by_label[("c", "dense")].train_cost == 1.0
    assert by_label[("c", "GMP global (1 dense + 1 pruning epochs)")].train_cost == 2.0
    assert 0 < by_label[("c", "static erk")].train_cost < by_label[("c", "rigl erk")].train_cost < 1
    assert by_label[("c", "rigl erk 2x")].train_cost == pytest.approx(2 * by_label[("c", "rigl erk")].train_cost, rel=0.1)
    assert by_label[("b2", "w=2 dense")].params == 496 and by_label[("b2", "w=4 rigl erk")].active == 430
    assert all(0.0 <= c.top1 <= 1.0 for c in cells)
    text = bench.markdown(cells, setting)
    for heading in ("### (a)", "### (b)", "### (c)", "| 90% | 164 |", "| rigl erk 2x | 90.0% | 164 |"):
        assert heading in text
    bench.plot(cells, setting, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
