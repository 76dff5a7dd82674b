"""Classification accuracy of a model over batches, computed by torchmetrics (top-k, micro/macro/weighted)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from tqdm.auto import tqdm

from zoo.errors import InvalidArgumentError
from zoo.tasks import LOCAL_METRIC

# torchmetrics' averages that give one number; its fourth, "none", gives one per class.
AVERAGES = ("micro", "macro", "weighted")


@dataclass(frozen=True)
class ClassificationResult:
    """Accuracies as fractions in [0, 1] keyed "top{k}", how they were averaged, and over how many examples."""

    metrics: dict[str, float]
    average: str
    num_examples: int


def evaluate_classifier(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
                        top_k: tuple[int, ...] = (1, 5), average: str = "micro", *,
                        progress: bool = True) -> ClassificationResult:
    """Top-k accuracies of `model` (eval mode, inference mode) over (inputs, integer labels) batches.
    Inputs and labels go to the device of the model's parameters; top-k values above `num_classes` are
    skipped. The model's training flag is restored afterwards."""
    ks = _check_arguments(num_classes, top_k, average)
    device = next(model.parameters(), torch.empty(0)).device
    metrics = {f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average=average, **LOCAL_METRIC).to(device) for k in ks}
    num_examples = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for inputs, labels in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
                logits = model(inputs.to(device))
                if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != num_classes:
                    shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                    raise InvalidArgumentError(f"the model must return (batch, {num_classes}) logits, got {shape}")
                for metric in metrics.values():
                    metric.update(logits, labels.to(device))
                num_examples += len(labels)
    finally:
        model.train(was_training)
    if num_examples == 0:
        raise InvalidArgumentError("no examples to evaluate: the batches were empty")
    return ClassificationResult({name: float(m.compute()) for name, m in metrics.items()}, average, num_examples)


def _check_arguments(num_classes: int, top_k: tuple[int, ...], average: str) -> list[int]:
    """Validate the arguments; return the k's to compute (those not above `num_classes`)."""
    if average not in AVERAGES:
        raise InvalidArgumentError(f"average must be one of {', '.join(AVERAGES)}; got {average!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InvalidArgumentError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not top_k or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in top_k):
        raise InvalidArgumentError(f"top_k must be a non-empty tuple of integers >= 1, got {top_k!r}")
    ks = sorted({k for k in top_k if k <= num_classes})
    if not ks:
        raise InvalidArgumentError(f"every top_k {top_k} exceeds num_classes={num_classes}: nothing to measure")
    return ks
