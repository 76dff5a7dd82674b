"""Channel pruning pays in eager PyTorch: latency (batch 1) and FLOPs of the digits architectures,
dense vs 25 % and 50 % of their channels pruned (`zoo.compress.apply_channel_pruning`, widths rounded
to multiples of 8, the entry's `keep_dense` layers keeping their output channels, as `_ch25` / `_ch50`
do), side by side in one process.

    python benchmarks/bench_structured.py [--threads 2] [--rounds 5] [--seconds 0.3]

Random weights (seed 0): latency does not depend on their values. The rows are timed round-robin, one
`measure_latency` of each per round, so that a load passing on the shared machine hits them alike;
the table gives the median over rounds and the speed-up over the dense model of the same architecture.
"""
from __future__ import annotations

import argparse
import platform
import statistics

import torch

from zoo.compress.structured import apply_channel_pruning
from zoo.evaluate.flops import count_flops
from zoo.evaluate.latency import measure_latency
from zoo.models import build_model, get_entry

ENTRIES = ("resnet18.zoo_digits", "mobilenetv2_050.zoo_digits")
FRACTIONS = (0.0, 0.25, 0.5)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.3, help="min_run_time of each latency measure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in ENTRIES:
        entry = get_entry(name)
        example = torch.zeros(entry.input.example_shape(1))
        for fraction in FRACTIONS:
            torch.manual_seed(0)
            model = build_model(entry)
            if fraction:
                apply_channel_pruning(model, fraction, example, keep=entry.keep_dense, round_to=8)
            params = sum(p.numel() for p in model.parameters())
            rows.append({"name": name, "fraction": fraction, "model": model.eval(), "example": example,
                         "flops": count_flops(model, example).dense, "params": params, "ms": []})
    for _ in range(args.rounds):
        for row in rows:
            row["ms"].append(measure_latency(row["model"], row["example"], min_run_time=args.seconds).median_ms)
    print(f"{cpu_model()}, torch {torch.__version__}, {args.threads} threads, batch 1, "
          f"median of {args.rounds} rounds\n")
    print("| model (input) | channels pruned | MFLOPs | params | eager latency | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    dense = {}
    for row in rows:
        ms = statistics.median(row["ms"])
        dense.setdefault(row["name"], (ms, row["flops"]))
        shape = "x".join(map(str, row["example"].shape[1:]))
        print(f"| {row['name'].split('.')[0]} ({shape}) | {row['fraction']:.0%} | {row['flops'] / 1e6:.1f} "
              f"({row['flops'] / dense[row['name']][1]:.2f}x) | {row['params']:,} | {ms:.3f} ms | "
              f"{dense[row['name']][0] / ms:.2f}x |")


if __name__ == "__main__":
    main()
