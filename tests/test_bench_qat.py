"""benchmarks/bench_qat.py cannot rot: its arms cover every study, its quantized ReLU's forward, backward
(each STE proxy) and calibration are right by hand, the distillation arms' recipes are the zoo's QAT step
with and without a distillation step first, its aggregation and smoothing are right by hand, its data
context records every step's loss with the run's own shuffling, and the quick mode runs every study end to
end on a tiny zoo CNN (every arm, finite losses, a table and a plot)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from tiny_zoo import benchmark_module, one_torch_thread


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_qat") as module:
        yield module


def _run(bench, arm, seed, losses, steps, final, metric):
    return bench.Run(arm, seed, losses, steps, final, metric, 1.0)


def test_arms_cover_both_studies(bench):
    setting = replace(bench.Setting(), rhos=(1e-3,), starts=("trained", "scratch"), studies=("ste", "weights"))
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


def test_arms_of_the_new_studies(bench):
    setting = replace(bench.Setting(), starts=("trained", "scratch"), studies=("ste_relu", "weights_w2", "distill"))
    arms = bench.arms(setting)
    relu = [a for a in arms if a.study == "ste_relu"]
    assert [(a.start, a.qat.get("ste"), a.qat["bits_a"]) for a in relu] == [
        (start, proxy, bits) for start in ("trained", "scratch")
        for proxy, bits in ((None, 32), ("identity", 2), ("relu", 2), ("clipped_relu", 2))]
    w2 = [a for a in arms if a.study == "weights_w2"]
    assert [(a.qat["weight_update"], a.qat.get("rho")) for a in w2] == [("ste", None), ("bcgd", 0.0), ("bcgd", 1e-5)]
    assert all(a.qat["bits_w"] == 2 and a.qat["weight_range"] == "mse" and a.qat["granularity"] == "channel"
               for a in w2)
    distill = [a for a in arms if a.study == "distill"]
    assert [(a.qat["bits_a"], a.distill is not None) for a in distill] == [
        (32, False), (32, True), (2, False), (2, True)]
    assert len({a.label for a in distill}) == 4 and {a.group for a in distill} == {"w2", "w2a2"}
    assert [a.label for a in bench.arms(replace(setting, only="ReLU relu"))] == ["float weights, 2-bit ReLU relu"] * 2
    with pytest.raises(bench.InvalidArgumentError):
        bench.arms(replace(setting, only="no such arm"))
    with pytest.raises(bench.InvalidArgumentError):
        bench.arms(replace(setting, studies=("ste_relus",)))


def test_distill_arms_put_a_distillation_step_before_the_zoo_qat_step(bench):
    entry = bench.get_entry("resnet18.zoo_digits")
    setting = bench.Setting()
    off, on = [a for a in bench.arms(replace(setting, studies=("distill",))) if a.group == "w2a2"]
    kd, qat = bench.distill_recipe(on, setting, entry).steps
    assert isinstance(kd, bench.DistillationConfig)
    assert (kd.teacher, kd.temperature, kd.alpha, kd.logits_loss) == ("base", 4.0, 0.5, "kl")
    assert isinstance(qat, bench.QATConfig)
    assert (qat.bits_w, qat.bits_a, qat.weight_range, qat.granularity) == (2, 2, "mse", "channel")
    assert qat.ste == "clipped_relu" and qat.act_percentile == 99.99 and qat.calibration_batches == 8
    assert qat.lr == pytest.approx(0.005) and qat.epochs == 3 and qat.weight_decay == entry.train.weight_decay
    assert qat.keep_fp == entry.keep_dense and qat.optimizer == "sgd"
    assert bench.distill_recipe(off, setting, entry).steps == (qat,)


@pytest.mark.parametrize("proxy, expected", [("identity", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                                             ("relu", [0.0, 0.0, 3.0, 4.0, 5.0, 6.0]),
                                             ("clipped_relu", [0.0, 0.0, 3.0, 4.0, 5.0, 0.0])])
def test_quantized_relu_forward_and_backward_by_hand(bench, proxy, expected):
    relu = bench.QuantizedReLU(2, proxy)
    relu.alpha.fill_(2.0)  # 2 bits on [0, 2]: levels 0, 2/3, 4/3, 2
    x = torch.tensor([-1.0, 0.0, 0.2, 0.5, 1.2, 2.5], requires_grad=True)
    y = relu(x)
    assert torch.allclose(y, torch.tensor([0.0, 0.0, 0.0, 2 / 3, 4 / 3, 2.0]))
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert x.grad.tolist() == expected
    with pytest.raises(bench.InvalidArgumentError):
        bench.QuantizedReLU(2, "tanh")


def test_quantize_and_calibrate_relus_by_hand(bench):
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1), nn.ReLU(), nn.Sequential(nn.ReLU()))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(0.0)
    relus = bench.quantize_relus(model, 2, "relu")
    assert list(relus) == ["2", "3.0"] and model[2] is relus["2"] and model[3][0] is relus["3.0"]
    # training-mode batch norm: the batch [-1, 1, 3, 5] (mean 2, biased var 5) normalized
    batch = torch.tensor([[-1.0], [1.0], [3.0], [5.0]])
    before = model[1].running_mean.clone(), model[1].running_var.clone()
    bench.calibrate_relus(model, relus, [batch], 100.0)
    positive = (torch.tensor([1.0, 3.0]) / math.sqrt(5.0 + 1e-5))
    assert float(relus["2"].alpha) == pytest.approx(float(positive[-1]))
    assert float(relus["3.0"].alpha) == pytest.approx(float(positive[-1]))
    bench.calibrate_relus(model, relus, [batch], 50.0)
    assert float(relus["2"].alpha) == pytest.approx(float(positive.mean()))  # median of two values
    assert torch.equal(model[1].running_mean, before[0]) and torch.equal(model[1].running_var, before[1])
    assert not relus["2"].calibrating
    with pytest.raises(bench.InvalidArgumentError):
        bench.quantize_relus(nn.Sequential(nn.Linear(1, 1)), 2, "relu")
    with pytest.raises(bench.InvalidArgumentError):  # no positive input: no range
        bench.calibrate_relus(model, relus, [torch.tensor([[1.0], [1.0]])], 100.0)
