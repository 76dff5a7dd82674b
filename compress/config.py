"""Compression steps as data: a config dataclass per step, validated in `__post_init__`, versioned,
and serialized to JSON through an allowlist (only registered config types are ever rebuilt)."""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, ClassVar, TypeVar

from zoo.errors import InvalidArgumentError, RecipeError, ZooError
from zoo.registry import Registry

CONFIG_TYPES: Registry[type["CompressionConfig"]] = Registry("recipe config type")

_JSON_SCALARS = (str, int, float, bool, type(None))

C = TypeVar("C", bound=type["CompressionConfig"])


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    """Base of every compression step. Subclasses set VERSION and validate in `__post_init__`. A step
    that gained a field says, in UPGRADES, what each older version it still reads meant by it: version ->
    {field: the value that version ran with}, so an old recipe replays as it ran."""

    VERSION: ClassVar[int] = 1
    UPGRADES: ClassVar[dict[int, dict[str, Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"type": type(self).__name__, "version": self.VERSION, "config": data}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CompressionConfig:
        if not isinstance(data, dict) or not {"type", "version", "config"} <= data.keys():
            raise RecipeError(f"a recipe step needs 'type', 'version' and 'config', got {data!r}"[:300])
        if not isinstance(data["type"], str):
            raise RecipeError(f"a recipe step's 'type' is the name of a config type, got {data['type']!r}"[:300])
        if type(data["version"]) is not int:
            raise RecipeError(f"{data['type']}: 'version' must be an integer, got {data['version']!r}"[:300])
        if data["type"] not in CONFIG_TYPES:  # a step module not imported yet: every one registers its type
            from zoo.compress import register_all

            register_all()
        cls = CONFIG_TYPES.get(data["type"])
        if data["version"] != cls.VERSION and data["version"] not in cls.UPGRADES:
            readable = ", ".join(str(v) for v in sorted({*cls.UPGRADES, cls.VERSION}))
            raise RecipeError(
                f"{data['type']} version {data['version']} is not supported (this zoo reads version {readable})"
            )
        if not isinstance(data["config"], dict):
            raise RecipeError(f"{data['type']}: 'config' must be a mapping of fields, got {data['config']!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data["config"]) - set(fields)
        if unknown:
            raise RecipeError(f"{data['type']} has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
        implied = cls.UPGRADES.get(data["version"], {}) if data["version"] != cls.VERSION else {}
        values = {**implied, **{k: _from_json(v) for k, v in data["config"].items()}}
        try:
            return cls(**values)
        except ZooError:
            raise
        except (TypeError, ValueError, OverflowError) as err:  # a field of the wrong kind its checks did not name
            raise RecipeError(f"{data['type']}: {err}") from None


def register_config(cls: C) -> C:
    """Class decorator: puts a config type on the deserialization allowlist."""
    CONFIG_TYPES.register(cls.__name__, cls)
    return cls


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, _JSON_SCALARS):
        return value
    raise RecipeError(f"config values must be JSON scalars or tuples of them, got {type(value).__name__}")


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    if isinstance(value, _JSON_SCALARS):
        return value
    raise RecipeError(f"config values must be JSON scalars or lists of them, got {type(value).__name__}")


# Validation helpers shared by the config types ---------------------------------------------------

def check_fraction(name: str, value: float, *, upper_open: bool = True) -> None:
    """Sparsities live in [0, 1): a model with every weight zero is not a model."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RecipeError(f"{name} must be a number, got {value!r}")
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        raise RecipeError(f"{name} must be in [0, 1{')' if upper_open else ']'}, got {value}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise RecipeError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False, integer: bool = False) -> None:
    """A finite number > 0 (>= 0 with `allow_zero`); with `integer`, an int (epochs, steps, batches)."""
    kinds = (int,) if integer else (int, float)
    if (isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < 0
            or (value == 0 and not allow_zero)):
        what = f"{'an integer' if integer else 'a finite number'} {'>= 0' if allow_zero else '> 0'}"
        raise RecipeError(f"{name} must be {what}, got {value!r}")


def check_patterns(name: str, patterns: tuple[str, ...]) -> None:
    """Layer-name patterns are regular expressions matched with re.fullmatch against module names."""
    if not isinstance(patterns, tuple):
        raise RecipeError(f"{name} must be a tuple of regular expressions, got {patterns!r}")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as err:
            raise RecipeError(f"{name}: {pattern!r} is not a regular expression ({err})") from None


def check_block(block: tuple[int, int]) -> tuple[int, int]:
    """A pruning block shape: (rows, cols), positive integers (kept here, torch-free, for the registry)."""
    if (not isinstance(block, tuple) or len(block) != 2
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block)):
        raise InvalidArgumentError(f"block must be a (rows, cols) tuple of positive integers, got {block!r}")
    return block
