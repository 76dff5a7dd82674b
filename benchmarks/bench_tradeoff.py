"""The CPU check of the one-run trade-off curve (Portes et al. 2022; seed_methods.md section 12): one run
of cosine with warm restarts (T0 = 2 epochs, m = 2: troughs after 2, 6, 14, 30 epochs) against separate
full-schedule runs (the zoo's warm-up + cosine) of 2, 6, 14 and 30 epochs, each trough beside the
standard run of the same budget.

    python benchmarks/bench_tradeoff.py --out /tmp/zoo-tradeoff [--entry test_resnet.zoo_digits] [--cycles 4]

The default entry is `test_resnet.zoo_digits`, timm's tiny test ResNet (BatchNorm, residual blocks) on
scikit-learn's digits: about 2 s an epoch on one thread, where the family's ResNet-18 takes about ten times
longer, which the 82 epochs of this check cannot afford on a 2-core machine. The curves, their figure and a
Markdown table go to --out (the figure is what the family card shows when saved beside the base).
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from zoo.models import get_entry
from zoo.tasks import task_of
from zoo.tradeoff import cycle_epochs, one_run_curve, save_curves, standard_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--entry", default="test_resnet.zoo_digits")
    parser.add_argument("--t0", type=int, default=2)
    parser.add_argument("--t-mult", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entry = get_entry(args.entry)
    budgets = cycle_epochs(args.t0, args.t_mult, args.cycles)
    start = time.perf_counter()
    cyclic = one_run_curve(entry, args.t0, args.t_mult, args.cycles, progress=False)
    cyclic_s = time.perf_counter() - start
    standard = standard_curve(entry, budgets, progress=False)
    total_s = time.perf_counter() - start
    files = save_curves(cyclic, standard, args.out)

    spec = task_of(entry).primary
    print(f"{entry.name}: T0={args.t0}, m={args.t_mult}, {args.cycles} cycles; torch {torch.__version__}, "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}")
    print(f"\n| epochs | standard {spec.name} % | cyclic trough {spec.name} % | difference (points) | "
          "training TFLOPs | standard train s | cyclic train s (cumulative) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for s, c in zip(standard.points, cyclic.points):
        a, b = 100 * s.metrics[spec.key], 100 * c.metrics[spec.key]
        print(f"| {s.epochs} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {s.train_flops / 1e12:.3g} | {s.train_seconds:.0f} "
              f"| {c.train_seconds:.0f} |")
    print(f"\nepochs trained: cyclic {cyclic.total_epochs}, standard {standard.total_epochs}; wall time: cyclic "
          f"{cyclic_s:.0f} s, standard {total_s - cyclic_s:.0f} s (evaluation included)")
    for file in files:
        print(f"wrote {file}")


if __name__ == "__main__":
    main()
