"""Quantization-aware training on a zoo-native CNN, reproduced small (issue 11's second and third tables):
STE proxies at 2-bit activations (Yin et al., ICLR 2019) and BCGD against BinaryConnect for binary and
ternary weights (Yin et al. 2018), all through the zoo's own `zoo.compress.lowbit.apply_qat`.

    python benchmarks/bench_qat.py --plot benchmarks/results/bench_qat.png   # 42 runs: 22 min (1 thread, shared)
    python benchmarks/bench_qat.py --study ste --start scratch                # study 1 from random weights
    python benchmarks/bench_qat.py --quick --plot /tmp/quick.png             # smoke run, a few seconds

The model: `resnet18.zoo_digits` (timm's ResNet-18 the zoo trains on scikit-learn's digits), its trained
dense base loaded with `zoo.load` (the local hub or the variant cache of the default `Store`, which
`$ZOO_HUB` / `$ZOO_CACHE` move; a base found nowhere is trained there first, as `zoo.load` always does).
Every run starts from a copy of those weights (`--start scratch` / `both`: study 1 from the entry's
random initialization, seeded by the run's seed, instead / as well), fine-tunes with `apply_qat` on the
entry's training split (its batch size and loss: cross-entropy with its label smoothing), the batches
shuffled with the run's seed, and keeps the entry's `keep_dense` layers (ResNet: the stem conv and the
classifier) in float, as BCGD's 65.46 % ImageNet result did. Same epochs, learning rate and schedule
(zoo.training: warm-up + cosine) for every arm of a study.

Study 1, STE proxies: weights 4 bits per channel (symmetric), layer inputs 2 bits calibrated on 8 batches
(`act_percentile` 99.99), `ste` identity, relu, clipped_relu; plus a w4a32 row (float activations) that
shows what the 4-bit weights alone cost. Weights stepped by plain STE (SGD with momentum). 4-bit and not
2-bit weights: the paper quantizes activations only and `apply_qat` has no float-weight setting; 4 bits
per channel cost little on their own (the w4a32 row), so the rows differ by the activation STE.
`apply_qat` quantizes each layer's *input* and leaves the network's own ReLUs in place, so inside the
ResNet every quantized input is a ReLU output (>= 0; calibration makes the range unsigned): the identity
and ReLU proxies then pass the same gradients (the ReLU before already zeroes x < 0) and only clipped ReLU
differs (no gradient above alpha). In the paper the quantizer replaces the ReLU.

Study 2, weights: binary (bits_w=1: sign times mean |w|) and ternary (TWN scaling; stored in 2 bits),
per tensor as in the BCGD paper, float activations. Ternary rather than `bits_w=2`: the zoo's 2-bit
symmetric grid has the same three levels with scale absmax, which rounds almost every weight of a tensor
to 0; the paper's ternary / 2-bit grids use an optimal scale, as TWN does. `weight_update` "ste" (SGD
with momentum on the float weights), "bcgd" with rho = 0 (BinaryConnect: no momentum on the quantized
layers' weights) and with each rho of `rhos`. BCGD arms get `bcgd_lr` (plain gradient steps; a
momentum-0.9 SGD step is about ten times its learning rate, so `bcgd_lr` defaults to ten times `lr`).
The paper's rho ~ 1e-5 relaxes w toward Q(w) by about rho x steps in all; with 3 epochs of 23 steps that
is 7e-4, hence the larger rhos too.

Measured per run: the training loss of every step (the model in training mode, weights and inputs
fake-quantized: the loss that was differentiated), its mean over the last epoch; after `apply_qat` has put
the weights on their grids, one separate pass over the training split in eval mode (the final quantized
model's training loss, "final train loss" in the tables); and the task metric of the entry on its
evaluation split (`task_of(entry).evaluate`: top-1 accuracy on the 360 held-out digits). Tables give the
mean +- sample standard deviation over seeds.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import zoo
from zoo.compress import RecipeContext
from zoo.compress.lowbit import apply_qat
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.models import build_model, get_entry
from zoo.tasks import task_of

PROXIES = ("identity", "relu", "clipped_relu")
STARTS = ("trained", "scratch")
STUDIES = ("ste", "weights")


@dataclass(frozen=True)
class Setting:
    base: str = "resnet18.zoo_digits"
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    lr: float = 0.01                 # STE arms: SGD (Nesterov momentum 0.9) on the float weights
    bcgd_lr: float = 0.1             # BCGD arms: plain steps on the quantized layers' weights
    act_bits: int = 2                # study 1
    act_weight_bits: int = 4         # study 1's weights (per channel)
    weight_bits: tuple[int | str, ...] = (1, "ternary")   # study 2 (per tensor, float activations)
    rhos: tuple[float, ...] = (1e-5, 1e-3, 1e-2)         # study 2's BCGD arms besides rho = 0
    starts: tuple[str, ...] = ("trained",)               # study 1's starting points
    weights_start: str = "trained"                       # study 2's starting point
    max_steps: int | None = None     # batches per epoch (and per training-loss pass); None: all
    calibration_batches: int = 8
    studies: tuple[str, ...] = ("ste", "weights")


QUICK = Setting(base="test_resnet.zoo_digits", seeds=(0,), epochs=1, weight_bits=(1,), rhos=(1e-2,),
                starts=("scratch",), weights_start="scratch", max_steps=3, calibration_batches=2)


@dataclass(frozen=True)
class Arm:
    """One configuration: `study` "ste" (proxies at low-bit activations) or "weights" (BCGD, BinaryConnect,
    STE at binary / ternary weights); `qat` the keyword arguments of `apply_qat` besides the training ones."""

    study: str
    label: str
    start: str
    qat: dict[str, Any] = field(hash=False, compare=False)


@dataclass
class Run:
    arm: Arm
    seed: int
    step_losses: list[float]
    steps_per_epoch: int
    final_train_loss: float
    metric: float
    seconds: float

    @property
    def last_epoch_loss(self) -> float:
        return statistics.fmean(self.step_losses[-self.steps_per_epoch:])


@dataclass(frozen=True)
class Row:
    arm: Arm
    n: int
    last_epoch_loss: tuple[float, float]
    final_train_loss: tuple[float, float]
    metric: tuple[float, float]
    seconds: float


def arms(setting: Setting) -> list[Arm]:
    """Every arm of both studies, in table order."""
    for start in (*setting.starts, setting.weights_start):
        if start not in STARTS:
            raise InvalidArgumentError(f"start must be one of {STARTS}, got {start!r}")
    for study in setting.studies:
        if study not in STUDIES:
            raise InvalidArgumentError(f"study must be one of {STUDIES}, got {study!r}")
    out = []
    for start in setting.starts if "ste" in setting.studies else ():
        w = setting.act_weight_bits
        out.append(Arm("ste", f"w{w}a32 (reference)", start, dict(bits_w=w, bits_a=32)))
        a = setting.act_bits
        out += [Arm("ste", f"w{w}a{a} {proxy}", start, dict(bits_w=w, bits_a=a, ste=proxy)) for proxy in PROXIES]
    for bits in setting.weight_bits if "weights" in setting.studies else ():
        name = "binary" if bits == 1 else str(bits)
        grid = dict(bits_w=bits, bits_a=32, granularity="tensor")
        out.append(Arm("weights", f"{name} STE (momentum)", setting.weights_start, dict(grid, weight_update="ste")))
        out += [Arm("weights", f"{name} BCGD rho={rho:g}" + (" (BinaryConnect)" if rho == 0 else ""),
                    setting.weights_start, dict(grid, weight_update="bcgd", rho=rho)) for rho in (0.0, *setting.rhos)]
    return out


def recipe_context(entry: ModelEntry, seed: int, record: list[float], max_steps: int | None) -> RecipeContext:
    """The entry's fine-tuning data (its training split and loss, as `zoo.api` builds it) with the batches
    shuffled by `seed`, each step's loss appended to `record`, at most `max_steps` batches per epoch."""
    task, spec = task_of(entry), entry.train
    if spec is None:
        raise InvalidArgumentError(f"{entry.name} has no training recipe: QAT needs its training data")

    def epoch(e: int) -> Iterable[Any]:
        loader = task.batches(entry, spec.data, batch_size=spec.batch_size, shuffle=True, seed=seed).epoch(e)
        return loader if max_steps is None else list(itertools.islice(loader, max_steps))

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        loss = task.loss(model, batch, entry)
        record.append(float(loss.detach()))
        return loss

    return RecipeContext(train_batches=epoch, loss_fn=loss_fn, progress=False, seed=seed,
                         calibration_batches=lambda: (task.model_inputs(b) for b in epoch(0)))


