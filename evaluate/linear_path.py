"""The loss along the straight line between two checkpoints of one architecture (Evci, Pedregosa, Gomez,
Elsen 2019, "The Difficulty of Training Sparse Neural Networks"): theta(a) = (1 - a) theta_A + a theta_B.

`linear_path` is the functional form (any two models of one architecture, any loss, any batches);
`measure_linear_path` runs it on two loaded zoo models with their family task's training loss on a fixed
subset of the training split, and the task metrics on the evaluation split.

BatchNorm: interpolating running means and variances gives statistics that belong to neither model (and
the interpolated weights' activations have statistics of their own), so at every point of the path,
endpoints included, the BatchNorm statistics are recomputed: reset, then estimated as the plain average
over `bn_batches` forward passes in training mode (no gradient, every other module in eval mode). A model
with BatchNorm and no `bn_batches` is refused. The endpoints' losses with the models' own stored
statistics are kept beside the path (`own_loss_a`, `own_loss_b`).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from zoo.atomic import atomic_write_text
from zoo.entry import DataSpec
from zoo.errors import InvalidArgumentError

FORMAT = "zoo-linear-path"
VERSION = 1
DEFAULT_POINTS = 21
DEFAULT_SPAN = (0.0, 1.0)

LossFn = Callable[[nn.Module, Any], torch.Tensor]
MetricFn = Callable[[nn.Module], dict[str, float]]


class IncompatibleModelsError(InvalidArgumentError):
    """Two models have no straight line between them: different parameter names, shapes or dtypes (a
    structurally pruned variant is narrower than its base), or integer tensors that differ (int8 weights)."""


@dataclass(frozen=True)
class LinearPath:
    """Loss (and task metrics, where measured) at each `alphas[i]` of the line from `model_a` (alpha 0)
    to `model_b` (alpha 1). `loss` is the mean of the per-batch losses over `loss_data`; `bn_recomputed`
    says whether BatchNorm statistics were re-estimated at each point (on `bn_data`); `own_loss_a` and
    `own_loss_b` are the endpoints' losses with their own stored statistics (equal to the path's
    endpoints when nothing was recomputed)."""

    model_a: str
    model_b: str
    alphas: list[float]
    loss: list[float]
    own_loss_a: float
    own_loss_b: float
    loss_data: str
    bn_recomputed: bool
    bn_data: str = ""
    metrics: list[dict[str, float]] = field(default_factory=list)
    metric_data: str = ""

    def __post_init__(self) -> None:
        if len(self.alphas) != len(self.loss) or (self.metrics and len(self.metrics) != len(self.alphas)):
            raise InvalidArgumentError("a linear path needs one loss (and one metrics dict, if any) per alpha")

    def at(self, alpha: float) -> float:
        """The loss at a grid point `alpha` (0.0 and 1.0 are always on the grid)."""
        if alpha not in self.alphas:
            raise InvalidArgumentError(f"alpha {alpha} is not on the grid {self.alphas}")
        return self.loss[self.alphas.index(alpha)]

    @property
    def barrier(self) -> float:
        """Highest loss on [0, 1] above the straight line between the endpoints' losses (0 when the path
        is convex-like; Evci et al.'s measure of a barrier between the two solutions)."""
        a, b = self.at(0.0), self.at(1.0)
        return max(loss - ((1 - t) * a + t * b) for t, loss in zip(self.alphas, self.loss) if 0.0 <= t <= 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearPath:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise InvalidArgumentError(f"not a {FORMAT} version {VERSION} file: format={data.get('format')!r}, "
                                       f"version={data.get('version')!r}")
        return cls(**{k: v for k, v in data.items() if k not in ("format", "version")})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinearPath:
        return cls.from_dict(json.loads(Path(path).read_text()))


def path_alphas(points: int, span: tuple[float, float] = DEFAULT_SPAN) -> list[float]:
    """`points` evenly spaced alphas over `span` (which must hold [0, 1]), rounded to 12 decimals so that
    0 and 1 are exact; 0.0 and 1.0 are added when the spacing misses them."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise InvalidArgumentError(f"points must be an integer >= 2, got {points!r}")
    start, end = (float(v) for v in span)
    if not (start <= 0.0 and end >= 1.0):
        raise InvalidArgumentError(f"the span must contain [0, 1] (both models), got {span!r}")
    grid = {round(start + i * (end - start) / (points - 1), 12) + 0.0 for i in range(points)}  # + 0.0: no -0.0
    return sorted(grid | {0.0, 1.0})


def check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raises `IncompatibleModelsError` naming the first difference that rules out interpolation."""
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    only_a, only_b = sorted(set(state_a) - set(state_b)), sorted(set(state_b) - set(state_a))
    if only_a or only_b:
        raise IncompatibleModelsError(
            f"the two models have different tensors (only in A: {', '.join(only_a[:3]) or '-'}; only in B: "
            f"{', '.join(only_b[:3]) or '-'}): one architecture is needed (an int8 variant holds quantized "
            "layers)")
    for key, a in state_a.items():
        b = state_b[key]
        if a.shape != b.shape:
            raise IncompatibleModelsError(
                f"{key} is {tuple(a.shape)} in A and {tuple(b.shape)} in B: one architecture is needed "
                "(structured pruning removes channels or heads, so such a variant has no line to its base)")
        if a.dtype != b.dtype:
            raise IncompatibleModelsError(f"{key} is {a.dtype} in A and {b.dtype} in B")
        if not a.is_floating_point() and not key.endswith("num_batches_tracked") and not torch.equal(a, b):
            raise IncompatibleModelsError(f"{key} holds {a.dtype} values that differ between A and B: integer "
                                          "(quantized) weights cannot be interpolated")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> None:
    """Re-estimates every BatchNorm's running statistics as the plain average over `batches` (forward
    passes through `loss_fn` with the BatchNorms in training mode, everything else in eval mode, no
    gradient); leaves the model in eval mode."""
    if not batches:
        raise InvalidArgumentError("recomputing BatchNorm statistics needs at least one batch")
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    model.eval()
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: the plain mean over the batches
        norm.train()
    try:
        for batch in batches:
            loss_fn(model, batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()


@torch.no_grad()
def mean_loss(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> float:
    """The mean of `loss_fn` over `batches` (one value per batch, averaged), in eval mode."""
    if not batches:
        raise InvalidArgumentError("a loss needs at least one batch")
    model.eval()
    return sum(float(loss_fn(model, batch)) for batch in batches) / len(batches)


@torch.no_grad()
def linear_path(model_a: nn.Module, model_b: nn.Module, loss_fn: LossFn, batches: Sequence[Any],
                points: int = DEFAULT_POINTS, *, span: tuple[float, float] = DEFAULT_SPAN,
                bn_batches: Sequence[Any] | None = None, metric_fn: MetricFn | None = None,
                names: tuple[str, str] = ("A", "B"), loss_data: str = "", bn_data: str = "",
                metric_data: str = "") -> LinearPath:
    """The loss `loss_fn` (averaged over `batches`) of (1 - a) theta_A + a theta_B at `path_alphas(points,
    span)`, and `metric_fn` of it where given. Every floating-point tensor of the state dicts (parameters
    and buffers) is interpolated; integer ones are equal in both (checked) and kept. With BatchNorm in the
    models, `bn_batches` (batches for `loss_fn`) re-estimate its statistics at every point (see the module
    docstring). Neither model is changed."""
    check_same_architecture(model_a, model_b)
    batches = list(batches)
    recompute = has_batchnorm(model_b)
    if recompute and not bn_batches:
        raise InvalidArgumentError("the models have BatchNorm: interpolated running statistics belong to neither "
                                   "model, so give bn_batches to recompute them at each point")
    alphas = path_alphas(points, span)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    own_a, own_b = mean_loss(copy.deepcopy(model_a), loss_fn, batches), mean_loss(copy.deepcopy(model_b), loss_fn,
                                                                                   batches)
    probe = copy.deepcopy(model_b)
    losses, metrics = [], []
    for alpha in alphas:
        probe.load_state_dict({key: (1.0 - alpha) * a + alpha * state_b[key] if a.is_floating_point()
                               else state_b[key] for key, a in state_a.items()})
        if recompute:
            recompute_batchnorm(probe, loss_fn, list(bn_batches))
        losses.append(mean_loss(probe, loss_fn, batches))
        if metric_fn is not None:
            metrics.append(dict(metric_fn(probe.eval())))
    return LinearPath(names[0], names[1], alphas, losses, own_a, own_b, loss_data, recompute,
                      bn_data if recompute else "", metrics, metric_data if metric_fn is not None else "")


def measure_linear_path(model_a: nn.Module, model_b: nn.Module, *, points: int = DEFAULT_POINTS,
                        span: tuple[float, float] = DEFAULT_SPAN, loss_batches: int = 8, bn_batches: int = 8,
                        batch_size: int = 64, metric: bool = True, progress: bool = False) -> LinearPath:
    """`linear_path` between two models `zoo.load` returned (`model.zoo` names them), of the same base
    architecture: the loss is their task's training loss on the first `loss_batches` batches of
    `batch_size` of the training split in order; BatchNorm statistics are recomputed on the first
    `bn_batches` batches of the training split shuffled with the entry's seed; with `metric`, the task's
    metrics on its whole evaluation split at each point (what the cards report; costly for a task whose
    evaluation generates, as vocoding does). An upstream entry's training split is that of its evaluation
    data set (`NoEvaluationDataError` where it is not on this machine)."""
    from zoo.models import get_entry
    from zoo.tasks import task_of

    entry_a, entry_b = get_entry(model_a.zoo.base_model), get_entry(model_b.zoo.base_model)
    if (entry_a.arch, entry_a.task, entry_a.model_kwargs) != (entry_b.arch, entry_b.task, entry_b.model_kwargs):
        raise IncompatibleModelsError(f"{model_a.zoo.name} ({entry_a.arch}, {entry_a.task}) and {model_b.zoo.name} "
                                      f"({entry_b.arch}, {entry_b.task}) are not one architecture on one task")
    for name, value in (("loss_batches", loss_batches), ("bn_batches", bn_batches), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    entry, task = entry_b, task_of(entry_b)
    train_data = entry.train.data if entry.train is not None else DataSpec(entry.eval_data.name, "train")
    seed = entry.train.seed if entry.train is not None else 0
    loss_list = _first(task.batches(entry, train_data, batch_size=batch_size, shuffle=False), loss_batches)
    bn_list = _first(task.batches(entry, train_data, batch_size=batch_size, shuffle=True, seed=seed), bn_batches)

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        return task.loss(model, batch, entry)

    metric_fn, metric_data = None, ""
    if metric:
        from zoo.evaluation import EVAL_BATCH_SIZE

        eval_batches = task.batches(entry, entry.eval_data, batch_size=EVAL_BATCH_SIZE, shuffle=False)

        def metric_fn(model: nn.Module) -> dict[str, float]:
            return task.evaluate(model, eval_batches, entry, progress=progress).metrics

        metric_data = f"{entry.eval_data.name} ({entry.eval_data.split}), all of it"
    where = f"{train_data.name} ({train_data.split})"
    return linear_path(
        model_a, model_b, loss_fn, loss_list, points, span=span, bn_batches=bn_list, metric_fn=metric_fn,
        names=(model_a.zoo.name, model_b.zoo.name),
        loss_data=f"the first {len(loss_list)} batches of {batch_size} of {where}, in order",
        bn_data=f"the first {len(bn_list)} batches of {batch_size} of {where}, shuffled with seed {seed}",
        metric_data=metric_data,
    )


def _first(batches: Any, count: int) -> list[Any]:
    out: list[Any] = []
    for batch in batches.epoch(0):
        if len(out) == count:
            break
        out.append(batch)
    return out


def path_file_stem(model_a: str) -> str:
    """File name stem of the path from `model_a` saved beside the variant it was run for."""
    return f"linear_path_from_{model_a}"
