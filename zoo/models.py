"""The model registry: every checkpoint the zoo knows, by `arch.tag`, and the family builders.

Entries come from the families' light `entries` modules (imported on the first lookup); builders and
initializers from their `model` modules, imported when an entry of theirs is first built. Importing
this module imports neither torch nor any family.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from zoo.entry import ModelEntry
from zoo.registry import Registry

if TYPE_CHECKING:
    from torch import nn

MODELS: Registry[ModelEntry] = Registry("model")
FAMILIES: Registry[Callable[[ModelEntry], nn.Module]] = Registry("model family")
# family -> fn(entry, trained model of entry.train.init_from) -> the model to train, initialized from it
INITIALIZERS: Registry[Callable[[ModelEntry, nn.Module], nn.Module]] = Registry("initializer")


def register_entry(entry: ModelEntry) -> ModelEntry:
    return MODELS.register(entry.name, entry)


def get_entry(name: str) -> ModelEntry:
    _ensure_families()
    return MODELS.get(name)


def list_entries(*, family: str | None = None, task: str | None = None, source: str | None = None) -> list[ModelEntry]:
    _ensure_families()
    return [
        entry for _, entry in MODELS.items()
        if (family is None or entry.family == family)
        and (task is None or entry.task == task)
        and (source is None or entry.source == source)
    ]


def family_builder(entry: ModelEntry) -> Callable[[ModelEntry], nn.Module]:
    """The builder of `entry.family`, its family's model module imported on first use."""
    _ensure_model_family(entry.family)
    return FAMILIES.get(entry.family)


def family_initializer(entry: ModelEntry) -> Callable[[ModelEntry, nn.Module], nn.Module]:
    """How `entry.family` starts a model from another entry's trained weights (`TrainSpec.init_from`)."""
    _ensure_model_family(entry.family)
    return INITIALIZERS.get(entry.family)


def build_model(entry: ModelEntry) -> nn.Module:
    """The entry's architecture, randomly initialized, in eval mode."""
    return family_builder(entry)(entry).eval()


def build_empty_model(entry: ModelEntry) -> nn.Module:
    """The entry's architecture on the meta device, without running its weight initializers: a shell
    for weights that are about to be assigned (what `zoo.load` does), in eval mode."""
    import torch

    with torch.device("meta"), _skip_torch_init():
        return build_model(entry)


_INITIALIZERS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)


@contextlib.contextmanager
def _skip_torch_init() -> Iterator[None]:
    """torch.nn.init's initializers as no-ops (as transformers' `no_init_weights` does): on the meta
    device they only cost time, about half of building a ResNet-50 shell."""
    import torch

    saved = {name: getattr(torch.nn.init, name) for name in _INITIALIZERS}
    try:
        for name in saved:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _ensure_families() -> None:
    from zoo.families import ensure_entries  # on first use, keeping `import zoo` light

    ensure_entries()


def _ensure_model_family(family: str) -> None:
    if family not in FAMILIES:
        from zoo.families import ensure_model_family

        ensure_model_family(family)
