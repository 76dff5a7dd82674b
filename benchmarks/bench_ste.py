"""Straight-through estimators on Yin et al.'s (ICLR 2019) two-linear-layer teacher-student model,
reproduced small (issue 11's first reproduction table).

    python benchmarks/bench_ste.py --plot /tmp/ste.png            # ~2-4 min (5 seeds), 2 shared cores
    python benchmarks/bench_ste.py --quick --plot /tmp/quick.png  # smoke run, a few seconds

The model. Input Z in R^{m x n} with i.i.d. N(0, 1) entries, first layer w in R^n shared by the m rows,
binarized ReLU sigma(x) = 1{x > 0}, second layer v in R^m; teacher (v*, w*) with ||w*|| = 1. Sample
loss f(v, w; Z) = 1/2 (v^T sigma(Zw) - v*^T sigma(Zw*))^2; population loss f(v, w) = E_Z f(v, w; Z).

True gradient (analytic). With theta the angle between w and w*, E[sigma(Zw) sigma(Zw)^T] = (I + 11^T)/4
and E[sigma(Zw) sigma(Zw*)^T] = ((1 - 2 theta / pi) I + 11^T)/4, so (the paper's closed form)
    f(v, w) = 1/8 [v^T (I + 11^T) v - 2 v^T ((1 - 2 theta/pi) I + 11^T) v* + v*^T (I + 11^T) v*],
    df/dv = 1/4 (I + 11^T) v - 1/4 ((1 - 2 theta/pi) I + 11^T) v*,
    df/dw = -(v^T v*) / (2 pi ||w||) * u,  u = (I - w w^T/||w||^2) w* normalized (0 when theta = 0 or pi).
The tests check the loss against Monte Carlo and df/dw, df/dv against autograd of a *smoothed* sample loss
(sigma replaced by a steep sigmoid) averaged over Z, so the analytic gradient is the gradient of the
population loss and not only of its formula.

Coarse gradient. The STE replaces sigma' by mu' of a proxy: identity (mu' = 1), ReLU (mu' = 1{x > 0}),
clipped ReLU (mu' = 1{0 < x < 1}): g_w = (v^T sigma(Zw) - y) Z^T (mu'(Zw) . v); the v part
g_v = (v^T sigma(Zw) - y) sigma(Zw) needs no STE (its expectation is df/dv). The *expected* coarse gradient
is estimated by Monte Carlo over Z for every proxy (`mc_samples` draws of Z); for identity and ReLU it
also has a closed form (derived here, E[1{z^T w > 0} z] = w_hat / sqrt(2 pi) and
E[1{z^T w > 0, z^T w* > 0} z] = (w_hat + w*) / (2 sqrt(2 pi))):
    E[g_id]   = (||v||^2 w_hat - (v^T v*) w*) / sqrt(2 pi),
    E[g_relu] = ((||v||^2 + 1^T v 1^T (v - v*)) w_hat - (v^T v*) w*) / (2 sqrt(2 pi)),
which the table reports as the Monte Carlo error of those two. Clipped ReLU is Monte Carlo only.

What the benchmark measures, per seed (v* ~ N(0, I_m), w* uniform on the sphere, the seed drives all):
- (a) cosines: the points are the iterates of one coarse-gradient-descent run with the ReLU STE from a
  random start (checkpoints `cosine_steps`); at each, for each proxy, cos(E[g_w], df/dw) and the cosine
  of the full (v, w) vectors (v part: the true df/dv, the same for all proxies).
- (b) training started near the global minimum (v*, w*): `steps` of coarse gradient descent, every step
  on a fresh batch of `batch` draws of Z, lr `lr`, from v = v* + noise, w = w* + noise.
- (c) the same from near the spurious critical point of the paper, theta = pi and
  v = (I + 11^T)^{-1} (11^T - I) v* (a local minimum of the population loss when v^T v* < 0, which the
  run checks). The paper's instability result is about this kind of point: there E[g_relu] = 0 and the
  clipped ReLU's expected coarse gradient is 0 too (its row terms carry the same bracket), while
  E[g_id] = 2 (m-1) (1^T v*)^2 / ((m+1)^2 sqrt(2 pi)) w_hat != 0, so identity-STE descent cannot stay.
Trajectories report the population loss (analytic), the angle theta(w, w*), ||w|| and the distance of v
to the start point's v (v* in (b), the critical v in (c)).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from zoo.errors import InvalidArgumentError

PROXIES = ("identity", "relu", "clipped_relu")
DTYPE = torch.float64


@dataclass(frozen=True)
class Setting:
    m: int = 10                      # rows of Z = width of the second layer
    n: int = 20                      # columns of Z = input size of the first layer
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    mc_samples: int = 400_000        # draws of Z per expected coarse gradient
    chunk: int = 50_000              # draws per Monte Carlo chunk (memory)
    cosine_steps: tuple[int, ...] = (0, 25, 100, 300, 1000)
    cosine_lr: float = 0.1
    cosine_batch: int = 256
    steps: int = 3000
    lr: float = 0.1
    batch: int = 64
    start_noise: float = 0.02        # std of the per-coordinate perturbation of the start point
    record_every: int = 50


QUICK = Setting(seeds=(0,), mc_samples=40_000, chunk=20_000, cosine_steps=(0, 50), steps=300, record_every=50)


def _check(setting: Setting) -> None:
    if setting.m < 2 or setting.n < 2:
        raise InvalidArgumentError(f"m and n must be >= 2, got m={setting.m}, n={setting.n}")
    if setting.mc_samples < 1 or setting.chunk < 1 or setting.batch < 1 or setting.steps < 1:
        raise InvalidArgumentError("mc_samples, chunk, batch and steps must be >= 1")
    if not setting.seeds:
        raise InvalidArgumentError("at least one seed is needed")


# --- the model ---------------------------------------------------------------------------------------


def proxy_derivative(proxy: str, pre: torch.Tensor) -> torch.Tensor:
    """mu'(pre) of the STE proxy (identity, ReLU, clipped ReLU), elementwise."""
    if proxy == "identity":
        return torch.ones_like(pre)
    if proxy == "relu":
        return (pre > 0).to(pre.dtype)
    if proxy == "clipped_relu":
        return ((pre > 0) & (pre < 1)).to(pre.dtype)
    raise InvalidArgumentError(f"unknown STE proxy {proxy!r}; expected one of {PROXIES}")


