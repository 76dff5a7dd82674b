"""Training of the zoo-native base models: seeded, deterministic data order, with a progress bar."""
from __future__ import annotations

import torch
from torch import nn

from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.models import INITIALIZERS, build_model
from zoo.tasks import task_of
from zoo.training import train


def train_base_model(entry: ModelEntry, *, progress: bool = True, epochs: int | None = None,
                     init: nn.Module | None = None) -> nn.Module:
    """Trains `entry` by its TrainSpec, from scratch or, when it names `init_from`, from `init` (that
    entry's trained model) through its family's initializer; same seed, same data order, same weights."""
    spec = entry.train
    if spec is None:
        raise InvalidArgumentError(f"{entry.name} is an upstream checkpoint: it is downloaded, not trained here")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise InvalidArgumentError(f"epochs must be a positive integer, got {epochs!r}")
    if (init is None) != (spec.init_from is None):
        raise InvalidArgumentError(f"{entry.name} starts from {spec.init_from or 'random weights'}; "
                                   f"got {'no' if init is None else 'an'} initial model")
    torch.manual_seed(spec.seed)
    model = build_model(entry) if init is None else INITIALIZERS.get(entry.family)(entry, init).train()
    task = task_of(entry)
    batches = task.batches(entry, spec.data, batch_size=spec.batch_size, shuffle=True, seed=spec.seed)
    train(
        model, batches.epoch, lambda m, b: task.loss(m, b, entry),
        epochs=spec.epochs if epochs is None else epochs, lr=spec.lr, weight_decay=spec.weight_decay,
        optimizer=spec.optimizer, progress=progress,
        desc=f"train {entry.name}",
    )
    return model.eval()
