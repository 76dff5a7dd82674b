"""The zoo: a compression-aware model zoo and hub.

    import zoo
    model = zoo.load("resnet18.zoo_digits", sparsity=0.9)   # derived on the spot, then cached
    model.zoo.report.metrics                                  # measured top-1 / top-5

Importing the zoo is light: `zoo.load` and what it needs (torch, the recipes, the evaluator) are
imported on first use, the families' models, tasks and data when an entry of theirs is first used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zoo.errors import (
    CardValidationError, CheckpointError, ChecksumError, HubError, InvalidArgumentError, RecipeError,
    UnknownNameError, ZooError,
)
from zoo.models import get_entry, list_entries
from zoo.options import TrainOptions
from zoo.variants import info, resolve

if TYPE_CHECKING:
    from zoo.api import LoadedVariant, load
    from zoo.publish import PushResult, push

_LAZY = {"LoadedVariant": "zoo.api", "load": "zoo.api", "push": "zoo.publish", "PushResult": "zoo.publish"}

__all__ = [
    "CardValidationError", "CheckpointError", "ChecksumError", "HubError", "InvalidArgumentError",
    "LoadedVariant", "PushResult", "RecipeError", "TrainOptions", "UnknownNameError", "ZooError", "get_entry", "info",
    "list_entries", "load", "push", "resolve",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