@torch.no_grad()
def train_loss(model: nn.Module, entry: ModelEntry, max_steps: int | None) -> float:
    """The mean loss of `model` (eval mode) over the entry's training split, in order, weighted by batch size."""
    task, spec = task_of(entry), entry.train
    loader = task.batches(entry, spec.data, batch_size=spec.batch_size, shuffle=False).epoch(0)
    total = count = 0.0
    for batch in itertools.islice(loader, max_steps):
        size = len(batch[-1])
        total += float(task.loss(model.eval(), batch, entry)) * size
        count += size
    return total / count


def evaluate(model: nn.Module, entry: ModelEntry) -> float:
    task = task_of(entry)
    batches = task.batches(entry, entry.eval_data, batch_size=256, shuffle=False)
    return task.evaluate(model.eval(), batches, entry, progress=False).metrics[task.primary.key]


def starting_model(entry: ModelEntry, start: str, seed: int, trained: Callable[[], nn.Module]) -> nn.Module:
    if start == "trained":
        return copy.deepcopy(trained())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(entry)


def run_arm(arm: Arm, seed: int, setting: Setting, entry: ModelEntry, trained: Callable[[], nn.Module]) -> Run:
    model = starting_model(entry, arm.start, seed, trained).train()
    losses: list[float] = []
    context = recipe_context(entry, seed, losses, setting.max_steps)
    bcgd = arm.qat.get("weight_update") == "bcgd"
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        apply_qat(model, context, epochs=setting.epochs, lr=setting.bcgd_lr if bcgd else setting.lr,
                  calibration_batches=setting.calibration_batches, keep_fp=entry.keep_dense, **arm.qat)
    seconds = time.perf_counter() - started
    steps = len(losses) // setting.epochs
    return Run(arm, seed, losses, steps, train_loss(model, entry, setting.max_steps), evaluate(model, entry), seconds)


