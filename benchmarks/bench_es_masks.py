"""ES masks (Lenc et al. 2019, the zoo's reconstruction) against a static random mask and gradual
magnitude pruning, at equal epochs, on an MLP 64-300-100-10 trained from scratch on scikit-learn's
digits at their native 8x8 (the zoo's stratified 80/20 split), every layer at the same sparsity:

    python benchmarks/bench_es_masks.py --sparsity 0.9 0.95 --population 8 16 --seeds 0 1 2

Prints one markdown table: mean +- std test top-1 over the seeds and the mean wall time of a run
(one torch thread). `es-shuffled` is the control: ES with each step's losses permuted before the
ranks, so its mask distribution moves as much as ES's but learns nothing from the fitness.
The MLP is small (~50k weights) and the digits easy, so at 90-95 % the masks' quality shows in the
accuracy where a dense ResNet-18 would saturate at 98-99 %.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from zoo.compress import es_masks
from zoo.compress.es_masks import apply_es_masks
from zoo.compress.pruning import apply_gradual_magnitude_pruning, apply_masks, prunable_weights
from zoo.compress.recipe import RecipeContext
from zoo.families.vision.data import _digits_tensors
from zoo.training import train

Batch = tuple[torch.Tensor, torch.Tensor]


def digits() -> tuple[Batch, Batch]:
    """(train, test) as flat 64-pixel vectors scaled to [-1, 1]."""
    splits = [_digits_tensors(split, (8, 8), (0.5,), (0.5,)) for split in ("train", "test")]
    return tuple((x.reshape(len(x), -1), y) for x, y in splits)  # type: ignore[return-value]


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def context(train_set: Batch, seed: int, batch_size: int) -> RecipeContext:
    x, y = train_set

    def batches(epoch: int) -> list[Batch]:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1000 * seed + epoch))
        return [(x[i], y[i]) for i in order.split(batch_size)]

    return RecipeContext(train_batches=batches, loss_fn=lambda model, b: F.cross_entropy(model(b[0]), b[1]),
                         progress=False, seed=seed)


def random_static(model: nn.Module, ctx: RecipeContext, *, sparsity: float, epochs: int, lr: float) -> None:
    """A uniformly random mask with exactly floor(s * n) pruned per layer, fixed before training."""
    weights = prunable_weights(model)
    generator = torch.Generator().manual_seed(ctx.seed)
    masks = {}
    for name, w in weights.items():
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[torch.randperm(w.numel(), generator=generator)[: int(sparsity * w.numel())]] = False
        masks[name] = keep.reshape(w.shape)
    apply_masks(weights, masks)
    train(model, ctx.train_batches, ctx.loss_fn, epochs=epochs, lr=lr, after_step=lambda _: apply_masks(weights, masks),
          progress=False)


def shuffled_fitness(run: Callable[[nn.Module, RecipeContext, float], None], model: nn.Module, ctx: RecipeContext,
                     sparsity: float) -> None:
    """The control: ES masks with each step's losses permuted at random before the fitness shaping,
    so the mask distribution moves exactly as much as in ES but with no information in the ranks.
    What ES gains over it is what its fitness signal taught it."""
    generator = torch.Generator().manual_seed(ctx.seed)
    original = es_masks.nes_gradient

    def shuffled(samples: torch.Tensor, probs: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        return original(samples, probs, losses[torch.randperm(losses.numel(), generator=generator)])

    es_masks.nes_gradient = shuffled
    try:
        run(model, ctx, sparsity)
    finally:
        es_masks.nes_gradient = original


def top1(model: nn.Module, test: Batch) -> float:
    with torch.no_grad():
        return float((model.eval()(test[0]).argmax(1) == test[1]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--population", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--mask-lr", type=float, default=0.1)
    parser.add_argument("--fixed-fraction", type=float, default=0.1)
    parser.add_argument("--initial-sparsity", type=float, default=0.01)
    parser.add_argument("--end-fraction", type=float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["dense", "random", "gmp", "es", "es-shuffled"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_set, test = digits()

    runs: dict[str, Callable[[nn.Module, RecipeContext, float], None]] = {
        "random": lambda m, c, s: random_static(m, c, sparsity=s, epochs=args.epochs, lr=args.lr),
        "gmp": lambda m, c, s: apply_gradual_magnitude_pruning(m, c, final_sparsity=s, epochs=args.epochs, lr=args.lr),
    }
    for p in args.population:
        runs[f"es P={p}"] = lambda m, c, s, p=p: apply_es_masks(
            m, c, sparsity=s, epochs=args.epochs, lr=args.lr, population=p, mask_lr=args.mask_lr,
            fixed_fraction=args.fixed_fraction, initial_sparsity=args.initial_sparsity, end_fraction=args.end_fraction)
        runs[f"es-shuffled P={p}"] = lambda m, c, s, p=p: shuffled_fitness(runs[f"es P={p}"], m, c, s)
    chosen = {k: v for k, v in runs.items() if k.split()[0] in args.methods}

    print(f"| method | sparsity | top-1 % (mean +- std, {len(args.seeds)} seeds) | wall s / run |")
    print("|---|---:|---:|---:|")
    dense = [("dense", 0.0)] if "dense" in args.methods else []
    for name, sparsity in dense + [(k, s) for s in args.sparsity for k in chosen]:
        scores, seconds = [], []
        for seed in args.seeds:
            model, ctx = mlp(seed), context(train_set, seed, args.batch_size)
            start = time.perf_counter()
            if name == "dense":
                train(model, ctx.train_batches, ctx.loss_fn, epochs=args.epochs, lr=args.lr, progress=False)
            else:
                chosen[name](model, ctx, sparsity)
            seconds.append(time.perf_counter() - start)
            scores.append(100 * top1(model, test))
            if sparsity:
                nonzero = sum(int(w.count_nonzero()) for w in prunable_weights(model).values())
                total = sum(w.numel() for w in prunable_weights(model).values())
                assert nonzero <= total - int(sparsity * total) + 3, (name, nonzero)
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"| {name} | {sparsity:.0%} | {statistics.mean(scores):.2f} +- {std:.2f} | "
              f"{statistics.mean(seconds):.1f} |", flush=True)


if __name__ == "__main__":
    main()
