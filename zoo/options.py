"""`TrainOptions`: how much training and measuring `zoo.load`, `zoo train` and the sweep do.

The default is each entry's own recipe: its TrainSpec's epochs for a base, half of them for a default
gradual-pruning fine-tune, and latency measured for `DEFAULT_LATENCY_SECONDS` per model. Departing from
it (the tests train for one epoch; a quick look at a family may too) is explicit, and every departure is
part of the cache key of what it makes, so a briefly trained model is never taken for the fully trained
one. The command line reads the options from `$ZOO_TRAIN_OPTIONS` (`TrainOptions.parse` syntax, e.g.
`epochs=1,finetune_epochs=1,latency_seconds=0.05`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

from zoo.errors import InvalidArgumentError

DEFAULT_LATENCY_SECONDS = 0.5
ENV_VAR = "ZOO_TRAIN_OPTIONS"


def _check_epochs(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(f"{name} must be a positive integer or None, got {value!r}")


@dataclass(frozen=True)
class TrainOptions:
    """`epochs`: base-model training epochs (None: the entry's TrainSpec). `finetune_epochs`: epochs of
    the default gradual-pruning recipes' fine-tuning (None: half the base's TrainSpec epochs).
    `latency_seconds`: minimum run time of each latency measurement."""

    epochs: int | None = None
    finetune_epochs: int | None = None
    latency_seconds: float = DEFAULT_LATENCY_SECONDS

    def __post_init__(self) -> None:
        _check_epochs("epochs", self.epochs)
        _check_epochs("finetune_epochs", self.finetune_epochs)
        seconds = self.latency_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            raise InvalidArgumentError(f"latency_seconds must be a finite number > 0, got {seconds!r}")

    @property
    def is_default(self) -> bool:
        return self == TrainOptions()

    def cache_key(self) -> str:
        """"" for the entry's own recipe, else the options as JSON (appended to cache keys)."""
        return "" if self.is_default else json.dumps(dataclasses.asdict(self), sort_keys=True)

    def to_text(self) -> str:
        """The `parse` form: `epochs=1,finetune_epochs=1,latency_seconds=0.05` (unset fields left out)."""
        return ",".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items() if v is not None)

    @classmethod
    def parse(cls, text: str) -> TrainOptions:
        """`key=value` pairs separated by commas; keys are the field names; "" gives the defaults."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, int | float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                raise InvalidArgumentError(f"train options: {item!r} is not one of {', '.join(k + '=...' for k in fields)}")
            try:
                values[key] = float(value) if key == "latency_seconds" else int(value)
            except ValueError:
                raise InvalidArgumentError(f"train options: {key} must be a number, got {value!r}") from None
        return cls(**values)

    @classmethod
    def from_env(cls) -> TrainOptions:
        """The options `$ZOO_TRAIN_OPTIONS` gives (the defaults when it is unset or empty)."""
        return cls.parse(os.environ.get(ENV_VAR, ""))
