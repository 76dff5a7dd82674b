"""Data sets, registered by name by the families' `data` modules, and the batches the zoo feeds.

A `DataSpec` names a data set and a split; `dataset(spec, entry)` imports the family that provides
the data set (its `zoo.families.<family>.data` module) the first time it is asked for, and returns the
split prepared for `entry`'s model.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from zoo.entry import DataSpec, ModelEntry
from zoo.registry import Registry

DatasetFactory = Callable[[str, "ModelEntry"], Dataset]
DATASETS: Registry[DatasetFactory] = Registry("dataset")
# What each data set is, in a sentence, for the cards (registered beside the data set itself).
DATASET_DESCRIPTIONS: Registry[str] = Registry("dataset description")


def _ensure(name: str) -> None:
    if name not in DATASETS:
        from zoo.families import ensure_dataset

        ensure_dataset(name)


def describe_dataset(name: str) -> str:
    _ensure(name)
    return DATASET_DESCRIPTIONS.get(name)


def dataset(spec: DataSpec, entry: ModelEntry) -> Dataset:
    """The `spec.split` split of the registered data set `spec.name`, prepared for `entry`'s model."""
    _ensure(spec.name)
    return DATASETS.get(spec.name)(spec.split, entry)


@dataclass(frozen=True)
class Batches:
    """Re-iterable, deterministic batches of a dataset: epoch `e` is shuffled with seed `seed + e`."""

    data: Dataset
    batch_size: int
    shuffle: bool = False
    seed: int = 0

    def epoch(self, epoch: int = 0) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=self.shuffle, generator=generator)

    def __iter__(self) -> Iterator:
        return iter(self.epoch(0))

    def __len__(self) -> int:
        return len(self.epoch(0))
