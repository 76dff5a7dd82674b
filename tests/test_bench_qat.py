"""benchmarks/bench_qat.py cannot rot: its arms cover both studies, its aggregation and smoothing are right
by hand, its data context records every step's loss with the run's own shuffling, and the quick mode runs
`apply_qat` end to end on a tiny zoo CNN (every arm, finite losses, a table and a plot)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tiny_zoo import benchmark_module, one_torch_thread


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_qat") as module:
        yield module


def _run(bench, arm, seed, losses, steps, final, metric):
    return bench.Run(arm, seed, losses, steps, final, metric, 1.0)


def test_arms_cover_both_studies(bench):
    setting = replace(bench.Setting(), rhos=(1e-3,), starts=("trained", "scratch"))
    arms = bench.arms(setting)
    labels = [(a.study, a.start, a.label) for a in arms]
    assert len(set(labels)) == len(labels) == 2 * 4 + 2 * 3
    ste = [a for a in arms if a.study == "ste" and a.start == "scratch"]
    assert [a.qat.get("ste") for a in ste] == [None, "identity", "relu", "clipped_relu"]
    assert [a.qat["bits_a"] for a in ste] == [32, 2, 2, 2]
    weights = [a for a in arms if a.study == "weights"]
    assert [(a.qat["bits_w"], a.qat["weight_update"], a.qat.get("rho")) for a in weights] == [
        (1, "ste", None), (1, "bcgd", 0.0), (1, "bcgd", 1e-3),
        ("ternary", "ste", None), ("ternary", "bcgd", 0.0), ("ternary", "bcgd", 1e-3)]
    assert all(a.qat["bits_a"] == 32 and a.qat["granularity"] == "tensor" for a in weights)
    assert "BinaryConnect" in weights[1].label and "BinaryConnect" not in weights[2].label
    with pytest.raises(bench.InvalidArgumentError):
        bench.arms(replace(setting, starts=("pretrained",)))


def test_summary_by_hand(bench):
    a, b = bench.Arm("ste", "A", "trained", {}), bench.Arm("weights", "B", "trained", {})
    runs = [_run(bench, a, 0, [9.0, 4.0, 2.0], 2, 1.0, 0.5), _run(bench, b, 0, [1.0, 1.0], 1, 3.0, 0.25),
            _run(bench, a, 1, [9.0, 6.0, 4.0], 2, 3.0, 0.7)]
    assert runs[0].last_epoch_loss == 3.0 and runs[2].last_epoch_loss == 5.0
    rows = bench.summarize(runs)
    assert [r.arm for r in rows] == [a, b] and [r.n for r in rows] == [2, 1]
    assert rows[0].last_epoch_loss == pytest.approx((4.0, math.sqrt(2.0)))
    assert rows[0].final_train_loss == pytest.approx((2.0, math.sqrt(2.0)))
    assert rows[0].metric == pytest.approx((0.6, math.sqrt(0.02)))
    assert rows[1].metric == (0.25, 0.0)  # one seed: no spread
    text = bench.markdown(rows, bench.Setting())
    assert "| A | trained | 2 | 4.0000 +- 1.4142 | 2.0000 +- 1.4142 | 60.00 +- 14.14 |" in text
    assert text.index("### Study 1") < text.index("| A |") < text.index("### Study 2") < text.index("| B |")
    with pytest.raises(bench.InvalidArgumentError):
        bench.mean_std([])


def test_smooth_and_mean_curve_by_hand(bench):
    assert bench.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert bench.smooth([1.0, 3.0], 5) == [1.0, 2.0]
    with pytest.raises(bench.InvalidArgumentError):
        bench.smooth([1.0], 0)
    arm = bench.Arm("ste", "A", "trained", {})
    runs = [_run(bench, arm, 0, [1.0, 2.0, 3.0], 1, 0, 0), _run(bench, arm, 1, [3.0, 4.0], 1, 0, 0)]
    assert bench.mean_curve(runs) == [2.0, 3.0]


def test_context_records_losses_and_shuffles_by_seed(bench):
    entry = bench.get_entry("test_resnet.zoo_digits")
    record: list[float] = []
    one, two = (bench.recipe_context(entry, seed, record, 2) for seed in (0, 1))
    first, again, other = one.train_batches(0), one.train_batches(0), two.train_batches(0)
    assert len(first) == 2
    assert torch.equal(first[0][1], again[0][1]) and not torch.equal(first[0][1], other[0][1])
    model = bench.build_model(entry)
    loss = one.loss_fn(model, first[0])
    assert record == [pytest.approx(float(loss.detach()))] and loss.requires_grad
    assert torch.equal(next(iter(one.calibration_batches())), first[0][0])


def test_quick_mode_runs_every_arm(bench, tmp_path):
    setting = bench.QUICK
    with one_torch_thread():
        runs = bench.run_benchmark(setting, progress=False)
    assert {(r.arm, r.seed) for r in runs} == {(a, s) for a in bench.arms(setting) for s in setting.seeds}
    for run in runs:
        assert len(run.step_losses) == setting.epochs * setting.max_steps == setting.epochs * run.steps_per_epoch
        assert all(math.isfinite(x) and x > 0 for x in run.step_losses), run.arm.label
        assert math.isfinite(run.final_train_loss) and 0.0 <= run.metric <= 1.0
    text = bench.markdown(bench.summarize(runs), setting)
    for arm in bench.arms(setting):
        assert f"| {arm.label} |" in text
    bench.plot(runs, setting, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(bench.InvalidArgumentError):
        bench.run_benchmark(replace(setting, seeds=()))
