"""The main job, timed, with the issue's accuracy check: on the zoo-native ResNet-18, the 90 % gradual
magnitude pruning variant stays within 1 point of dense top-1, and the one-shot 90 % variant shows what
fine-tuning buys.

    python benchmarks/bench_sweep.py --store /tmp/zoo-bench [--cards model_cards]

With an empty store this trains the base and derives every variant (the cold main job); run it again
for the warm time (everything loads from the local hub).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from zoo.hub import LocalHub
from zoo.publish import report_table
from zoo.store import Store
from zoo.sweep import SweepPlan, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="folder for the hub and the cache")
    parser.add_argument("--base", default="resnet18.zoo_digits")
    parser.add_argument("--cards", type=Path, default=None)
    args = parser.parse_args()
    store = Store(hub=LocalHub(args.store / "hub"), cache_root=args.store / "cache")
    start = time.perf_counter()
    result = run_sweep(SweepPlan(base=args.base), store=store, cards_dir=args.cards)
    elapsed = time.perf_counter() - start
    reports = {r.name: r for r in result.family.reports}
    dense = reports[args.base].metrics["top1"]
    gmp90 = reports[f"{args.base}_gmp90"].metrics["top1"]
    os90 = reports[f"{args.base}_os90"].metrics["top1"]
    print(report_table(result.family.reports, result.family.front))
    print(f"\nsweep wall time: {elapsed:.0f} s")
    print(f"top-1 dense {100 * dense:.2f} | GMP 90% {100 * gmp90:.2f} ({100 * (gmp90 - dense):+.2f} points, "
          f"target >= -1.00: {'met' if gmp90 >= dense - 0.01 else 'NOT met'}) | one-shot 90% {100 * os90:.2f} "
          f"({100 * (os90 - dense):+.2f} points)")


if __name__ == "__main__":
    main()
