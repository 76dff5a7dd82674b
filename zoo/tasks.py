"""Tasks: how a family's models are fed, trained and scored, and which metrics they report.

A `Task` is registered once under its name (`ModelEntry.task` names it) by its family's `task`
module (`zoo.families.<family>.task`), which is imported the first time the task is asked for. Its `metrics` are
`MetricSpec`s: metrics[0] is the primary one (the y axis of the card's plot, and the Pareto front,
in the direction `higher_is_better` says). Metric keys and averaging conventions are registered with
the task, so cards can describe every number a report holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.entry import DataSpec, ModelEntry
from zoo.errors import DuplicateNameError, InvalidArgumentError
from zoo.registry import Registry

# Keyword arguments of every torchmetrics metric the zoo builds: evaluation runs on one process (rank 0
# in a distributed run, zoo.distributed), so a metric never all-gathers its state over a process group.
LOCAL_METRIC: dict[str, Any] = {"sync_on_compute": False}

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.data import Batches
    from zoo.runtimes.signature import GraphSignature


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
    `extra_plots` are the plots its cards show beside metric-vs-FLOPs. `distill_logits_loss` is how
    distillation (`zoo.compress.distill`) compares the student's and the teacher's outputs: "kl" for
    class scores, "mse" for outputs that are not (images), None where the two models' outputs cannot be
    compared at all (the task's forward draws from each model's own predictions)."""

    name: str
    metrics: tuple[MetricSpec, ...]
    average: str
    average_meaning: str
    pipeline_tag: str | None = None
    extra_plots: tuple[MetricPlot, ...] = ()
    distill_logits_loss: str | None = "kl"

    @property
    def primary(self) -> MetricSpec:
        return self.metrics[0]

    def batches(self, entry: ModelEntry, data: DataSpec, *, batch_size: int, shuffle: bool, seed: int = 0) -> Batches:
        from zoo.data import Batches, dataset

        return Batches(dataset(data, entry), batch_size=batch_size, shuffle=shuffle, seed=seed)

    def check_entry(self, entry: ModelEntry) -> None:
        """Refuses (UnsupportedModelError) an entry this task cannot load or evaluate, before anything is
        downloaded or built; entries made from libraries' catalogs may be of other kinds. Default: any."""

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

    def export_signature(self, entry: ModelEntry) -> GraphSignature:
        """How `entry`'s model maps onto an exported graph (ONNX, OpenVINO): see zoo.runtimes. A task
        whose models do not export raises `UnsupportedExportError` saying why; this default does."""
        from zoo.runtimes.signature import UnsupportedExportError

        raise UnsupportedExportError(f"the {self.name} task declares no exported graph")


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


def metric_spec(key: str) -> MetricSpec:
    """The spec of metric `key`. A report read back from disk may name a metric whose family nothing
    has imported yet: on a miss every family's task module is imported, then the lookup is repeated."""
    return _all_tasks_on_miss(METRICS, key)


def average_meaning(average: str) -> str:
    return _all_tasks_on_miss(AVERAGES, average)


def task_of(entry: ModelEntry) -> Task:
    return task_named(entry.task)


def task_named(name: str) -> Task:
    """The task registered as `name`, its family's task module imported on first use."""
    if name not in TASKS:
        from zoo.families import ensure_task

        ensure_task(name)
    return TASKS.get(name)


def _all_tasks_on_miss(registry: Registry, key: str) -> Any:
    if key not in registry:
        from zoo.families import ensure_all

        ensure_all()
    return registry.get(key)
