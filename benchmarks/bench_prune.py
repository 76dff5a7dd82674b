"""One-shot global magnitude pruning of a ResNet-50-sized model (25.5M prunable weights) to 90 %: the zoo's
`apply_magnitude_pruning` with its measured choice of selection method, each candidate method forced,
and the textbook ways of finding the same exact threshold, side by side in one process.

    python benchmarks/bench_prune.py [--arch resnet50] [--sparsity 0.9] [--repeats 7]

Every run starts from the same weights (restored before it, outside the timing); the rows are timed
round-robin, one run of each per round, so that a load passing on the shared machine hits them alike;
the table gives the median over `--repeats` rounds (`torch.sort`, about 3 s, runs once) and the ratio to
the fastest textbook baseline. The zoo's rows: steady state (the choice already made in this process),
a first call that measures the candidates (no choice yet, an empty cache file), and a first call that
reads the choice from the cache file; the process's very first pruning (cold) is printed above the table.
Targets: the zoo's steady state at or below the fastest baseline,
and <= 0.3 s.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch

from zoo.compress import selection
from zoo.compress.pruning import apply_magnitude_pruning, prunable_weights


def exact_threshold_by(select: Callable[[torch.Tensor, int], float]) -> Callable[[dict[str, torch.Tensor], float], None]:
    """A baseline pruner: concatenate |w|, select the k-th smallest with `select`, zero what is not above
    it (the same count as the zoo's unless the threshold is tied, which these weights' is not)."""
    def prune(weights: dict[str, torch.Tensor], sparsity: float) -> None:
        flat = torch.cat([w.detach().reshape(-1) for w in weights.values()]).abs_()
        k = int(sparsity * flat.numel())
        threshold = select(flat, k)
        with torch.no_grad():
            for w in weights.values():
                w.mul_(w.abs() > threshold)
    return prune


def numpy_only(weights: dict[str, torch.Tensor], sparsity: float) -> None:
    """The np.partition baseline without torch operations (one thread throughout, as the zoo's passes)."""
    arrays = [w.detach().numpy() for w in weights.values()]
    flat = np.abs(np.concatenate([a.reshape(-1) for a in arrays]))
    k = int(sparsity * flat.size)
    threshold = np.partition(flat, k - 1)[k - 1]
    for a in arrays:
        np.copyto(a, 0, where=np.abs(a) <= threshold)


BASELINES = {
    "np.partition": exact_threshold_by(lambda flat, k: float(np.partition(flat.numpy(), k - 1)[k - 1])),
    "np.partition, numpy only": numpy_only,
    "torch.kthvalue": exact_threshold_by(lambda flat, k: float(flat.kthvalue(k).values)),
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
    scratch = Path(tempfile.mkdtemp(prefix="bench_prune-"))
    cache_file = scratch / "selection.json"
    os.environ["ZOO_SELECTION_CACHE"] = str(cache_file)  # never the user's file
    load_before = os.getloadavg()

    def zoo(method: str | None = None) -> Callable[[], None]:
        return lambda: apply_magnitude_pruning(model, args.sparsity, scope="global", selection=method)

    def first_call(read_file: bool) -> Callable[[], None]:
        def run() -> None:
            selection.forget_choices()
            if not read_file:
                cache_file.unlink(missing_ok=True)
            apply_magnitude_pruning(model, args.sparsity, scope="global")
        return run

    start = time.perf_counter()
    zoo(None)()  # the process's first pruning: makes the choice (and warms up) before the rounds
    cold = time.perf_counter() - start
    rows: dict[str, Callable[[], None]] = {
        "zoo, automatic choice: steady state": zoo(None),
        "zoo, automatic choice: first call, measuring": first_call(read_file=False),
        "zoo, automatic choice: first call, choice from the cache file": first_call(read_file=True),
    }
    rows.update({f"zoo, `{name}` forced": zoo(name) for name in selection.METHODS})
    rows.update({f"concat + `{name}` (baseline)": (lambda p=prune: p(prunable_weights(model), args.sparsity))
                 for name, prune in BASELINES.items()})
    times: dict[str, list[float]] = {name: [] for name in rows}
    zeros: dict[str, int] = {}
    for round_index in range(args.repeats):
        for name, run in rows.items():
            if "torch.sort" in name and round_index > 0:
                continue
            model.load_state_dict(original)
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            zeros[name] = sum(int((w == 0).sum()) for w in prunable_weights(model).values())
    load_after = os.getloadavg()
    shutil.rmtree(scratch)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    fastest_baseline = min(s for name, s in seconds.items() if "baseline" in name)
    choice = selection.chosen()[selection.size_class(n)]

    print(f"CPU: {selection.cpu_model()}; torch {torch.__version__}, numpy {np.__version__}, "
          f"{torch.get_num_threads()} torch threads; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{args.arch}: {n:,} prunable weights, sparsity {args.sparsity}: floor(s n) = {int(args.sparsity * n):,}; "
          f"zeros after each method: {sorted(set(zeros.values()))}")
    print(f"chosen selection method: {choice.method} (measured on {choice.measurement.measured_on:,} values after "
          f"screening on {choice.measurement.screened_on:,}; extrapolated to {n:,}: "
          + ", ".join(f"{name} {s:.3f} s" for name, s in choice.seconds(n).items())
          + (f"; screened out: {', '.join(choice.measurement.screened_out)}" if choice.measurement.screened_out else "")
          + ")\n")
    print(f"the process's first pruning (choice measured, cold): {cold:.3f} s\n")
    print("| method | seconds (median) | x fastest baseline |\n|---|---:|---:|")
    for name, s in seconds.items():
        runs = len(times[name])
        print(f"| {name}{' (1 run)' if runs == 1 else ''} | {s:.3f} | {s / fastest_baseline:.2f} |")
    steady = seconds["zoo, automatic choice: steady state"]
    print(f"\ntarget <= fastest baseline: {'met' if steady <= fastest_baseline else 'NOT met'}; "
          f"target <= 0.3 s: {'met' if steady <= 0.3 else 'NOT met'} ({steady:.3f} s)")


if __name__ == "__main__":
    main()
