"""Tasks: how a family's models are fed, trained and scored. One registered Task per task name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from zoo.data import Batches, dataset
from zoo.entry import DataSpec, ModelEntry
from zoo.registry import Registry


@dataclass(frozen=True)
class TaskResult:
    """Task metrics of one evaluation; `average` is torchmetrics' `average=` used (said on cards)."""

    metrics: dict[str, float]
    average: str
    num_examples: int


class ImageClassification:
    """Cross-entropy training (with the entry's label smoothing); top-1/top-5 accuracy via torchmetrics,
    `average="micro"` (the fraction of all examples classified right, as ImageNet results are quoted)."""

    name = "image-classification"
    average = "micro"
    primary_metric = "top1"

    def batches(self, entry: ModelEntry, data: DataSpec, *, batch_size: int, shuffle: bool, seed: int = 0) -> Batches:
        return Batches(dataset(data, entry.input), batch_size=batch_size, shuffle=shuffle, seed=seed)

    def loss(self, model: nn.Module, batch: Any, *, label_smoothing: float = 0.0) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)

    def evaluate(self, model: nn.Module, batches: Batches, entry: ModelEntry, *, progress: bool = True) -> TaskResult:
        from zoo.evaluate.metrics import evaluate_classifier

        result = evaluate_classifier(model, batches, entry.num_classes, average=self.average, progress=progress)
        return TaskResult(result.metrics, result.average, result.num_examples)

    def example_input(self, entry: ModelEntry) -> torch.Tensor:
        return torch.zeros(entry.input.example_shape(1))


TASKS: Registry[Any] = Registry("task")
TASKS.register(ImageClassification.name, ImageClassification())


def task_of(entry: ModelEntry) -> ImageClassification:
    return TASKS.get(entry.task)
