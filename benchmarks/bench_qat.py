"""Quantization-aware training on a zoo-native CNN, reproduced small (issue 11's second and third tables):
STE proxies at 2-bit activations (Yin et al., ICLR 2019) and BCGD against BinaryConnect for binary and
ternary weights (Yin et al. 2018), all through the zoo's own `zoo.compress.lowbit` (`apply_qat`,
`quantize_activation`); and distillation on vs off in the zoo's own 2-bit QAT recipe step.

    python benchmarks/bench_qat.py --study ste weights --plot benchmarks/results/bench_qat.png  # 42 runs: 22 min
    python benchmarks/bench_qat.py --study ste_relu --start both   # study 1b, from trained and from scratch
    python benchmarks/bench_qat.py --study distill                 # distillation on vs off at w2 / w2a2
    python benchmarks/bench_qat.py                                 # every study: 75 runs, about 40 min
    python benchmarks/bench_qat.py --quick --plot /tmp/quick.png   # smoke run of every study, a few seconds

(times at 1 thread on a shared 2-core machine.)

The model: `resnet18.zoo_digits` (timm's ResNet-18 the zoo trains on scikit-learn's digits), its trained
dense base loaded with `zoo.load` (the local hub or the variant cache of the default `Store`, which
`$ZOO_HUB` / `$ZOO_CACHE` move; a base found nowhere is trained there first, as `zoo.load` always does).
Every run starts from a copy of those weights (`--start scratch` / `both`: studies 1 and 1b from the
entry's random initialization, seeded by the run's seed, instead / as well), fine-tunes on the entry's
training split (its batch size and loss: cross-entropy with its label smoothing), the batches shuffled
with the run's seed, and (except study 1b, whose weights stay float) keeps the entry's `keep_dense`
layers (ResNet: the stem conv and the classifier) in float, as BCGD's 65.46 % ImageNet result did. Same
epochs, learning rate and schedule (zoo.training: warm-up + cosine) for every arm of a study.

Study 1, STE proxies: weights 4 bits per channel (symmetric), layer inputs 2 bits calibrated on 8 batches
(`act_percentile` 99.99), `ste` identity, relu, clipped_relu; plus a w4a32 row (float activations) that
shows what the 4-bit weights alone cost. Weights stepped by plain STE (SGD with momentum). 4-bit and not
2-bit weights: the paper quantizes activations only and `apply_qat` has no float-weight setting; 4 bits
per channel cost little on their own (the w4a32 row), so the rows differ by the activation STE.
`apply_qat` quantizes each layer's *input* and leaves the network's own ReLUs in place, so inside the
ResNet every quantized input is a ReLU output (>= 0; calibration makes the range unsigned): the identity
and ReLU proxies then pass the same gradients (the ReLU before already zeroes x < 0) and only clipped ReLU
differs (no gradient above alpha). In the paper the quantizer replaces the ReLU.

Study 1b, the paper's setting: every `nn.ReLU` of the model (timm ResNet-18: the stem's `act1` and each
block's `act1` / `act2`) is *replaced* by a `QuantizedReLU`: forward `quantize_activation(x, alpha, 2,
proxy)`, the 2-bit grid on [0, alpha] that clamps negative inputs to 0 (a quantized ReLU), backward the
proxy's derivative: identity passes the gradient for every x (x < 0 too), relu where x > 0, clipped relu
where 0 < x < alpha. alpha per module: the 99.9th percentile (`relu_percentile`) of its positive inputs
over 8 calibration batches, the model in training mode (batch statistics, as training computes them)
on a copy. Weights stay float, as in the paper (it quantizes activations only; 4-bit weights would add a
second estimator): `zoo.training.train` with study 1's epochs, lr, Nesterov momentum and no weight
decay, on the entry's loss.

Study 2, weights: binary (bits_w=1: sign times mean |w|) and ternary (TWN scaling; stored in 2 bits),
per tensor as in the BCGD paper, float activations. Ternary rather than `bits_w=2`: the zoo's 2-bit
symmetric grid has the same three levels with scale absmax, which rounds almost every weight of a tensor
to 0; the paper's ternary / 2-bit grids use an optimal scale, as TWN does. `weight_update` "ste" (SGD
with momentum on the float weights), "bcgd" with rho = 0 (BinaryConnect: no momentum on the quantized
layers' weights) and with each rho of `rhos`. BCGD arms get `bcgd_lr` (plain gradient steps; a
momentum-0.9 SGD step is about ten times its learning rate, so `bcgd_lr` defaults to ten times `lr`).
The paper's rho ~ 1e-5 relaxes w toward Q(w) by about rho x steps in all; with 3 epochs of 23 steps that
is 7e-4, hence the larger rhos too.

Study 2b: study 2's three updates (STE with momentum, BCGD rho = 0 and 1e-5) on the zoo's 2-bit grid
with the least-error clipped range (`bits_w=2, weight_range="mse"`, per channel), float activations.

Distillation study: the zoo's default `_w2` / `_w2_kd` (and `_w2a2` / `_w2a2_kd`) recipes, built as
`zoo.variants` builds them (`distill_recipe`): a `QATConfig` (2-bit symmetric per-channel weights with the
"mse" range, inputs float or 2-bit with the clipped-ReLU proxy at the 99.99th percentile, `keep_dense`
layers float, a tenth of the entry's lr, its weight decay and optimizer, `epochs` epochs where the zoo
takes half the base's) alone or after `DistillationConfig(teacher="base", temperature=4.0, alpha=0.5)`,
applied as a `Recipe` with the run's context. The per-step losses recorded are the task loss the
distilling loss calls (not the distilled loss); the final training loss is the task loss too.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import zoo
from zoo.compress import RecipeContext
from zoo.compress.distill import DistillationConfig
from zoo.compress.lowbit import QATConfig, apply_qat, quantize_activation
from zoo.compress.recipe import Recipe
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.models import build_model, get_entry
from zoo.tasks import task_of
from zoo.training import train
from zoo.variants import QAT_LR_FACTOR

PROXIES = ("identity", "relu", "clipped_relu")
STARTS = ("trained", "scratch")
STUDIES = ("ste", "ste_relu", "weights", "weights_w2", "distill")
BCGD_STUDIES = ("weights", "weights_w2")


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
    distill_start: str = "trained"                       # the distillation study's (and its teacher's)
    max_steps: int | None = None     # batches per epoch (and per training-loss pass); None: all
    calibration_batches: int = 8
    relu_percentile: float = 99.9    # study 1b: alpha of each quantized ReLU, percentile of its positive inputs
    w2_rhos: tuple[float, ...] = (1e-5,)                 # study 2b's BCGD arms besides rho = 0
    distillation: DistillationConfig = DistillationConfig(teacher="base", temperature=4.0, alpha=0.5)
    distill_acts: tuple[int, ...] = (32, 2)              # distillation study: w2 and w2a2
    studies: tuple[str, ...] = STUDIES
    only: str = ""                   # run only the arms whose label contains this text


QUICK = Setting(base="test_resnet.zoo_digits", seeds=(0,), epochs=1, weight_bits=(1,), rhos=(1e-2,), w2_rhos=(),
                starts=("scratch",), weights_start="scratch", distill_start="scratch", max_steps=3,
                calibration_batches=2)


@dataclass(frozen=True)
class Arm:
    """One configuration of a study (module docstring): "ste" (proxies at low-bit layer inputs), "ste_relu"
    (proxies of quantized ReLUs, float weights; `qat` holds `bits_a` and `ste` only), "weights" / "weights_w2"
    (BCGD, BinaryConnect, STE at binary / ternary / 2-bit weights), "distill" (the zoo's low-bit QAT step with
    or without the distillation step `distill` before it). `qat`: the keyword arguments of `apply_qat` (of
    `QATConfig`) besides the training ones; `group`: the plot panel the arm is drawn in."""

    study: str
    label: str
    start: str
    qat: dict[str, Any] = field(hash=False, compare=False)
    group: str = field(default="", hash=False, compare=False)
    distill: DistillationConfig | None = field(default=None, hash=False, compare=False)


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
    """Every arm of the setting's studies whose label contains `setting.only`, in table order."""
    for start in (*setting.starts, setting.weights_start, setting.distill_start):
        if start not in STARTS:
            raise InvalidArgumentError(f"start must be one of {STARTS}, got {start!r}")
    for study in setting.studies:
        if study not in STUDIES:
            raise InvalidArgumentError(f"study must be one of {STUDIES}, got {study!r}")
    out = []
    a, w = setting.act_bits, setting.act_weight_bits
    for start in setting.starts if "ste" in setting.studies else ():
        out.append(Arm("ste", f"w{w}a32 (reference)", start, dict(bits_w=w, bits_a=32), start))
        out += [Arm("ste", f"w{w}a{a} {proxy}", start, dict(bits_w=w, bits_a=a, ste=proxy), start) for proxy in PROXIES]
    for start in setting.starts if "ste_relu" in setting.studies else ():
        out.append(Arm("ste_relu", "float weights, float ReLU (reference)", start, dict(bits_a=32), start))
        out += [Arm("ste_relu", f"float weights, {a}-bit ReLU {proxy}", start, dict(bits_a=a, ste=proxy), start)
                for proxy in PROXIES]
    grids: list[tuple[str, str, dict[str, Any], tuple[float, ...]]] = []
    if "weights" in setting.studies:
        grids += [("weights", "binary" if bits == 1 else str(bits), dict(bits_w=bits, bits_a=32, granularity="tensor"),
                   setting.rhos) for bits in setting.weight_bits]
    if "weights_w2" in setting.studies:
        grids.append(("weights_w2", "2-bit mse", dict(bits_w=2, bits_a=32, granularity="channel", weight_range="mse"),
                      setting.w2_rhos))
    for study, name, grid, rhos in grids:
        out.append(Arm(study, f"{name} STE (momentum)", setting.weights_start, dict(grid, weight_update="ste"), name))
        out += [Arm(study, f"{name} BCGD rho={rho:g}" + (" (BinaryConnect)" if rho == 0 else ""), setting.weights_start,
                    dict(grid, weight_update="bcgd", rho=rho), name) for rho in (0.0, *rhos)]
    for bits_a in setting.distill_acts if "distill" in setting.studies else ():
        name = "w2" if bits_a == 32 else f"w2a{bits_a}"
        qat = dict(bits_w=2, bits_a=bits_a, weight_range="mse")
        kd = setting.distillation
        out += [Arm("distill", f"{name} (mse range)", setting.distill_start, qat, name),
                Arm("distill", f"{name} (mse range) + KD (T={kd.temperature:g}, alpha={kd.alpha:g})",
                    setting.distill_start, qat, name, kd)]
    chosen = [arm for arm in out if setting.only in arm.label]
    if out and not chosen:
        raise InvalidArgumentError(f"no arm's label contains {setting.only!r}")
    return chosen


