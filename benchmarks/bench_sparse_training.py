"""Sparse training, reproduced small: one-shot magnitude vs random pruning, wide-sparse vs narrow-dense at
equal parameters, and static / SET / RigL (ERK and uniform) against gradual magnitude pruning, on the
zoo's own recipes (issue 10's reproduction tables).

    python benchmarks/bench_sparse_training.py --plot /tmp/sparse_training.png      # ~10 min (5 seeds), 2 shared cores
    python benchmarks/bench_sparse_training.py --quick --plot /tmp/quick.png         # smoke run, ~1 min

Why this task. On the zoo's digits every ResNet-18 variant scores 98-99 % at any sparsity: the model is
so much larger than the problem that no pruning method can be told apart from another. Here the model
is a CNN small enough that sparsity costs accuracy: conv 3x3 widths w, 2w, 4w (the last two with stride
2, each followed by batch norm and ReLU), global average pooling and a linear classifier, on the zoo's
digits loader at their native 8x8 (`zoo.data.dataset`, the vision family's `digits`, with an 8x8 input
spec), trained by the zoo's one loop (`zoo.training.train`, SGD with Nesterov momentum, warm-up +
cosine, label smoothing 0.1 from the vision task's loss). With w = 8 the dense model has 6,152
prunable weights and scores ~98 %; at 90-98 % sparsity it keeps 615-123 of them, where the methods do
differ. Five seeds (the data order, the initialization and the random masks all follow the seed)
give mean +- std of the test top-1 (360 test images: one image is 0.28 points).

What each table does (E = `epochs`, the dense model's training length):
- (a) one-shot pruning of the trained dense model (E epochs), every layer keeping ERK's number of
  weights: by magnitude within each layer (`magnitude_masks` layer by layer) vs at random
  (`random_masks`, the masks `apply_sparse_training(method="static", distribution="erk",
  from_scratch=False)` starts from), so that only the choice of weights within a layer differs; and the
  zoo's default one-shot recipe, one global magnitude threshold (`apply_magnitude_pruning`), which picks
  its own per-layer counts. Accuracy right after pruning and after fine-tuning each for
  `finetune_epochs` with its mask fixed (the static topology of `SparseTopology`: the loop
  `apply_sparse_training` runs). ERK's counts rather than the global threshold's for the comparison:
  on this batch-normed CNN the weights' scale differs by layer (mean |w| 0.21, 0.09, 0.06, 0.25), and
  at 98 % one global threshold prunes conv3 entirely (a network at chance, whatever the selection).
- (b) at an equal number of non-zero parameters (all of them: weights, biases and batch-norm, so the
  wider network's extra dense biases and norms are paid for by a sparser weight budget), a narrow dense
  network against wider ones trained sparse from scratch by RigL (ERK) for the same E epochs.
- (c) at 90 and 95 %: static, SET and RigL from scratch (E epochs), with ERK and with uniform (first
  layer dense) at *equal parameters*: uniform's sparsity is raised so that it keeps exactly as many
  weights as ERK (its dense first layer would otherwise give it more); RigL (ERK) at 2x and 5x the
  steps; gradual magnitude pruning (`apply_gradual_magnitude_pruning`) of the trained dense model for E
  more epochs, with one global threshold (so at ERK's count) and per layer with the first layer dense
  (at uniform's sparsity, so at ERK's count too): 2E epochs in all, so RigL 2x is the run of equal
  total epochs.
Topology updates: `delta_t=None` (the zoo's default recipes: 20 updates over the first 75 % of the
steps), drop fraction 0.3 on the cosine schedule.

Costs: "fwd MFLOPs" is the sparse forward of one 8x8 image (`zoo.evaluate.flops.count_flops`, the
non-zero multiply-accumulates); "train (x dense)" is the training FLOPs relative to the dense model's E
epochs, sparse methods by `compress.sparse_training.sparse_training_flops` (what a sparse
implementation would spend; these runs are masked dense tensors and cost dense time), one-shot pruning
as the dense training plus a static sparse fine-tune, and GMP as the dense training plus its pruning
epochs counted dense (an upper bound: its sparsity rises along the cubic schedule).
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from zoo.compress.distributions import active_counts, layer_densities
from zoo.compress.pruning import (
    apply_gradual_magnitude_pruning, apply_magnitude_pruning, apply_masks, magnitude_masks,
)
from zoo.compress.recipe import RecipeContext
from zoo.compress.sparse_training import (
    AUTO_UPDATES, SparseTopology, apply_sparse_training, random_masks, sparse_training_flops, sparse_weights,
)
from zoo.data import Batches
from zoo.entry import DataSpec, InputSpec, ModelEntry, TrainSpec
from zoo.errors import InvalidArgumentError
from zoo.evaluate.flops import count_flops
from zoo.evaluate.params import count_parameters
from zoo.tasks import task_of
from zoo.training import steps_per_epoch, train

END_FRACTION = 0.75  # apply_sparse_training's default: topology updates over the first 75 % of the steps
DIGITS_8X8 = InputSpec(channels=1, size=(8, 8), mean=(0.305,), std=(0.375,))


class DigitsCNN(nn.Module):
    """conv3x3(1->w) - conv3x3(w->2w, stride 2) - conv3x3(2w->4w, stride 2), each with batch norm and
    ReLU, global average pooling, linear(4w->10). Prunable weights: 90 w^2 + 49 w."""

    def __init__(self, width: int) -> None:
        super().__init__()
        if width < 1:
            raise InvalidArgumentError(f"width must be >= 1, got {width}")
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.fc = nn.Linear(4 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


@dataclass(frozen=True)
class Setting:
    """One benchmark configuration (the defaults are the full run)."""

    width: int = 8  # of the model of tables (a) and (c)
    epochs: int = 15  # E: the dense model's training, and sparse training at 1x
    finetune_epochs: int = 5  # (a): after one-shot pruning
    batch_size: int = 64
    lr: float = 0.1  # training from scratch (dense and sparse)
    finetune_lr: float = 0.02  # (a)
    gmp_lr: float = 0.05  # (c): GMP of the trained dense model
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # 3 seeds left (c)'s 90 % cells within one another's noise
    prune_sparsities: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98)  # (a)
    method_sparsities: tuple[float, ...] = (0.9, 0.95)  # (c)
    rigl_multipliers: tuple[int, ...] = (2, 5)  # (c)
    dense_widths: tuple[int, ...] = (2, 4)  # (b): the narrow dense networks
    sparse_widths: tuple[int, ...] = (4, 8, 16)  # (b): the wider sparse ones (those wider than each dense)


QUICK = Setting(epochs=3, finetune_epochs=1, seeds=(0,), prune_sparsities=(0.9, 0.98), method_sparsities=(0.9,),
                rigl_multipliers=(2,), dense_widths=(2,), sparse_widths=(4,))


@dataclass(frozen=True)
class Cell:
    """One trained (or pruned) model of one seed: its table, row label, nominal sparsity and measures."""

    table: str
    label: str
    sparsity: float
    seed: int
    top1: float
    weights: int  # non-zero prunable weights (conv and linear)
    active: int  # prunable weights the masks keep (>= weights: a kept weight may be exactly 0)
    params: int  # non-zero parameters, all of them
    forward_flops: int  # sparse forward FLOPs of one example
    train_cost: float  # training FLOPs / the dense model's E epochs of the same width
    width: int = 0


def digits_entry(setting: Setting, seed: int) -> ModelEntry:
    """An unregistered entry that makes the zoo's digits loader and vision task serve 8x8 images."""
    return ModelEntry(
        name="digitscnn.bench_sparse", family="resnet", task="image-classification", repo_id="bench/digitscnn",
        source="zoo", input=DIGITS_8X8, eval_data=DataSpec("digits", "test"), num_classes=10, label_set="digits",
        train=TrainSpec(data=DataSpec("digits", "train"), epochs=setting.epochs, batch_size=setting.batch_size,
                        lr=setting.lr, seed=seed),
    )


