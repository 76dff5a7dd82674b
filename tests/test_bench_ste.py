"""benchmarks/bench_ste.py cannot rot: its analytic population loss and gradient match Monte Carlo and
autograd of a smoothed sample loss, its closed-form expected coarse gradients match Monte Carlo, the ReLU
STE's coarse gradient beats identity's at a hand-picked point (and loses at another), and the quick mode
runs end to end."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tiny_zoo import benchmark_module

D = torch.float64


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_ste") as module:
        yield module


def _point():
    generator = torch.Generator().manual_seed(3)
    m, n = 4, 6
    v_star = torch.randn(m, generator=generator, dtype=D)
    w_star = torch.randn(n, generator=generator, dtype=D)
    w_star /= w_star.norm()
    v = v_star + 0.7 * torch.randn(m, generator=generator, dtype=D)
    w = w_star + 0.9 * torch.randn(n, generator=generator, dtype=D)
    return v, w, v_star, w_star


def test_population_loss_by_hand_and_against_monte_carlo(bench):
    # m = 2, w = w*: theta = 0, f = 1/8 [(v-v*)^T (I + 11^T)(v-v*)]; v - v* = (1, 0) -> 1/8 * 2
    e = torch.tensor([1.0, 0.0], dtype=D)
    assert bench.population_loss(e, e, torch.zeros(2, dtype=D), e) == pytest.approx(0.25)
    # w = -w*, v = v* = (1, 0): theta = pi, f = 1/8 [2 - 2 (-1 + 1) + 2] = 0.5 (sigma(Zw) = 1 - sigma(Zw*) a.s.)
    assert bench.population_loss(e, e, e, -e) == pytest.approx(0.5)
    v, w, v_star, w_star = _point()
    z = torch.randn(400_000, 4, 6, generator=torch.Generator().manual_seed(0), dtype=D)
    residual = (z @ w > 0).to(D) @ v - (z @ w_star > 0).to(D) @ v_star
    assert float((residual ** 2).mean() / 2) == pytest.approx(bench.population_loss(v, w, v_star, w_star), rel=0.01)


def test_true_gradient_is_autograd_of_the_analytic_loss_and_of_a_smoothed_sample_loss(bench):
    v, w, v_star, w_star = _point()
    grad_v, grad_w = bench.true_gradient(v, w, v_star, w_star)
    assert float(torch.dot(grad_w, w)) == pytest.approx(0.0, abs=1e-12)  # f does not depend on ||w||
    # autograd of the closed form (theta through acos)
    vt, wt = v.clone().requires_grad_(), w.clone().requires_grad_()
    theta = torch.acos(torch.dot(wt, w_star) / wt.norm())
    f = ((vt @ vt + vt.sum() ** 2) - 2 * ((1 - 2 * theta / math.pi) * (vt @ v_star) + vt.sum() * v_star.sum())
         + (v_star @ v_star + v_star.sum() ** 2)) / 8
    f.backward()
    torch.testing.assert_close(grad_v, vt.grad)
    torch.testing.assert_close(grad_w, wt.grad)
    # the population loss itself: sigma replaced by sigmoid(x / tau), autograd, averaged over Z
    tau = 0.02
    z = torch.randn(200_000, 4, 6, generator=torch.Generator().manual_seed(1), dtype=D)
    vs, ws = v.clone().requires_grad_(), w.clone().requires_grad_()
    smooth = torch.sigmoid(z @ ws / tau) @ vs - torch.sigmoid(z @ w_star / tau) @ v_star
    (smooth ** 2 / 2).mean().backward()
    assert float((vs.grad - grad_v).norm() / grad_v.norm()) < 0.05
    assert float((ws.grad - grad_w).norm() / grad_w.norm()) < 0.2  # a factor 2 off would be 0.5 or 1
    assert bench.cosine(ws.grad, grad_w) > 0.98


def test_closed_form_expected_coarse_gradients_match_monte_carlo(bench):
    v, w, v_star, w_star = _point()
    _, mc = bench.expected_coarse_gradients(v, w, v_star, w_star, 400_000, 100_000, torch.Generator().manual_seed(2))
    for proxy in ("identity", "relu"):
        exact = bench.closed_form_coarse_w(proxy, v, w, v_star, w_star)
        assert float((mc[proxy] - exact).norm() / exact.norm()) < 0.03, proxy
    with pytest.raises(bench.InvalidArgumentError):
        bench.closed_form_coarse_w("clipped_relu", v, w, v_star, w_star)
    with pytest.raises(bench.InvalidArgumentError):
        bench.proxy_derivative("tanh", w)


def test_proxy_derivatives_by_hand(bench):
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0], dtype=D)
    assert bench.proxy_derivative("identity", x).tolist() == [1, 1, 1, 1, 1]
    assert bench.proxy_derivative("relu", x).tolist() == [0, 0, 1, 1, 1]
    assert bench.proxy_derivative("clipped_relu", x).tolist() == [0, 0, 1, 0, 0]


def test_relu_coarse_gradient_beats_identity_at_a_hand_picked_point_but_not_everywhere(bench):
    # The true df/dw has no radial part (f ignores ||w||); E[g_w] has tangential part -(v^T v*) sin(theta) times
    # 1/sqrt(2 pi) (identity) or 1/(2 sqrt(2 pi)) (relu), and radial parts ||v||^2 - v^T v* cos(theta) (identity),
    # (||v||^2 + 1^T v 1^T (v - v*) - v^T v* cos(theta)) / 2 (relu), over the same factors.
    v_star = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=D)
    w_star = torch.tensor([1.0, 0.0, 0.0], dtype=D)

    def cosines(v, theta, seed):
        w = torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=D)
        _, true_w = bench.true_gradient(v, w, v_star, w_star)
        _, mc = bench.expected_coarse_gradients(v, w, v_star, w_star, 200_000, 100_000,
                                                torch.Generator().manual_seed(seed))
        return {proxy: bench.cosine(mc[proxy], true_w) for proxy in bench.PROXIES}

    # v = 0.8 v*, theta = pi/2: relu radial 2.56 + 3.2 * (-0.8) = 0 -> cos 1; identity radial 2.56, tangential 3.2
    cos = cosines(0.8 * v_star, math.pi / 2, 4)
    assert cos["relu"] == pytest.approx(1.0, abs=0.01)
    assert cos["identity"] == pytest.approx(3.2 / math.hypot(2.56, 3.2), abs=0.02)  # 0.781
    assert cos["relu"] > cos["identity"] + 0.15
    # v = v*/2, theta = 1 rad: identity radial 1 - 2 cos 1 (small), relu (1 - 4 - 2 cos 1)/2: identity wins here
    cos = cosines(v_star / 2, 1.0, 5)
    assert cos["identity"] == pytest.approx(2 * math.sin(1) / math.hypot(1 - 2 * math.cos(1), 2 * math.sin(1)), abs=0.02)
    assert cos["relu"] == pytest.approx(math.sin(1) / math.hypot((-3 - 2 * math.cos(1)) / 2, math.sin(1)), abs=0.02)
    assert cos["identity"] > cos["relu"] + 0.3


def test_quick_mode_runs_and_reports(bench, tmp_path):
    setting = replace(bench.QUICK, m=4, n=5, mc_samples=2_000, chunk=1_000, cosine_steps=(0, 5), steps=20, record_every=10)
    points, runs = bench.run_benchmark(setting)
    assert [p.step for p in points] == [0, 5]
    assert {(r.start, r.proxy) for r in runs} == {(s, p) for s in ("global", "spurious") for p in bench.PROXIES}
    assert all(r.steps == [0, 10, 20] for r in runs)
    assert all(-1.0 <= p.cos_w[q] <= 1.0 for p in points for q in bench.PROXIES)
    text = bench.markdown(points, runs, setting)
    for heading in ("### (a)", "### (b)", "### (c)", "| identity |", "| clipped_relu |"):
        assert heading in text
    bench.plot(runs, setting, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(bench.InvalidArgumentError):
        bench.run_benchmark(replace(setting, seeds=()))