def angle(w: torch.Tensor, w_star: torch.Tensor) -> float:
    cos = torch.dot(w, w_star) / (w.norm() * w_star.norm())
    return math.acos(max(-1.0, min(1.0, float(cos))))


def population_loss(v: torch.Tensor, w: torch.Tensor, v_star: torch.Tensor, w_star: torch.Tensor) -> float:
    """The paper's closed form of E_Z f(v, w; Z) (w != 0)."""
    theta = angle(w, w_star)

    def quad(a: torch.Tensor, b: torch.Tensor, diag: float) -> float:  # a^T (diag I + 11^T) b
        return float(diag * torch.dot(a, b) + a.sum() * b.sum())

    return (quad(v, v, 1.0) - 2 * quad(v, v_star, 1 - 2 * theta / math.pi) + quad(v_star, v_star, 1.0)) / 8


def true_gradient(v: torch.Tensor, w: torch.Tensor, v_star: torch.Tensor,
                  w_star: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(df/dv, df/dw) of the population loss, analytic."""
    theta = angle(w, w_star)
    grad_v = (v + v.sum() - (1 - 2 * theta / math.pi) * v_star - v_star.sum()) / 4
    w_hat = w / w.norm()
    perp = w_star - torch.dot(w_hat, w_star) * w_hat
    if float(perp.norm()) < 1e-12:  # theta = 0 or pi: df/dtheta * dtheta/dw has no direction, the gradient is 0
        return grad_v, torch.zeros_like(w)
    grad_w = -float(torch.dot(v, v_star)) / (2 * math.pi * float(w.norm())) * perp / perp.norm()
    return grad_v, grad_w


def closed_form_coarse_w(proxy: str, v: torch.Tensor, w: torch.Tensor, v_star: torch.Tensor,
                         w_star: torch.Tensor) -> torch.Tensor:
    """E_Z[g_w] for the identity and ReLU proxies (no closed form here for clipped ReLU)."""
    w_hat = w / w.norm()
    w_star_hat = w_star / w_star.norm()
    vv, vvs = float(torch.dot(v, v)), float(torch.dot(v, v_star))
    if proxy == "identity":
        return (vv * w_hat - vvs * w_star_hat) / math.sqrt(2 * math.pi)
    if proxy == "relu":
        radial = vv + float(v.sum()) * float((v - v_star).sum())
        return (radial * w_hat - vvs * w_star_hat) / (2 * math.sqrt(2 * math.pi))
    raise InvalidArgumentError(f"no closed form for proxy {proxy!r}; only identity and relu")


def coarse_gradients(z: torch.Tensor, v: torch.Tensor, w: torch.Tensor, v_star: torch.Tensor, w_star: torch.Tensor,
                     proxies: tuple[str, ...] = PROXIES) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Batch means over z (B, m, n) of g_v and of each proxy's g_w."""
    pre = z @ w                                          # (B, m)
    act = (pre > 0).to(z.dtype)
    residual = act @ v - (z @ w_star > 0).to(z.dtype) @ v_star   # (B,)
    grad_v = (residual[:, None] * act).mean(0)
    grads_w = {}
    for proxy in proxies:
        coef = residual[:, None] * proxy_derivative(proxy, pre) * v   # (B, m)
        grads_w[proxy] = torch.einsum("bm,bmn->n", coef, z) / z.shape[0]
    return grad_v, grads_w


def expected_coarse_gradients(v: torch.Tensor, w: torch.Tensor, v_star: torch.Tensor, w_star: torch.Tensor,
                              samples: int, chunk: int, generator: torch.Generator
                              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Monte Carlo E_Z of g_v and of every proxy's g_w (the same draws for all proxies)."""
    m, n = v.numel(), w.numel()
    total_v = torch.zeros_like(v)
    total_w = {proxy: torch.zeros_like(w) for proxy in PROXIES}
    done = 0
    while done < samples:
        size = min(chunk, samples - done)
        z = torch.randn(size, m, n, generator=generator, dtype=DTYPE)
        grad_v, grads_w = coarse_gradients(z, v, w, v_star, w_star)
        total_v += grad_v * size
        for proxy in PROXIES:
            total_w[proxy] += grads_w[proxy] * size
        done += size
    return total_v / samples, {proxy: total / samples for proxy, total in total_w.items()}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


# --- the runs ----------------------------------------------------------------------------------------


@dataclass
class Teacher:
    v_star: torch.Tensor
    w_star: torch.Tensor

    @classmethod
    def draw(cls, setting: Setting, generator: torch.Generator) -> Teacher:
        v_star = torch.randn(setting.m, generator=generator, dtype=DTYPE)
        w_star = torch.randn(setting.n, generator=generator, dtype=DTYPE)
        return cls(v_star, w_star / w_star.norm())

    def spurious_v(self) -> torch.Tensor:
        """v = (I + 11^T)^{-1} (11^T - I) v* = -v* + 2 (1^T v*) / (m + 1) 1, df/dv = 0 at theta = pi."""
        m = self.v_star.numel()
        return -self.v_star + 2 * self.v_star.sum() / (m + 1)


@dataclass
class Trajectory:
    start: str          # "global" or "spurious"
    proxy: str
    seed: int
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    theta: list[float] = field(default_factory=list)     # degrees
    w_norm: list[float] = field(default_factory=list)
    v_dist: list[float] = field(default_factory=list)    # ||v - v_start_point||


def train(proxy: str, v: torch.Tensor, w: torch.Tensor, teacher: Teacher, setting: Setting, steps: int, lr: float,
          batch: int, generator: torch.Generator, record: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
          record_every: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse gradient descent with `proxy`'s STE, a fresh batch of Z each step; returns the final (v, w)."""
    v, w = v.clone(), w.clone()
    for step in range(steps + 1):
        if record is not None and (step % record_every == 0 or step == steps):
            record(step, v, w)
        if step == steps:
            break
        z = torch.randn(batch, setting.m, setting.n, generator=generator, dtype=DTYPE)
        grad_v, grads_w = coarse_gradients(z, v, w, teacher.v_star, teacher.w_star, proxies=(proxy,))
        v -= lr * grad_v
        w -= lr * grads_w[proxy]
    return v, w


@dataclass
class CosinePoint:
    seed: int
    step: int
    loss: float
    cos_w: dict[str, float]
    cos_full: dict[str, float]
    closed_form_error: dict[str, float]   # ||MC - closed form|| / ||closed form|| (identity, relu)


def cosine_points(seed: int, setting: Setting) -> list[CosinePoint]:
    generator = torch.Generator().manual_seed(seed)
    teacher = Teacher.draw(setting, generator)
    v0 = torch.randn(setting.m, generator=generator, dtype=DTYPE)
    w0 = torch.randn(setting.n, generator=generator, dtype=DTYPE)
    iterates: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    wanted = set(setting.cosine_steps)

    def keep(step: int, v: torch.Tensor, w: torch.Tensor) -> None:
        if step in wanted:
            iterates[step] = (v.clone(), w.clone())

    train("relu", v0, w0, teacher, setting, max(setting.cosine_steps), setting.cosine_lr, setting.cosine_batch,
          generator, keep)
    points = []
    for step in sorted(iterates):
        v, w = iterates[step]
        true_v, true_w = true_gradient(v, w, teacher.v_star, teacher.w_star)
        mc_v, mc_w = expected_coarse_gradients(v, w, teacher.v_star, teacher.w_star, setting.mc_samples,
                                               setting.chunk, generator)
        errors = {}
        for proxy in ("identity", "relu"):
            exact = closed_form_coarse_w(proxy, v, w, teacher.v_star, teacher.w_star)
            errors[proxy] = float((mc_w[proxy] - exact).norm() / exact.norm())
        points.append(CosinePoint(
            seed, step, population_loss(v, w, teacher.v_star, teacher.w_star),
            cos_w={p: cosine(mc_w[p], true_w) for p in PROXIES},
            cos_full={p: cosine(torch.cat([true_v, mc_w[p]]), torch.cat([true_v, true_w])) for p in PROXIES},
            closed_form_error=errors))
    return points


def trajectories(seed: int, setting: Setting) -> list[Trajectory]:
    generator = torch.Generator().manual_seed(10_000 + seed)
    teacher = Teacher.draw(setting, generator)
    v_spur = teacher.spurious_v()
    if float(torch.dot(v_spur, teacher.v_star)) >= 0:
        raise InvalidArgumentError(f"seed {seed}: the theta = pi critical point is not a local minimum "
                                   "(v^T v* >= 0); pick another seed")
    noise = setting.start_noise
    starts = {
        "global": (teacher.v_star, teacher.w_star),
        "spurious": (v_spur, -teacher.w_star),
    }
    runs = []
    for start, (v_c, w_c) in starts.items():
        v0 = v_c + noise * torch.randn(setting.m, generator=generator, dtype=DTYPE)
        w0 = w_c + noise * torch.randn(setting.n, generator=generator, dtype=DTYPE)
        for proxy in PROXIES:
            run = Trajectory(start, proxy, seed)

            def record(step: int, v: torch.Tensor, w: torch.Tensor, run: Trajectory = run, v_c: torch.Tensor = v_c) -> None:
                run.steps.append(step)
                run.loss.append(population_loss(v, w, teacher.v_star, teacher.w_star))
                run.theta.append(math.degrees(angle(w, teacher.w_star)))
                run.w_norm.append(float(w.norm()))
                run.v_dist.append(float((v - v_c).norm()))

            proxy_generator = torch.Generator().manual_seed(20_000 + seed)  # the same Z stream for every proxy
            train(proxy, v0, w0, teacher, setting, setting.steps, setting.lr, setting.batch, proxy_generator, record,
                  setting.record_every)
            runs.append(run)
    return runs


def run_benchmark(setting: Setting, log: Callable[[str], None] = lambda line: None
                  ) -> tuple[list[CosinePoint], list[Trajectory]]:
    _check(setting)
    torch.set_num_threads(1)
    points, runs = [], []
    for seed in setting.seeds:
        start = time.perf_counter()
        points += cosine_points(seed, setting)
        runs += trajectories(seed, setting)
        log(f"seed {seed}: {time.perf_counter() - start:.1f} s")
    return points, runs


# --- reporting ---------------------------------------------------------------------------------------


def _stat(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def markdown(points: list[CosinePoint], runs: list[Trajectory], setting: Setting) -> str:
    seeds = len(setting.seeds)
    lines = [
        f"m = {setting.m}, n = {setting.n}, {seeds} seed{'s' * (seeds > 1)}; expected coarse gradients by Monte "
        f"Carlo over {setting.mc_samples:,} draws of Z; true gradient analytic.",
        "",
        f"### (a) cosine with the true gradient at the ReLU-STE iterates (steps {', '.join(map(str, setting.cosine_steps))}),"
        f" mean +- std over {len(points)} points",
        "",
        "| proxy | cos(E g_w, df/dw) | min | cos full (v, w) | MC vs closed form |",
        "|---|---|---|---|---|",
    ]
    for proxy in PROXIES:
        cos_w = [p.cos_w[proxy] for p in points]
        errors = [p.closed_form_error[proxy] for p in points if proxy in p.closed_form_error]
        err = f"{max(errors):.1%} max rel. error" if errors else "(MC only)"
        lines.append(f"| {proxy} | {_stat(cos_w)} | {min(cos_w):.3f} | {_stat([p.cos_full[proxy] for p in points])} "
                     f"| {err} |")
    lines += ["", "Per checkpoint (mean over seeds): step, population loss, cos_w identity / relu / clipped_relu", "",
              "| step | loss | identity | relu | clipped_relu |", "|---|---|---|---|---|"]
    for step in sorted({p.step for p in points}):
        at = [p for p in points if p.step == step]
        cells = " | ".join(f"{statistics.fmean(p.cos_w[q] for p in at):.3f}" for q in PROXIES)
        lines.append(f"| {step} | {statistics.fmean(p.loss for p in at):.4f} | {cells} |")
    for start, title in (("global", "(b) started near the global minimum (v*, w*)"),
                         ("spurious", "(c) started near the spurious critical point (theta = pi, v = (I+11^T)^-1 (11^T-I) v*)")):
        lines += ["", f"### {title}: {setting.steps} steps, lr {setting.lr}, batch {setting.batch}, start noise "
                      f"{setting.start_noise}", "",
                  "| proxy | loss at start | final loss | final theta (deg) | final ||w|| | final ||v - v_start|| |",
                  "|---|---|---|---|---|---|"]
        for proxy in PROXIES:
            group = [r for r in runs if r.start == start and r.proxy == proxy]
            lines.append(f"| {proxy} | {_stat([r.loss[0] for r in group], 4)} | {_stat([r.loss[-1] for r in group], 4)} "
                         f"| {_stat([r.theta[-1] for r in group], 1)} | {_stat([r.w_norm[-1] for r in group], 2)} "
                         f"| {_stat([r.v_dist[-1] for r in group], 3)} |")
    return "\n".join(lines)


def plot(runs: list[Trajectory], setting: Setting, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    colors = {"identity": "tab:red", "relu": "tab:blue", "clipped_relu": "tab:green"}
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    for row, start in enumerate(("global", "spurious")):
        for col, (attr, label) in enumerate((("loss", "population loss"), ("theta", "theta(w, w*) (deg)"),
                                             ("w_norm", "||w||"))):
            ax = axes[row, col]
            for proxy in PROXIES:
                group = [r for r in runs if r.start == start and r.proxy == proxy]
                for i, run in enumerate(group):
                    ax.plot(run.steps, getattr(run, attr), color=colors[proxy], alpha=0.6, lw=1,
                            label=proxy if i == 0 else None)
            ax.set(title=f"start near the {start} {'minimum' if start == 'global' else 'critical point'}: {label}",
                   xlabel="step", ylabel=label)
            if attr == "loss":
                ax.set_yscale("symlog", linthresh=1e-4)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, fewer draws and steps")
    parser.add_argument("--plot", type=Path, help="write the trajectories to this PNG")
    parser.add_argument("--seeds", type=int, help="number of seeds (0, 1, ...); default 5 (1 with --quick)")
    parser.add_argument("--steps", type=int, help="training steps of (b) and (c)")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else Setting()
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be >= 1")
        setting = replace(setting, seeds=tuple(range(args.seeds)))
    if args.steps is not None:
        if args.steps < 1:
            parser.error("--steps must be >= 1")
        setting = replace(setting, steps=args.steps)
    start = time.perf_counter()
    points, runs = run_benchmark(setting, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(points, runs, setting))
    if args.plot is not None:
        plot(runs, setting, args.plot)
        print(f"\nplot: {args.plot}")
    print(f"\nwall time {time.perf_counter() - start:.0f} s, torch {torch.__version__}, 1 thread")


if __name__ == "__main__":
    main()