def distill_recipe(arm: Arm, setting: Setting, entry: ModelEntry) -> Recipe:
    """The distillation study's recipe of `arm`, the zoo's default low-bit QAT step (`zoo.variants`'
    `_low_bit_step`: a tenth of the entry's learning rate, its weight decay and optimizer, its `keep_dense`
    layers float, per-channel symmetric grid, clipped-ReLU proxy, alpha at the 99.99th percentile) for
    `setting.epochs`, after the arm's `DistillationConfig` step when it has one (`_distill_step`)."""
    spec = entry.train
    if spec is None:
        raise InvalidArgumentError(f"{entry.name} has no training recipe: QAT needs its training data")
    qat = QATConfig(**arm.qat, epochs=setting.epochs, lr=spec.lr * QAT_LR_FACTOR, weight_decay=spec.weight_decay,
                    optimizer=spec.optimizer, calibration_batches=setting.calibration_batches, keep_fp=entry.keep_dense)
    return Recipe((qat,) if arm.distill is None else (arm.distill, qat))


class QuantizedReLU(nn.Module):
    """A ReLU replaced by its `bits`-bit quantization (Yin et al. 2019): forward `quantize_activation(x,
    alpha, bits, proxy)`, the uniform grid on [0, alpha] (negative inputs clamp to 0: a quantized ReLU);
    backward the derivative of `proxy` ("identity": every x, "relu": x > 0, "clipped_relu": 0 < x < alpha).
    While `calibrating` it is a plain ReLU that records its positive inputs; `finish_calibration` sets
    alpha to a percentile of them."""

    def __init__(self, bits: int, proxy: str) -> None:
        super().__init__()
        if proxy not in PROXIES:
            raise InvalidArgumentError(f"proxy must be one of {PROXIES}, got {proxy!r}")
        self.bits, self.proxy = bits, proxy
        self.register_buffer("alpha", torch.ones(()))
        self.calibrating = False
        self._observed: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self._observed.append(x.detach()[x > 0])
            return torch.relu(x)
        return quantize_activation(x, self.alpha.to(x.dtype), self.bits, self.proxy)

    @torch.no_grad()
    def finish_calibration(self, percentile: float) -> None:
        """alpha: the `percentile` of the positive inputs seen (a random million of them when more)."""
        values = torch.cat(self._observed) if self._observed else torch.empty(0)
        self._observed, self.calibrating = [], False
        if values.numel() == 0:
            raise InvalidArgumentError("a quantized ReLU saw no positive input during calibration")
        sample = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        self.alpha.copy_(torch.quantile(sample.float(), percentile / 100.0))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, proxy={self.proxy}, alpha={float(self.alpha):.4g}"