def run_benchmark(setting: Setting, progress: bool = True) -> list[Run]:
    if not setting.seeds:
        raise InvalidArgumentError("at least one seed is needed")
    entry = get_entry(setting.base)
    base: list[nn.Module] = []

    def trained() -> nn.Module:
        if not base:
            base.append(zoo.load(setting.base, progress=progress))
        return base[0]

    jobs = [(arm, seed) for arm in arms(setting) for seed in setting.seeds]
    return [run_arm(arm, seed, setting, entry, trained)
            for arm, seed in tqdm(jobs, desc="QAT runs", disable=not progress, file=sys.stderr)]


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); the deviation of a single value is 0."""
    if not values:
        raise InvalidArgumentError("no values to average")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[Run]) -> list[Row]:
    """One row per arm, in the order the arms first appear in `runs`."""
    by_arm: dict[Arm, list[Run]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run)
    return [Row(arm, len(group), mean_std([r.last_epoch_loss for r in group]),
                mean_std([r.final_train_loss for r in group]), mean_std([r.metric for r in group]),
                statistics.fmean(r.seconds for r in group)) for arm, group in by_arm.items()]


def _pm(value: tuple[float, float], digits: int, scale: float = 1.0) -> str:
    return f"{value[0] * scale:.{digits}f} +- {value[1] * scale:.{digits}f}"


def markdown(rows: list[Row], setting: Setting) -> str:
    head = ("| arm | start | seeds | train loss, last epoch | final train loss | test accuracy % | s / run |\n"
            "|---|---|---:|---:|---:|---:|---:|")
    out = []
    for study, title in (("ste", f"### Study 1: STE proxies, {setting.act_weight_bits}-bit weights, "
                                 f"{setting.act_bits}-bit activations"),
                         ("weights", "### Study 2: binary / ternary weights, float activations")):
        body = [f"| {r.arm.label} | {r.arm.start} | {r.n} | {_pm(r.last_epoch_loss, 4)} | {_pm(r.final_train_loss, 4)} "
                f"| {_pm(r.metric, 2, 100)} | {r.seconds:.1f} |" for r in rows if r.arm.study == study]
        if body:
            out += [title, "", head, *body, ""]
    return "\n".join(out)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over at most `window` values (the first points average what exists)."""
    if window < 1:
        raise InvalidArgumentError(f"window must be >= 1, got {window}")
    sums = list(itertools.accumulate(values, initial=0.0))
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def mean_curve(runs: list[Run]) -> list[float]:
    """The step-wise mean of the runs' loss curves (over the steps all of them have)."""
    length = min(len(r.step_losses) for r in runs)
    return [statistics.fmean(r.step_losses[i] for r in runs) for i in range(length)]