class Bench:
    """Data, loss, evaluation and cost accounting of one setting, shared by the three tables."""

    def __init__(self, setting: Setting, progress: bool = False) -> None:
        self.setting, self.progress = setting, progress
        self.entry = digits_entry(setting, 0)
        self.task = task_of(self.entry)
        self.test = self.task.batches(self.entry, self.entry.eval_data, batch_size=512, shuffle=False)
        train_batches = self.train_batches(0)
        self.n_train = len(train_batches.data)
        self.steps_per_epoch = len(train_batches)
        self.example = torch.zeros(DIGITS_8X8.example_shape(1))
        self._dense_forward: dict[int, int] = {}

    def train_batches(self, seed: int) -> Batches:
        return self.task.batches(self.entry, self.entry.train.data, batch_size=self.setting.batch_size, shuffle=True,
                                 seed=seed)

    def context(self, width: int, seed: int) -> RecipeContext:
        batches = self.train_batches(seed)

        def fresh_model() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return DigitsCNN(width)

        return RecipeContext(train_batches=batches.epoch, loss_fn=lambda model, batch: self.task.loss(model, batch, self.entry),
                             fresh_model=fresh_model, progress=self.progress, seed=seed)

    def top1(self, model: nn.Module) -> float:
        return self.task.evaluate(model, self.test, self.entry, progress=False).metrics["top1"]

    def dense_forward(self, width: int) -> int:
        if width not in self._dense_forward:
            self._dense_forward[width] = count_flops(DigitsCNN(width), self.example).dense
        return self._dense_forward[width]

    def train_flops(self, method: str, width: int, sparse_forward: int, epochs: int) -> float:
        """FLOPs of `epochs` of sparse training (`sparse_training_flops`, at the mean batch size)."""
        total_steps = self.steps_per_epoch * epochs
        per_step = sparse_training_flops(method, dense_forward=self.dense_forward(width), sparse_forward=sparse_forward,
                                         total_steps=total_steps, examples_per_step=1,
                                         delta_t=auto_delta_t(total_steps), end_fraction=END_FRACTION)
        return per_step * self.n_train / self.steps_per_epoch

    def dense_train_flops(self, width: int, epochs: int) -> float:
        return 3.0 * self.dense_forward(width) * self.n_train * epochs

    def cell(self, table: str, label: str, sparsity: float, seed: int, model: nn.Module, width: int,
             train_flops: float, masks: dict[str, torch.Tensor] | None = None) -> Cell:
        weights = sparse_weights(model)
        return Cell(table=table, label=label, sparsity=sparsity, seed=seed, top1=self.top1(model),
                    weights=sum(int(torch.count_nonzero(w)) for w in weights.values()),
                    active=sum(int(masks[name].sum()) if masks and name in masks else w.numel()  # keep_dense: unmasked
                               for name, w in weights.items()),
                    params=count_parameters(model).nonzero, forward_flops=count_flops(model, self.example).sparse,
                    train_cost=train_flops / self.dense_train_flops(width, self.setting.epochs), width=width)


