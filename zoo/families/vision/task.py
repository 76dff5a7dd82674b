"""The vision family's task: image classification (cross-entropy, top-1/top-5 accuracy)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from zoo.data import Batches
from zoo.entry import ModelEntry
from zoo.errors import UnsupportedModelError
from zoo.runtimes.signature import GraphSignature, batch_axes
from zoo.tasks import MetricSpec, Task, TaskResult, register_task
from zoo.userdata import USER_DATA_ADAPTERS, UserDataAdapter


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

    def check_entry(self, entry: ModelEntry) -> None:
        """A timm checkpoint without a classifier (`num_classes` 0 in its pretrained config: a feature
        extractor, an image tower) is not an image classifier; one whose weights timm hosts outside the Hub
        has no repo to load them from."""
        if entry.num_classes < 1:
            raise UnsupportedModelError(f"{entry.name} is not an image classifier: its timm config has no classifier "
                                        "(num_classes 0, a feature extractor); the zoo loads and evaluates classifiers")
        if entry.source == "upstream" and not entry.repo_id:
            raise UnsupportedModelError(f"{entry.name}: timm hosts its weights outside the Hugging Face Hub (no "
                                        "hf_hub_id in its pretrained config); the zoo loads weights from Hub repos")

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

    def export_signature(self, entry: ModelEntry) -> GraphSignature:
        """Images in (batch dynamic, size fixed to the entry's), logits out."""
        return GraphSignature(("pixel_values",), ("logits",), batch_axes("pixel_values"))


register_task(ImageClassification())


def _with_classes(entry: ModelEntry, num_classes: int) -> ModelEntry:
    """The entry whose timm model has `num_classes` outputs (timm's `num_classes=` kwarg)."""
    return dataclasses.replace(entry, num_classes=num_classes, label_set="",
                               model_kwargs={**entry.model_kwargs, "num_classes": num_classes})


def _reset_classifier(model: nn.Module, num_classes: int) -> None:
    model.reset_classifier(num_classes)  # timm's: a freshly initialized head of num_classes outputs


def _user_images(entry: ModelEntry, images, labels: list[int], training: bool):
    from zoo.families.vision.data import UserImages

    return UserImages(entry, images, labels, training)


USER_DATA_ADAPTERS.register("image-classification", UserDataAdapter(
    column="image", dataset=_user_images, with_classes=_with_classes, reset_classifier=_reset_classifier))
