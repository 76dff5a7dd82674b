"""One-shot global magnitude pruning of a ResNet-50-sized model (25.5M prunable weights) to 90 %,
side by side with the textbook ways of finding the same exact threshold.

    python benchmarks/bench_prune.py [--arch resnet50] [--sparsity 0.9] [--repeats 7]

Every method is timed in the same process on the same weights (restored before each run), median of
`--repeats`; the table gives seconds and the ratio to the zoo's `apply_magnitude_pruning`. Target: the
zoo's pruning in <= 0.3 s on the 2-core machine.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import timm
import torch

from zoo.compress.pruning import apply_magnitude_pruning, prunable_weights


def exact_threshold_by(select: Callable[[torch.Tensor, int], float]) -> Callable[[dict[str, torch.Tensor], float], None]:
    """A baseline pruner: concatenate |w|, select the k-th smallest with `select`, zero what is below."""
    def prune(weights: dict[str, torch.Tensor], sparsity: float) -> None:
        flat = torch.cat([w.detach().reshape(-1) for w in weights.values()]).abs_()
        k = int(sparsity * flat.numel())
        threshold = select(flat, k)
        with torch.no_grad():
            for w in weights.values():
                w.mul_(w.abs() > threshold)
    return prune


BASELINES = {
    "torch.kthvalue": exact_threshold_by(lambda flat, k: float(flat.kthvalue(k).values)),
    "np.partition (full)": exact_threshold_by(lambda flat, k: float(np.partition(flat.numpy(), k - 1)[k - 1])),
    "torch.sort": exact_threshold_by(lambda flat, k: float(flat.sort().values[k - 1])),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.arch)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    n = sum(w.numel() for w in prunable_weights(model).values())

    def timed(run: Callable[[], None], repeats: int) -> float:
        times = []
        for _ in range(repeats):
            model.load_state_dict(original)
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    zoo_time = timed(lambda: apply_magnitude_pruning(model, args.sparsity, scope="global"), args.repeats)
    zeros = sum(int((w == 0).sum()) for w in prunable_weights(model).values())
    exact = zeros == int(args.sparsity * n)
    rows = [("zoo apply_magnitude_pruning (bracketed exact selection)", zoo_time)]
    for name, prune in BASELINES.items():
        repeats = 1 if name == "torch.sort" else args.repeats
        rows.append((f"concat + {name}", timed(lambda: prune(prunable_weights(model), args.sparsity), repeats)))
    print(f"{args.arch}: {n:,} prunable weights, sparsity {args.sparsity}, {torch.get_num_threads()} threads; "
          f"zoo result exact: {exact} ({zeros:,} zeros)\n")
    print("| method | seconds (median) | x zoo |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / zoo_time:.1f} |")
    print(f"\ntarget <= 0.3 s: {'met' if zoo_time <= 0.3 else 'NOT met'} ({zoo_time:.3f} s)")


if __name__ == "__main__":
    main()
