"""MAT vs a Transformer of equal size on numbers_en_de (SacreBLEU of beam search, test split).

Runs, each seeded as the zoo trains its bases:
  transformer        transformer.zoo_numbers, EPOCHS epochs from scratch (the baseline)
  transformer_small  transformer_small.zoo_numbers, EPOCHS/2 epochs (MAT's starting point, N = 1)
  mat_proximal       mat.zoo_numbers: proximal init from transformer_small, EPOCHS/2 more epochs
                     (same total number of epochs as the baseline; same number of weights)
  mat_scratch        (--scratch) mat.zoo_numbers' architecture trained EPOCHS epochs from random init
  mat_rho0           (--rho0) proximal init as mat_proximal but without drop-branch

    python benchmarks/bench_translation.py [--epochs 16] [--scratch] [--rho0] [--out bench_translation.json]

With `--branches N...` it runs the MAT paper's CPU check instead: transformer_small, then MAT proximally
initialized from it with each number of branches N and each drop-branch rate in `--rhos` (N = 1 only
without drop-branch: it continues training the Transformer), EPOCHS/2 more epochs each:

    python benchmarks/bench_translation.py --branches 1 2 3 --rhos 0 0.1 0.3 --out mat_sweep.json

Prints a Markdown table (BLEU, exact match, weights, training seconds) and writes it as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from zoo.families.translation.entries import EPOCHS
from zoo.evaluation import EVAL_BATCH_SIZE
from zoo.models import get_entry
from zoo.native import train_base_model
from zoo.options import TrainOptions
from zoo.tasks import task_of


def evaluate(model, entry) -> dict[str, float]:
    task = task_of(entry)
    batches = task.batches(entry, entry.eval_data, batch_size=EVAL_BATCH_SIZE, shuffle=False)
    return task.evaluate(model, batches, entry, progress=False).metrics


def row(name: str, model, entry, seconds: float, epochs: int) -> dict:
    metrics = evaluate(model, entry)
    weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {"run": name, "entry": entry.name, "epochs": epochs, "weights": weights, "train_s": round(seconds, 1),
              **{k: round(v, 4) for k, v in metrics.items()}}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--scratch", action="store_true", help="also train MAT from random init")
    parser.add_argument("--rho0", action="store_true", help="also train MAT without drop-branch")
    parser.add_argument("--branches", type=int, nargs="*", default=[], help="MAT branch counts to sweep")
    parser.add_argument("--rhos", type=float, nargs="*", default=[0.0, 0.1, 0.3], help="drop-branch rates to sweep")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench_translation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    half = args.epochs // 2
    base, small, mat = (get_entry(n) for n in ("transformer.zoo_numbers", "transformer_small.zoo_numbers",
                                                "mat.zoo_numbers"))
    rows = []
    if args.branches:
        rows = sweep(small, mat, half, args.branches, args.rhos)
        write(rows, args)
        return
    start = time.perf_counter()
    model = train_base_model(base, options=TrainOptions(epochs=args.epochs))
    rows.append(row("transformer", model, base, time.perf_counter() - start, args.epochs))
    start = time.perf_counter()
    small_model = train_base_model(small, options=TrainOptions(epochs=half))
    small_seconds = time.perf_counter() - start
    rows.append(row("transformer_small", small_model, small, small_seconds, half))
    start = time.perf_counter()
    model = train_base_model(mat, init=small_model, options=TrainOptions(epochs=half))
    rows.append(row("mat_proximal", model, mat, small_seconds + time.perf_counter() - start, args.epochs))
    if args.rho0:
        rho0 = dataclasses.replace(mat, model_kwargs={**mat.model_kwargs, "drop_branch": 0.0})
        start = time.perf_counter()
        model = train_base_model(rho0, init=small_model, options=TrainOptions(epochs=half))
        rows.append(row("mat_proximal_rho0", model, rho0, small_seconds + time.perf_counter() - start, args.epochs))
    if args.scratch:
        start = time.perf_counter()
        scratch = dataclasses.replace(mat, train=dataclasses.replace(mat.train, init_from=None))
        model = train_base_model(scratch, options=TrainOptions(epochs=args.epochs))
        rows.append(row("mat_scratch", model, scratch, time.perf_counter() - start, args.epochs))
    write(rows, args)


def sweep(small, mat, epochs: int, branches: list[int], rhos: list[float]) -> list[dict]:
    """transformer_small, then proximal MAT for every (N, rho); N = 1 only at rho = 0."""
    start = time.perf_counter()
    small_model = train_base_model(small, options=TrainOptions(epochs=epochs))
    rows = [row("transformer_small", small_model, small, time.perf_counter() - start, epochs)]
    for n in branches:
        for rho in rhos if n > 1 else [0.0]:
            entry = dataclasses.replace(mat, model_kwargs={**mat.model_kwargs, "branches": n, "drop_branch": rho})
            start = time.perf_counter()
            model = train_base_model(entry, init=small_model, options=TrainOptions(epochs=epochs))
            rows.append(row(f"mat N={n} rho={rho:g}", model, entry, time.perf_counter() - start, 2 * epochs))
    return rows


def write(rows: list[dict], args: argparse.Namespace) -> None:
    print("\n| run | entry | epochs | weights | BLEU | exact match | train s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['entry']} | {r['epochs']} | {r['weights']:,} | {r['bleu']:.2f} | "
              f"{100 * r['exact_match']:.1f} % | {r['train_s']} |")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"epochs": args.epochs, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
