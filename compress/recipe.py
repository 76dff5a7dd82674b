"""A recipe is an ordered list of compression configs; each config type has one registered handler.

    recipe = Recipe((MagnitudePruningConfig(sparsity=0.9), Int8PTQConfig()))
    model = recipe.apply(model, context)
    assert Recipe.from_json(recipe.to_json()) == recipe
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

from zoo.compress.config import CompressionConfig
from zoo.errors import RecipeError
from zoo.parsing import load_json, load_yaml
from zoo.registry import Registry

RECIPE_FORMAT_VERSION = 1


@dataclass
class RecipeContext:
    """What a handler may need besides the model and its config.

    `train_batches(epoch)` yields training batches for one epoch (deterministic given the epoch),
    `loss_fn(model, batch)` returns the training loss of a batch, and `calibration_batches()` yields
    model inputs for a calibration pass. `fresh_model()` returns a newly initialized model of the
    architecture being compressed, as its family builds it (sparse training from scratch starts from
    its weights). Handlers that need one of them and do not get it raise.
    """

    train_batches: Callable[[int], Iterable[Any]] | None = None
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None
    calibration_batches: Callable[[], Iterable[Any]] | None = None
    fresh_model: Callable[[], nn.Module] | None = None
    progress: bool = True
    seed: int = 0

    def require(self, *names: str, step: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise RecipeError(f"{step} needs {', '.join(missing)} in its RecipeContext")


Handler = Callable[[nn.Module, Any, RecipeContext], nn.Module]
HANDLERS: Registry[Handler] = Registry("recipe handler")

H = TypeVar("H", bound=Handler)


def handles(config_type: type[CompressionConfig]) -> Callable[[H], H]:
    """Decorator: registers the one handler of `config_type` (a second one is refused)."""

    def register(fn: H) -> H:
        HANDLERS.register(config_type.__name__, fn)
        return fn

    return register


@dataclass(frozen=True)
class Recipe:
    """An ordered tuple of compression steps. Serializes to JSON or YAML and back without loss."""

    steps: tuple[CompressionConfig, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.steps, tuple):
            object.__setattr__(self, "steps", tuple(self.steps))
        for step in self.steps:
            if not isinstance(step, CompressionConfig):
                raise RecipeError(f"recipe steps must be compression configs, got {type(step).__name__}")

    def apply(self, model: nn.Module, context: RecipeContext | None = None) -> nn.Module:
        context = context or RecipeContext()
        for step in self.steps:
            model = HANDLERS.get(type(step).__name__)(model, step, context)
        return model

    def to_list(self) -> list[dict[str, Any]]:
        return [step.to_dict() for step in self.steps]

    @classmethod
    def from_list(cls, data: list[dict[str, Any]]) -> Recipe:
        if not isinstance(data, list):
            raise RecipeError(f"a recipe is a list of steps, got {type(data).__name__}")
        return cls(tuple(CompressionConfig.from_dict(step) for step in data))

    def to_json(self) -> str:
        return json.dumps({"recipe_version": RECIPE_FORMAT_VERSION, "steps": self.to_list()}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Recipe:
        """A recipe document in JSON (text or UTF-8 bytes, within `zoo.parsing`'s size and depth bounds)."""
        return cls._from_document(load_json(text, what="recipe", error=RecipeError))

    def to_yaml(self) -> str:
        return yaml.safe_dump({"recipe_version": RECIPE_FORMAT_VERSION, "steps": self.to_list()}, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str | bytes) -> Recipe:
        """A recipe document in YAML (text or UTF-8 bytes), read by the safe loader within `zoo.parsing`'s
        size and depth bounds; anchors and aliases are refused (RecipeError), never expanded."""
        return cls._from_document(load_yaml(text, what="recipe", error=RecipeError))

    @classmethod
    def _from_document(cls, data: Any) -> Recipe:
        if not isinstance(data, dict) or "steps" not in data:
            raise RecipeError("a recipe document is a mapping with 'recipe_version' and 'steps'")
        if type(data.get("recipe_version")) is not int or data["recipe_version"] != RECIPE_FORMAT_VERSION:
            raise RecipeError(
                f"recipe_version {data.get('recipe_version')!r} is not supported (this zoo reads {RECIPE_FORMAT_VERSION})"
            )
        return cls.from_list(data["steps"])

    def describe(self) -> str:
        """One line per step, for logs and cards."""
        return "; ".join(f"{type(s).__name__}({', '.join(f'{k}={v}' for k, v in s.to_dict()['config'].items())})" for s in self.steps)