def quantize_relus(model: nn.Module, bits: int, proxy: str) -> dict[str, QuantizedReLU]:
    """Replaces every `nn.ReLU` of `model` in place by a `QuantizedReLU`; returns them by name."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
    if not names:
        raise InvalidArgumentError(f"{type(model).__name__} has no nn.ReLU module to quantize")
    out = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        out[name] = QuantizedReLU(bits, proxy)
        setattr(model.get_submodule(parent), child, out[name])
    return out


@torch.no_grad()
def calibrate_relus(model: nn.Module, relus: dict[str, QuantizedReLU], batches: Iterable[Any],
                    percentile: float) -> None:
    """Each quantized ReLU's alpha from its inputs over `batches`, the model in training mode (batch-norm
    on batch statistics, as training computes it; from random weights the running statistics are still
    the initial ones), run on a copy so that `model`'s batch-norm statistics stay as they are."""
    probe = copy.deepcopy(model).train()
    probed = {name: probe.get_submodule(name) for name in relus}
    for relu in probed.values():
        relu.calibrating = True
    seen = 0
    for inputs in batches:
        probe(inputs)
        seen += 1
    if seen == 0:
        raise InvalidArgumentError("calibrating quantized ReLUs needs at least one batch")
    for name, relu in probed.items():
        relu.finish_calibration(percentile)
        relus[name].alpha.copy_(relu.alpha)


