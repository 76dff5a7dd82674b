"""Training of the zoo-native base models: seeded, deterministic data order, with a progress bar.

`train_base_model` is the one entry point: from scratch, or from another entry's trained weights
through the family's registered initializer (`zoo.models.INITIALIZERS`: MC-BERT's classifiers start
from a pre-trained encoder, MAT from a Transformer by proximal initialization).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from zoo.data import Batches
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.models import build_model, family_initializer
from zoo.options import TrainOptions
from zoo.tasks import task_of
from zoo.training import LossFn, train


@contextmanager
def seeded_run(entry: ModelEntry, init: nn.Module | None = None) -> Iterator[tuple[nn.Module, Batches, LossFn]]:
    """The start of `entry`'s training run, on a fork of torch's random state seeded by its TrainSpec
    (the caller's random stream is untouched): the initialized model (from scratch, or from `init`,
    that entry's trained model, through its family's initializer), the shuffled training batches and the
    loss. Train inside the `with` block so that the run's own random draws (dropout) stay seeded."""
    spec = entry.train
    if spec is None:
        raise InvalidArgumentError(f"{entry.name} is an upstream checkpoint: it is downloaded, not trained here")
    if (init is None) != (spec.init_from is None):
        raise InvalidArgumentError(f"{entry.name} starts from {spec.init_from or 'random weights'}; "
                                   f"got {'no' if init is None else 'an'} initial model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(entry) if init is None else family_initializer(entry)(entry, init).train()
        task = task_of(entry)
        batches = task.batches(entry, spec.data, batch_size=spec.batch_size, shuffle=True, seed=spec.seed)
        yield model, batches, lambda m, b: task.loss(m, b, entry)


def train_base_model(entry: ModelEntry, *, progress: bool = True, init: nn.Module | None = None,
                     options: TrainOptions | None = None) -> nn.Module:
    """Trains `entry` by its TrainSpec, from scratch or, when it names `init_from`, from `init` (that
    entry's trained model) through its family's initializer; same seed, same data order, same weights
    (on the same machine, library versions and torch thread count).
    `options.epochs` replaces the TrainSpec's epochs (None: keep them)."""
    options = options or TrainOptions()
    with seeded_run(entry, init) as (model, batches, loss_fn):
        spec = entry.train
        train(
            model, batches.epoch, loss_fn,
            epochs=spec.epochs if options.epochs is None else options.epochs, lr=spec.lr,
            weight_decay=spec.weight_decay, optimizer=spec.optimizer, progress=progress,
            desc=f"train {entry.name}" + (f" from {spec.init_from}" if init is not None else ""),
        )
    return model.eval()