def auto_delta_t(total_steps: int) -> int:
    """The delta_t `apply_sparse_training` takes for delta_t=None."""
    return max(1, math.floor(END_FRACTION * total_steps) // AUTO_UPDATES)


def prunable_size(width: int) -> int:
    return sum(w.numel() for w in sparse_weights(DigitsCNN(width)).values())


def first_layer_size(width: int) -> int:
    return next(iter(sparse_weights(DigitsCNN(width)).values())).numel()


def uniform_sparsity_at_count(width: int, kept: int) -> float:
    """The sparsity at which the `uniform` distribution (first layer dense) keeps `kept` weights in all."""
    total, first = prunable_size(width), first_layer_size(width)
    if not first <= kept < total:
        raise InvalidArgumentError(f"uniform keeps its first layer ({first} weights) dense: cannot keep {kept} of {total}")
    return 1.0 - (kept - first) / (total - first)


def erk_count(width: int, sparsity: float) -> int:
    """Weights ERK keeps at `sparsity` (exactly round((1 - S) N), `compress.distributions`)."""
    return round((1.0 - sparsity) * prunable_size(width))


def matched_sparsity(dense_width: int, width: int) -> float:
    """The sparsity of `width`'s prunable weights at which the whole network has as many non-zero
    parameters as the dense network of `dense_width` (its biases and norms stay dense)."""
    dense_params = sum(p.numel() for p in DigitsCNN(dense_width).parameters())
    model = DigitsCNN(width)
    total = prunable_size(width)
    kept = dense_params - (sum(p.numel() for p in model.parameters()) - total)
    if not 0 < kept < total:
        raise InvalidArgumentError(f"width {width} cannot match the {dense_params} parameters of width {dense_width}")
    return 1.0 - kept / total


def fine_tune_fixed(model: nn.Module, masks: dict[str, torch.Tensor], context: RecipeContext, *, epochs: int,
                    lr: float) -> None:
    """Fine-tunes with the masks fixed: the static topology of `SparseTopology`, as static sparse training."""
    weights = sparse_weights(model)
    total = steps_per_epoch(context.train_batches) * epochs
    topology = SparseTopology(weights, masks, method="static", total_steps=total, delta_t=auto_delta_t(total),
                              drop_fraction=0.3, end_fraction=END_FRACTION, generator=torch.Generator())
    train(model, context.train_batches, context.loss_fn, epochs=epochs, lr=lr, before_step=topology.before_step,
          after_step=topology.after_step, progress=context.progress, desc="fine-tune")


def train_dense(bench: Bench, width: int, seed: int) -> nn.Module:
    context = bench.context(width, seed)
    model = context.fresh_model()
    train(model, context.train_batches, context.loss_fn, epochs=bench.setting.epochs, lr=bench.setting.lr,
          progress=bench.progress, desc=f"dense w={width}")
    return model


def magnitude_masks_at_counts(weights: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """Keep-masks with the `counts[name]` largest |w| of each layer (`magnitude_masks` layer by layer)."""
    masks = {}
    for name, weight in weights.items():
        n, kept = weight.numel(), counts[name]
        if kept == 0:
            masks[name] = torch.zeros_like(weight, dtype=torch.bool)
            continue
        # floor(sparsity * n) weights are pruned: half a weight of margin makes the floor exact
        masks.update(magnitude_masks({name: weight}, (n - kept + 0.5) / n if kept < n else 0.0, "global"))
        if int(masks[name].sum()) != kept:
            raise InvalidArgumentError(f"{name}: kept {int(masks[name].sum())} weights, not {kept}")
    return masks


def erk_counts(model: nn.Module, sparsity: float) -> dict[str, int]:
    shapes = {name: tuple(w.shape) for name, w in sparse_weights(model).items()}
    return active_counts(shapes, layer_densities(shapes, sparsity, "erk"))


PRUNING_LABELS = ("magnitude", "random", "magnitude, global threshold")


def pruning_table(bench: Bench, dense: nn.Module, seed: int) -> list[Cell]:
    """(a): one-shot magnitude vs random at ERK's per-layer counts, and the global threshold, without and
    with fine-tuning."""
    s, width = bench.setting, bench.setting.width
    context = bench.context(width, seed)
    dense_cost = bench.dense_train_flops(width, s.epochs)
    cells = []
    for sparsity in s.prune_sparsities:
        counts = erk_counts(dense, sparsity)
        pruned = {label: copy.deepcopy(dense) for label in PRUNING_LABELS}
        masks = {
            "magnitude": magnitude_masks_at_counts(sparse_weights(pruned["magnitude"]), counts),
            # as apply_sparse_training(method="static", distribution="erk", from_scratch=False) draws them
            "random": random_masks(sparse_weights(pruned["random"]), counts, torch.Generator().manual_seed(seed)),
        }
        apply_masks(sparse_weights(pruned["magnitude"]), masks["magnitude"])
        apply_masks(sparse_weights(pruned["random"]), masks["random"])
        label = "magnitude, global threshold"
        masks[label] = apply_magnitude_pruning(pruned[label], sparsity, scope="global")
        for label, model in pruned.items():
            cells.append(bench.cell("a", f"{label}, no fine-tune", sparsity, seed, model, width, dense_cost, masks[label]))
            fine_tune_fixed(model, masks[label], context, epochs=s.finetune_epochs, lr=s.finetune_lr)
            sparse_forward = count_flops(model, bench.example).sparse
            cost = dense_cost + bench.train_flops("static", width, sparse_forward, s.finetune_epochs)
            cells.append(bench.cell("a", f"{label}, fine-tuned", sparsity, seed, model, width, cost, masks[label]))
    return cells


def sparse_cell(bench: Bench, table: str, label: str, nominal: float, seed: int, width: int, *, sparsity: float,
                method: str, distribution: str, epochs: int) -> Cell:
    context = bench.context(width, seed)
    model = context.fresh_model()
    masks = apply_sparse_training(model, context, sparsity=sparsity, method=method, distribution=distribution, epochs=epochs,
                          lr=bench.setting.lr, delta_t=None, end_fraction=END_FRACTION)
    cost = bench.train_flops(method, width, count_flops(model, bench.example).sparse, epochs)
    return bench.cell(table, label, nominal, seed, model, width, cost, masks)


def methods_table(bench: Bench, dense: nn.Module, seed: int) -> list[Cell]:
    """(c): static / SET / RigL x ERK / uniform at equal parameters, RigL at k x steps, and GMP."""
    s, width = bench.setting, bench.setting.width
    cells = [bench.cell("c", "dense", 0.0, seed, dense, width, bench.dense_train_flops(width, s.epochs))]
    for sparsity in s.method_sparsities:
        uniform = uniform_sparsity_at_count(width, erk_count(width, sparsity))
        for distribution, at in (("erk", sparsity), ("uniform", uniform)):
            for method in ("static", "set", "rigl"):
                cells.append(sparse_cell(bench, "c", f"{method} {distribution}", sparsity, seed, width, sparsity=at,
                                         method=method, distribution=distribution, epochs=s.epochs))
        for multiplier in s.rigl_multipliers:
            cells.append(sparse_cell(bench, "c", f"rigl erk {multiplier}x", sparsity, seed, width, sparsity=sparsity,
                                     method="rigl", distribution="erk", epochs=multiplier * s.epochs))
        first = next(iter(sparse_weights(dense)))
        for scope, at, keep_dense in (("global", sparsity, ()), ("uniform", uniform, (first,))):
            model = copy.deepcopy(dense)
            masks = apply_gradual_magnitude_pruning(model, bench.context(width, seed), final_sparsity=at, epochs=s.epochs,
                                            lr=s.gmp_lr, scope="global" if scope == "global" else "layer",
                                            keep_dense=keep_dense)
            cells.append(bench.cell("c", f"GMP {scope} ({s.epochs} dense + {s.epochs} pruning epochs)", sparsity, seed,
                                    model, width, 2 * bench.dense_train_flops(width, s.epochs), masks))
    return cells


def width_table(bench: Bench, seed: int, dense_models: dict[int, nn.Module]) -> list[Cell]:
    """(b): each narrow dense network against wider ones, RigL ERK, at its number of non-zero parameters."""
    s = bench.setting
    cells = []
    for dense_width in s.dense_widths:
        model = dense_models[dense_width] if dense_width in dense_models else train_dense(bench, dense_width, seed)
        cells.append(bench.cell(f"b{dense_width}", f"w={dense_width} dense", 0.0, seed, model, dense_width,
                                bench.dense_train_flops(dense_width, s.epochs)))
        for width in (w for w in s.sparse_widths if w > dense_width):
            sparsity = matched_sparsity(dense_width, width)
            cell = sparse_cell(bench, f"b{dense_width}", f"w={width} rigl erk", sparsity, seed, width,
                               sparsity=sparsity, method="rigl", distribution="erk", epochs=s.epochs)
            # train cost relative to the narrow dense network's training, the baseline of this table
            cells.append(replace(cell, train_cost=cell.train_cost * bench.dense_train_flops(width, s.epochs)
                                 / bench.dense_train_flops(dense_width, s.epochs)))
    return cells


def run_benchmark(setting: Setting, *, progress: bool = False, log: Callable[[str], None] | None = None) -> list[Cell]:
    """Every cell of the three tables, for every seed of `setting`."""
    torch.set_num_threads(1)
    bench = Bench(setting, progress=progress)
    cells: list[Cell] = []
    for seed in setting.seeds:
        start = time.perf_counter()
        dense = train_dense(bench, setting.width, seed)
        cells += pruning_table(bench, dense, seed)
        cells += methods_table(bench, dense, seed)
        cells += width_table(bench, seed, {setting.width: dense})
        if log is not None:
            log(f"seed {seed}: {time.perf_counter() - start:.0f} s")
    return cells


# --- tables -------------------------------------------------------------------------------------------

def _groups(cells: Iterable[Cell], table: str) -> dict[tuple[str, float], list[Cell]]:
    groups: dict[tuple[str, float], list[Cell]] = {}
    for cell in cells:
        if cell.table == table:
            groups.setdefault((cell.label, cell.sparsity), []).append(cell)
    return groups


def mean_std(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} +- {std:.2f}"


def _same(cells: list[Cell], attribute: str) -> str:
    """The value all seeds share (counts do not depend on the seed), or their range."""
    values = sorted({getattr(c, attribute) for c in cells})
    return f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}-{values[-1]:,}"


def pruning_markdown(cells: list[Cell]) -> str:
    groups = _groups(cells, "a")
    labels = [f"{label}, {when}" for when in ("no fine-tune", "fine-tuned") for label in PRUNING_LABELS]
    lines = ["| sparsity | non-zero weights | fwd MFLOPs (magnitude) | " + " | ".join(labels)
             + " | magnitude - random, no fine-tune | magnitude - random, fine-tuned |", "|---:" * (len(labels) + 5) + "|"]
    for sparsity in sorted({key[1] for key in groups}):
        row = {label: groups[(label, sparsity)] for label in labels}
        gaps = [mean_std([m.top1 - r.top1 for m, r in zip(row[f"magnitude, {when}"], row[f"random, {when}"], strict=True)])
                for when in ("no fine-tune", "fine-tuned")]
        first = row[labels[0]]
        lines.append(f"| {sparsity:.0%} | {_same(first, 'weights')} | {first[0].forward_flops / 1e6:.3f} | "
                     + " | ".join(mean_std([c.top1 for c in group]) for group in row.values()) + f" | {' | '.join(gaps)} |")
    return "\n".join(lines)


def cells_markdown(cells: list[Cell], table: str, *, sparsity_column: bool = True) -> str:
    groups = _groups(cells, table)
    lines = ["| model | sparsity | non-zero weights | non-zero params | fwd MFLOPs | train (x dense) | top-1 % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for (label, sparsity), group in groups.items():
        lines.append(f"| {label} | {sparsity:.1%} | {_same(group, 'weights')} | {_same(group, 'params')} | "
                     f"{statistics.fmean(c.forward_flops for c in group) / 1e6:.3f} | "
                     f"{statistics.fmean(c.train_cost for c in group):.2f} | {mean_std([c.top1 for c in group])} |")
    return "\n".join(lines)


def markdown(cells: list[Cell], setting: Setting) -> str:
    seeds = len(setting.seeds)
    parts = [
        (f"Test top-1 % (mean +- std over {seeds} seed{'s' * (seeds > 1)}), digits 8x8, DigitsCNN; "
         f"E = {setting.epochs} epochs, batch {setting.batch_size}."),
        (f"\n### (a) one-shot magnitude vs random pruning of the dense w={setting.width} model "
         f"({prunable_size(setting.width):,} weights), fine-tuned {setting.finetune_epochs} epochs at lr "
         f"{setting.finetune_lr}\n"),
        pruning_markdown(cells),
    ]
    for dense_width in setting.dense_widths:
        parts += [f"\n### (b) wider sparse (RigL ERK, E epochs) vs dense w={dense_width}, equal non-zero parameters\n",
                  cells_markdown(cells, f"b{dense_width}")]
    parts += [(f"\n### (c) sparse training methods on w={setting.width}; uniform at ERK's weight count; "
               "train cost in dense E-epoch trainings\n"), cells_markdown(cells, "c")]
    return "\n".join(parts)


def plot(cells: list[Cell], setting: Setting, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for ax, table, title in ((axes[0], "a", "(a) one-shot magnitude vs random"),
                             (axes[1], "c", f"(c) sparse training, w={setting.width}")):
        groups = _groups(cells, table)
        for label in dict.fromkeys(label for label, sparsity in groups if sparsity > 0):
            points = sorted((sparsity, group) for (name, sparsity), group in groups.items() if name == label)
            xs = [100 * sparsity for sparsity, _ in points]
            means = [100 * statistics.fmean(c.top1 for c in group) for _, group in points]
            stds = [100 * statistics.stdev([c.top1 for c in group]) if len(group) > 1 else 0.0 for _, group in points]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
        ax.set(title=title, xlabel="sparsity %", ylabel="test top-1 %")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax = axes[2]
    for dense_width in setting.dense_widths:
        groups = _groups(cells, f"b{dense_width}")
        widths = [group[0].width for group in groups.values()]
        means = [100 * statistics.fmean(c.top1 for c in group) for group in groups.values()]
        stds = [100 * statistics.stdev([c.top1 for c in group]) if len(group) > 1 else 0.0 for group in groups.values()]
        params = next(iter(groups.values()))[0].params
        ax.errorbar(widths, means, yerr=stds, marker="o", capsize=3, label=f"{params} non-zero params (w={dense_width} dense)")
    ax.set(title="(b) equal non-zero parameters: width", xlabel="width w (leftmost dense, others RigL ERK)",
           ylabel="test top-1 %", xscale="log")
    widths = sorted({c.width for c in cells if c.table.startswith("b")})
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, few epochs, fewer cells")
    parser.add_argument("--plot", type=Path, help="write the accuracy plots to this PNG")
    parser.add_argument("--seeds", type=int, help="number of seeds (0, 1, ...); default 5 (1 with --quick)")
    parser.add_argument("--progress", action="store_true", help="show the training progress bars")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else Setting()
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be >= 1")
        setting = replace(setting, seeds=tuple(range(args.seeds)))
    start = time.perf_counter()
    cells = run_benchmark(setting, progress=args.progress, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(cells, setting))
    if args.plot is not None:
        plot(cells, setting, args.plot)
        print(f"\nplot: {args.plot}")
    print(f"\nwall time {time.perf_counter() - start:.0f} s, torch {torch.__version__}, 1 thread")


if __name__ == "__main__":
    main()
