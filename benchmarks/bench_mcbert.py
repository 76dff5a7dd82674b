"""MC-BERT vs its masked-LM baseline of equal main-model size, on the same text, at the same number of
pre-training epochs: pre-training metrics, training time and FLOPs, then the downstream task
(stdlib docstring topics) fine-tuned from each, and from random initialization as the control.

    python benchmarks/bench_mcbert.py [--arch mini|test] [--part all|mcbert|bert|scratch] [--threads 2]
                                      [--out mcbert_bench.json]

(`--part` runs one arm, so the three can run side by side; the numbers do not depend on it.)

Uses the registered entries' TrainSpecs unchanged (`<arch>.zoo_pydoc`, `<arch>.zoo_pydoc_ft_stdlib`,
`bert_<arch>.zoo_stdlib`); prints a Markdown table and writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from zoo.evaluate import count_flops
from zoo.models import MODELS, get_entry
from zoo.native import train_base_model
from zoo.tasks import task_of


def evaluate(model: torch.nn.Module, name: str) -> dict[str, float]:
    entry = get_entry(name)
    task = task_of(entry)
    batches = task.batches(entry, entry.eval_data, batch_size=64, shuffle=False)
    result = task.evaluate(model, batches, entry, progress=False).metrics
    flops = count_flops(model, task.example_input(entry)).dense
    return {**result, "gflops_per_sequence": flops / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mini", choices=("mini", "test"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--part", default="all", choices=("all", "mcbert", "bert", "scratch"))
    parser.add_argument("--out", default="mcbert_bench.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prefix = {"mini": ("mcbert_mini", "bert_mini"), "test": ("test_mcbert", "test_bert")}[args.arch]
    rows: dict[str, dict[str, float]] = {}
    arms = {"all": prefix, "mcbert": prefix[:1], "bert": prefix[1:], "scratch": ()}[args.part]
    for arch in arms:
        name = f"{arch}.zoo_pydoc"
        start = time.perf_counter()
        pretrained = train_base_model(get_entry(name), progress=True)
        seconds = time.perf_counter() - start
        rows[name] = {**evaluate(pretrained, name), "train_seconds": seconds}
        print(name, rows[name], flush=True)
        classifier = f"{arch}.zoo_pydoc_ft_stdlib"
        if classifier in MODELS:
            start = time.perf_counter()
            model = train_base_model(get_entry(classifier), init=pretrained)
            rows[classifier] = {**evaluate(model, classifier), "train_seconds": time.perf_counter() - start}
            print(classifier, rows[classifier], flush=True)
    scratch = f"{prefix[1]}.zoo_stdlib"
    if scratch in MODELS and args.part in ("all", "scratch"):
        start = time.perf_counter()
        model = train_base_model(get_entry(scratch))
        rows[scratch] = {**evaluate(model, scratch), "train_seconds": time.perf_counter() - start}
    print("| model | metric | value | train s | GFLOPs/seq |\n|---|---|---|---|---|")
    for name, row in rows.items():
        for key, value in row.items():
            if key not in ("train_seconds", "gflops_per_sequence"):
                print(f"| {name} | {key} | {100 * value:.2f} % | {row['train_seconds']:.0f} | "
                      f"{row['gflops_per_sequence']:.4f} |")
    with open(args.out, "w") as f:
        json.dump({"torch_threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
