"""Tasks: how a family's models are fed, trained and scored, and which metrics they report.

A `Task` is registered once under its name (`ModelEntry.task` names it). Its `metrics` are
`MetricSpec`s: metrics[0] is the primary one (the y axis of the card's plot, and the Pareto front,
in the direction `higher_is_better` says). Metric keys and averaging conventions are registered with
the task, so cards can describe every number a report holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from zoo.data import Batches, dataset
from zoo.entry import DataSpec, ModelEntry
from zoo.errors import DuplicateNameError, InvalidArgumentError
from zoo.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    """A metric a task reports: its key in `VariantReport.metrics`, a readable name, the model-index
    metric type (e.g. "accuracy", "bleu", "psnr"), its direction, and its unit ("fraction": a value in
    [0, 1] shown as %; else shown as is, e.g. "dB", "bits")."""

    key: str
    name: str
    type: str
    higher_is_better: bool = True
    unit: str = ""

    def format(self, value: float) -> str:
        return f"{100 * value:.2f} %" if self.unit == "fraction" else f"{value:.4g}{f' {self.unit}' if self.unit else ''}"


@dataclass(frozen=True)
class MetricPlot:
    """A second plot a task's cards show beside metric-vs-FLOPs: metric `y` against metric `x` over the
    family (e.g. a codec's rate-distortion curve: PSNR against bits per pixel), drawn into `filename`."""

    x: str
    y: str
    filename: str


@dataclass(frozen=True)
class TaskResult:
    """Task metrics of one evaluation; `average` says how they were averaged (said on cards)."""

    metrics: dict[str, float]
    average: str
    num_examples: int


class Task:
    """Base class of tasks. Subclasses set `name`, `metrics`, `average` (+ `average_meaning`) and
    implement `loss`, `evaluate` and `example_input`; `batches` and `model_inputs` suit (x, y) data.
    `pipeline_tag` is the Hugging Face Hub's tag for the task (None where the Hub has none), and
    `extra_plots` are the plots its cards show beside metric-vs-FLOPs."""

    name: str
    metrics: tuple[MetricSpec, ...]
    average: str
    average_meaning: str
    pipeline_tag: str | None = None
    extra_plots: tuple[MetricPlot, ...] = ()

    @property
    def primary(self) -> MetricSpec:
        return self.metrics[0]

    def batches(self, entry: ModelEntry, data: DataSpec, *, batch_size: int, shuffle: bool, seed: int = 0) -> Batches:
        return Batches(dataset(data, entry), batch_size=batch_size, shuffle=shuffle, seed=seed)

    def loss(self, model: nn.Module, batch: Any, entry: ModelEntry) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batches: Batches, entry: ModelEntry, *, progress: bool = True) -> TaskResult:
        raise NotImplementedError

    def example_input(self, entry: ModelEntry) -> torch.Tensor | tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def describe_example(self, entry: ModelEntry) -> str:
        """What `example_input` is, in words: the cards say FLOPs and latency are per this."""
        raise NotImplementedError

    def model_inputs(self, batch: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """What the model is called with for a batch (int8 calibration feeds these)."""
        return batch[0]


TASKS: Registry[Task] = Registry("task")
METRICS: Registry[MetricSpec] = Registry("metric")
AVERAGES: Registry[str] = Registry("metric average")


def _register_once(registry: Registry, key: str, value: Any) -> None:
    """Tasks may share a metric (PSNR) or an average: the same definition again is fine, another is not."""
    if key in registry:
        if registry.get(key) != value:
            raise DuplicateNameError(f"{registry.kind} {key!r} is already registered differently")
        return
    registry.register(key, value)


def register_task(task: Task) -> Task:
    TASKS.register(task.name, task)
    for spec in task.metrics:
        _register_once(METRICS, spec.key, spec)
    keys = {spec.key for spec in task.metrics}
    unknown = [key for plot in task.extra_plots for key in (plot.x, plot.y) if key not in keys]
    if unknown:
        raise InvalidArgumentError(f"task {task.name!r} plots metrics it does not report: {', '.join(unknown)}")
    _register_once(AVERAGES, task.average, task.average_meaning)
    return task


def _registered(registry: Registry) -> Registry:
    """`registry` once every family has registered its tasks (they do on import: a report read back
    from disk may name a task whose family nothing has imported yet)."""
    import zoo.families  # noqa: F401

    return registry


def metric_spec(key: str) -> MetricSpec:
    return _registered(METRICS).get(key)


def average_meaning(average: str) -> str:
    return _registered(AVERAGES).get(average)


def task_of(entry: ModelEntry) -> Task:
    return _registered(TASKS).get(entry.task)


def task_named(name: str) -> Task:
    return _registered(TASKS).get(name)


class ImageClassification(Task):
    """Cross-entropy training (with the entry's label smoothing); top-1/top-5 accuracy via torchmetrics,
    `average="micro"` (the fraction of all examples classified right, as ImageNet results are quoted)."""

    name = "image-classification"
    pipeline_tag = "image-classification"
    metrics = (
        MetricSpec("top1", "top-1 accuracy", "accuracy", unit="fraction"),
        MetricSpec("top5", "top-5 accuracy", "accuracy", unit="fraction"),
    )
    average = "micro"
    average_meaning = "over all examples"

    def loss(self, model: nn.Module, batch: Any, entry: ModelEntry) -> torch.Tensor:
        images, labels = batch
        smoothing = entry.train.label_smoothing if entry.train is not None else 0.0
        return F.cross_entropy(model(images), labels, label_smoothing=smoothing)

    def evaluate(self, model: nn.Module, batches: Batches, entry: ModelEntry, *, progress: bool = True) -> TaskResult:
        from zoo.evaluate.metrics import evaluate_classifier

        result = evaluate_classifier(model, batches, entry.num_classes, average=self.average, progress=progress)
        return TaskResult(result.metrics, result.average, result.num_examples)

    def example_input(self, entry: ModelEntry) -> torch.Tensor:
        return torch.zeros(entry.input.example_shape(1))

    def describe_example(self, entry: ModelEntry) -> str:
        channels, (height, width) = entry.input.channels, entry.input.size
        return f"one {channels}x{height}x{width} image"


register_task(ImageClassification())