def train_quantized_relus(model: nn.Module, context: RecipeContext, arm: Arm, setting: Setting) -> nn.Module:
    """Study 1b: the model's ReLUs quantized (`quantize_relus`, calibrated on `setting.calibration_batches`;
    left as they are for the 32-bit reference arm), float weights trained by `zoo.training.train` as study
    1's are (same epochs, learning rate, momentum, no weight decay)."""
    if arm.qat["bits_a"] != 32:
        relus = quantize_relus(model, arm.qat["bits_a"], arm.qat["ste"])
        calibrate_relus(model, relus, itertools.islice(context.calibration_batches(), setting.calibration_batches),
                        setting.relu_percentile)
    train(model, context.train_batches, context.loss_fn, epochs=setting.epochs, lr=setting.lr, weight_decay=0.0,
          progress=False, desc=arm.label)
    return model


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
        if arm.study == "ste_relu":
            model = train_quantized_relus(model, context, arm, setting)
        elif arm.study == "distill":
            model = distill_recipe(arm, setting, entry).apply(model, context)
        else:
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
                         ("ste_relu", f"### Study 1b: STE proxies of {setting.act_bits}-bit quantized ReLUs, "
                                      "float weights"),
                         ("weights", "### Study 2: binary / ternary weights, float activations"),
                         ("weights_w2", "### Study 2b: 2-bit weights (mse range, per channel), float activations"),
                         ("distill", "### Distillation on vs off at 2-bit weights (the zoo's QAT step)")):
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

    titles = {"ste": f"study 1: w{setting.act_weight_bits}a{setting.act_bits}, from {{}}",
              "ste_relu": f"study 1b: {setting.act_bits}-bit ReLUs, float weights, from {{}}",
              "weights": "study 2: {} weights, a32", "weights_w2": "study 2b: {} weights, a32",
              "distill": f"distillation: {{}}, from {setting.distill_start}"}
    panels = list(dict.fromkeys((arm.study, arm.group) for arm in arms(setting)))
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (study, key) in zip(axes.flat, panels):
        groups: dict[Arm, list[Run]] = {}
        for run in runs:
            if run.arm.study == study and run.arm.group == key:
                groups.setdefault(run.arm, []).append(run)
        title = titles[study].format(key)
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
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the STE arms (studies 1, 1b, 2)")
    parser.add_argument("--only", default=None, help="run only the arms whose label contains this text")
    parser.add_argument("--start", choices=(*STARTS, "both"), default=None,
                        help="the starting point(s) of studies 1 and 1b (default: the trained base)")
    parser.add_argument("--study", choices=STUDIES, nargs="+", default=None,
                        help="run these studies only (default: all)")
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
    if args.lr is not None:
        setting = replace(setting, lr=args.lr)
    if args.only is not None:
        setting = replace(setting, only=args.only)
    if args.start is not None:
        setting = replace(setting, starts=STARTS if args.start == "both" else (args.start,))
    if args.study is not None:
        setting = replace(setting, studies=tuple(args.study))
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    runs = run_benchmark(setting)
    print(f"{setting.base}, {len(setting.seeds)} seeds, {setting.epochs} epochs, lr {setting.lr} (STE arms) / "
          f"{setting.bcgd_lr} (BCGD arms) / entry lr x {QAT_LR_FACTOR} (distillation study), "
          f"{torch.get_num_threads()} threads, "
          f"{time.perf_counter() - started:.0f} s in all\n")
    print(markdown(summarize(runs), setting))
    if args.plot is not None:
        plot(runs, setting, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
