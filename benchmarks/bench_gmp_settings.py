"""Gradual magnitude pruning to 90 % on the zoo-native ResNet-18 under a few fine-tuning settings, from
one base, side by side: what chose the default recipe (`zoo.variants.default_recipe`).

    python benchmarks/bench_gmp_settings.py --store /tmp/zoo-bench

The store's base is reused if trained already (else it is trained first, about 30 s).
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import zoo
from zoo.api import _recipe_context
from zoo.compress import GradualMagnitudePruningConfig, Recipe
from zoo.hub import LocalHub
from zoo.store import Store
from zoo.tasks import task_of

SETTINGS = {
    "6 epochs, lr 0.02, prune until 0.7": dict(epochs=6, lr=0.02, end_fraction=0.7),
    "6 epochs, lr 0.05, prune until 0.5 (default)": dict(epochs=6, lr=0.05, end_fraction=0.5),
    "12 epochs, lr 0.02, prune until 0.5": dict(epochs=12, lr=0.02, end_fraction=0.5),
    "12 epochs, lr 0.05, prune until 0.5": dict(epochs=12, lr=0.05, end_fraction=0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--base", default="resnet18.zoo_digits")
    args = parser.parse_args()
    store = Store(hub=LocalHub(args.store / "hub"), cache_root=args.store / "cache")
    base = zoo.load(args.base, store=store, progress=False)
    entry = zoo.get_entry(args.base)
    task = task_of(entry)
    test = task.batches(entry, entry.eval_data, batch_size=256, shuffle=False)

    def top1(model: torch.nn.Module) -> float:
        return task.evaluate(model, test, entry, progress=False).metrics["top1"]

    print(f"| setting | top-1 % | fine-tune s |\n|---|---:|---:|\n| dense base | {100 * top1(base):.2f} | - |")
    for name, settings in SETTINGS.items():
        model = copy.deepcopy(base)
        torch.manual_seed(entry.train.seed)
        recipe = Recipe((GradualMagnitudePruningConfig(final_sparsity=0.9, keep_dense=entry.keep_dense, scope="layer",
                                                       **settings),))
        start = time.perf_counter()
        recipe.apply(model, _recipe_context(entry, progress=False))
        print(f"| {name} | {100 * top1(model):.2f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
