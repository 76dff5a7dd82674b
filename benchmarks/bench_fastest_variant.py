"""The issue's headline ratios: the fastest variant of a base, within 1 point of the dense model's primary
metric, in its fastest runtime, against the dense model in eager PyTorch and in that same runtime.

    python benchmarks/bench_fastest_variant.py [--base resnet18.zoo_digits] [--variants base,gmp90,...]
                                               [--rounds 5] [--threads 2] [--seconds 0.3]

Each variant is loaded with `zoo.load` (derived, fine-tuned and measured now when it is not cached yet);
its metric is its report's primary metric (the task's `primary`, on the split the report names). The
latency is measured here, side by side in one process: batch 1 (the task's example shape), `--threads`
intra-op threads, every (variant, runtime) session built before any timing, then `--rounds` rounds each
timing every (variant, runtime) once for `--seconds` (round-robin, so that a load passing on a shared
machine hits them alike); the table gives the median over rounds.

Before timing, each graph runtime's output is checked against the variant's own torch output on seeded
random inputs by the evaluator's own rule (`zoo.runtimes.agreement.disagreement`: fp32 and int8 graphs
each by theirs); one that disagrees is still timed and shown, marked, but cannot be picked. A variant is eligible when its metric is within 1 point
of the dense base's (a point: 0.01 of a metric in [0, 1], else 1 unit of it), in the metric's own
direction. The pick is the eligible (variant, runtime) with the lowest median; the ratios are the dense
model's eager median and its median in the pick's runtime, each divided by the pick's median.
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field

import torch
from torch import nn
from zoo.evaluate import current_machine
from zoo.evaluate.latency import measure_latency

import zoo
from zoo.errors import InvalidArgumentError
from zoo.models import get_entry
from zoo.runtimes import RUNTIMES
from zoo.runtimes.agreement import check_inputs, disagreement
from zoo.runtimes.qdq import quantizes_inputs
from zoo.tasks import MetricSpec, task_of

VISION_VARIANTS = ("base", "gmp90", "int8", "ch25", "ch50", "ch75", "ch25_int8", "ch50_int8")
TRANSFORMER_VARIANTS = ("base", "gmp90", "int8", "hd25", "hd50", "hd75", "hd25_int8", "hd50_int8")


@dataclass
class Cell:
    """One (variant, runtime): its callable module, whether it agrees with torch, its medians per round."""

    model: nn.Module
    disagrees: str | None = None  # zoo.runtimes.agreement's reason, None when it agrees
    ms: list[float] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return self.disagrees is None

    @property
    def median(self) -> float:
        return statistics.median(self.ms)


def default_variants(base: str) -> tuple[str, ...]:
    """Channel pruning for image classifiers, head/FFN pruning for the rest (the transformer families)."""
    return VISION_VARIANTS if task_of(get_entry(base)).name == "image-classification" else TRANSFORMER_VARIANTS


def variant_name(base: str, suffix: str) -> str:
    return base if suffix == "base" else f"{base}_{suffix}"


def one_point(metric: MetricSpec) -> float:
    return 0.01 if metric.unit == "fraction" else 1.0


def within_one_point(value: float, dense: float, metric: MetricSpec) -> bool:
    point = one_point(metric)
    return value >= dense - point if metric.higher_is_better else value <= dense + point


def check_input(example: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The example's shapes with seeded random values where they are floats (a zero image would check
    little); integer inputs (token ids) are kept as the task gives them."""
    generator = torch.Generator().manual_seed(0)
    inputs = example if isinstance(example, tuple) else (example,)
    return tuple(torch.rand(t.shape, generator=generator) if t.is_floating_point() else t for t in inputs)


def metric_of(model: nn.Module, metric: MetricSpec) -> float:
    report = model.zoo.report
    if report is None or metric.key not in report.metrics:
        why = report.eval_data_missing if report is not None else "no report"
        raise InvalidArgumentError(f"{model.zoo.name} has no {metric.key} in its report ({why})")
    return report.metrics[metric.key]


