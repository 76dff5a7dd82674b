"""The zoo: a compression-aware model zoo and hub.

    import zoo
    model = zoo.load("resnet18.zoo_digits", sparsity=0.9)   # derived on the spot, then cached
    model.zoo.report.metrics                                  # measured top-1 / top-5
"""
from zoo.api import LoadedVariant, info, load, resolve
from zoo.errors import (
    CardValidationError, CheckpointError, ChecksumError, HubError, InvalidArgumentError, RecipeError,
    UnknownNameError, ZooError,
)
from zoo.models import get_entry, list_entries

__all__ = [
    "CardValidationError", "CheckpointError", "ChecksumError", "HubError", "InvalidArgumentError",
    "LoadedVariant", "RecipeError", "UnknownNameError", "ZooError", "get_entry", "info", "list_entries",
    "load", "resolve",
]