def plot(runs: list[Run], setting: Setting, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("ste", start, f"study 1: w{setting.act_weight_bits}a{setting.act_bits}, from {start}")
              for start in setting.starts if "ste" in setting.studies]
    panels += [("weights", str(bits), f"study 2: {'binary' if bits == 1 else bits} weights, a32")
               for bits in setting.weight_bits if "weights" in setting.studies]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (study, key, title) in zip(axes[0], panels):
        groups: dict[Arm, list[Run]] = {}
        for run in runs:
            matches = run.arm.start == key if study == "ste" else str(run.arm.qat["bits_w"]) == key
            if run.arm.study == study and matches:
                groups.setdefault(run.arm, []).append(run)
        for arm, group in groups.items():
            curve = mean_curve(group)
            ax.plot(smooth(curve, max(1, group[0].steps_per_epoch // 2)), label=arm.label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(f"training loss (mean of {len(setting.seeds)} seeds, smoothed)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model from scratch, 1 seed, 3 steps")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--start", choices=(*STARTS, "both"), default=None,
                        help="study 1's starting point(s) (default: the trained base)")
    parser.add_argument("--study", choices=STUDIES, default=None, help="run one study only (default: both)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine two OpenMP threads "
                             "competing with other processes ran up to 20x slower)")
    parser.add_argument("--plot", type=Path, default=None, help="write the loss curves to this PNG")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else Setting()
    if args.seeds is not None:
        setting = replace(setting, seeds=tuple(range(args.seeds)))
    if args.epochs is not None:
        setting = replace(setting, epochs=args.epochs)
    if args.start is not None:
        setting = replace(setting, starts=STARTS if args.start == "both" else (args.start,))
    if args.study is not None:
        setting = replace(setting, studies=(args.study,))
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    runs = run_benchmark(setting)
    print(f"{setting.base}, {len(setting.seeds)} seeds, {setting.epochs} epochs, lr {setting.lr} (STE arms) / "
          f"{setting.bcgd_lr} (BCGD arms), {torch.get_num_threads()} threads, "
          f"{time.perf_counter() - started:.0f} s in all\n")
    print(markdown(summarize(runs), setting))
    if args.plot is not None:
        plot(runs, setting, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