def load_cells(names: list[str],
               inputs: tuple[torch.Tensor, ...]) -> tuple[dict[str, nn.Module], dict[tuple[str, str], Cell]]:
    """Every variant in every runtime, loaded (and derived where needed) and checked, before any timing.
    Returns the torch models by name and the cells by (name, runtime)."""
    models, cells = {}, {}
    for name in names:
        print(f"loading {name}", flush=True)
        model = models[name] = zoo.load(name, progress=False)
        cells[name, "torch"] = Cell(model)
        for runtime in RUNTIMES[1:]:
            session = zoo.load(name, runtime=runtime, progress=False)
            cells[name, runtime] = Cell(session, disagreement(session, model, check_inputs(inputs),
                                                              int8=quantizes_inputs(model)))
    return models, cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="resnet18.zoo_digits")
    parser.add_argument("--variants", default=None,
                        help="comma-separated suffixes ('base' for the dense model); default: "
                             f"{','.join(VISION_VARIANTS)} for image classifiers, "
                             f"{','.join(TRANSFORMER_VARIANTS)} for the others")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.3, help="min_run_time of each latency measurement")
    args = parser.parse_args()
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be >= 1")
    suffixes = args.variants.split(",") if args.variants else list(default_variants(args.base))
    if "base" not in suffixes:
        suffixes.insert(0, "base")  # the ratios are against it
    torch.set_num_threads(args.threads)  # before zoo.load: graph sessions take torch's thread count
    entry = get_entry(args.base)
    task = task_of(entry)
    metric = task.primary
    names = [variant_name(args.base, s) for s in suffixes]
    example = task.example_input(entry)
    inputs = check_input(example)
    models, cells = load_cells(names, inputs)

    for _ in range(args.rounds):
        for cell in cells.values():
            cell.ms.append(measure_latency(cell.model, inputs, min_run_time=args.seconds,
                                           num_threads=args.threads).median_ms)

    dense_metric = metric_of(models[args.base], metric)
    print(f"\n{args.base}: {task.describe_example(entry)}, batch 1, median of {args.rounds} rounds; "
          f"{metric.name} ({metric.key}) from each report, split {models[args.base].zoo.report.split}")
    print(f"Machine: {current_machine(args.threads).summary()}\n")
    print("| variant | " + metric.key + " | " + " | ".join(f"{r} ms" for r in RUNTIMES) + " |")
    print("|---|---:|" + "---:|" * len(RUNTIMES))
    candidates = []
    for name in names:
        value = metric_of(models[name], metric)
        eligible = within_one_point(value, dense_metric, metric)
        row = []
        for runtime in RUNTIMES:
            cell = cells[name, runtime]
            text = f"{cell.median:.3f}"
            if not cell.agrees:
                text += " (disagrees)"
            elif eligible:
                candidates.append((cell.median, name, runtime))
            row.append(text)
        mark = "" if eligible else " (not within 1 point)"
        label = name.removeprefix(args.base) or "(dense)"
        print(f"| {label} | {metric.format(value)}{mark} | " + " | ".join(row) + " |")

    for name in names:
        report = models[name].zoo.report
        for runtime, why in (report.runtime_errors if report is not None else {}).items():
            print(f"report.runtime_errors of {name}: {runtime}: {why}")
    if not candidates:
        print("\nno (variant, runtime) within 1 point whose runtime agrees with torch")
        return
    best_ms, best_name, best_runtime = min(candidates)
    dense_eager = cells[args.base, "torch"].median
    same = cells[args.base, best_runtime]
    print(f"\nfastest within 1 point: {best_name} in {best_runtime}, {best_ms:.3f} ms")
    print(f"vs dense in eager torch ({dense_eager:.3f} ms): {dense_eager / best_ms:.2f}x")
    same_text = f"{same.median / best_ms:.2f}x" if same.agrees else "n/a (dense graph differs from torch)"
    print(f"vs dense in {best_runtime} ({same.median:.3f} ms): {same_text}")


if __name__ == "__main__":
    main()
