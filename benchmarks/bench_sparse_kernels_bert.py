"""A BERT classifier of the zoo (the `mcbert_mini.zoo_pydoc_ft_stdlib` entry's architecture, or the same
architecture at BERT-base size with `--size base`), 90 % unstructured sparse, dense kernels vs the
per-layer choice of `use_sparse_kernels`, batch 1 at 1, 16 and 128 tokens, side by side in one process.

Weights are random (latency does not depend on their values) and every encoder Linear is pruned to
`--sparsity` by magnitude, layer by layer; embeddings and the classifier head stay dense (the entry's
keep_dense). The entry's 64 positions are raised to the longest sequence measured. The sparse model's
kernels are chosen anew for each length (rows = tokens). Reported: median milliseconds per forward over
`--repeats` alternating runs, the speed-up, and how many layers went sparse.

    python benchmarks/bench_sparse_kernels_bert.py --tokens 1 16 128 --threads 1
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import torch
from torch import nn
from zoo.compress.sparse_kernels import DENSE, use_sparse_kernels

import zoo
from zoo.models import build_model

ENTRY = "mcbert_mini.zoo_pydoc_ft_stdlib"
BASE = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("mini", "base"), default="mini")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def pruned_classifier(size: str, sparsity: float, positions: int) -> nn.Module:
    entry = zoo.get_entry(ENTRY)
    kwargs = {**entry.model_kwargs, "max_positions": max(positions, entry.model_kwargs["max_positions"]),
              **(BASE if size == "base" else {})}
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(entry, model_kwargs=kwargs)).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module) is nn.Linear and "classifier" not in name:
                magnitudes = module.weight.abs().flatten()
                k = int(sparsity * magnitudes.numel())
                threshold = magnitudes.kthvalue(k).values
                module.weight.mul_(module.weight.abs() > threshold)
    return model


def milliseconds(model: nn.Module, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model(ids)
        return 1e3 * (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    dense = pruned_classifier(args.size, args.sparsity, max(args.tokens))
    print(f"{ENTRY} architecture, {args.size} size, {args.sparsity:.0%} unstructured (encoder linears), batch 1, "
          f"{args.threads} thread(s), median of {args.repeats}; torch {torch.__version__}")
    print("| tokens | dense ms | sparse kernels ms | speed-up | layers sparse |\n|---:|---:|---:|---:|---|")
    for tokens in args.tokens:
        ids = torch.randint(6, 512, (1, tokens))
        sparse = copy.deepcopy(dense)
        choices = use_sparse_kernels(sparse, ids)
        chosen = sorted({c.layout for c in choices.values() if c.layout != DENSE})
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        for model in (dense, sparse):
            for _ in range(3):
                milliseconds(model, ids)  # warm-up
        for _ in range(args.repeats):
            times["dense"].append(milliseconds(dense, ids))
            times["sparse"].append(milliseconds(sparse, ids))
        d, s = statistics.median(times["dense"]), statistics.median(times["sparse"])
        n_sparse = sum(c.layout != DENSE for c in choices.values())
        print(f"| {tokens} | {d:.3f} | {s:.3f} | {d / s:.2f}x | {n_sparse} of {len(choices)} "
              f"({', '.join(chosen) or 'none'}) |")


if __name__ == "__main__":
    main()
