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
from zoo.runtimes.names import GRAPH_RUNTIMES

DEFAULT_LATENCY_SECONDS = 0.5
TRAINING_FIELDS = ("epochs", "finetune_epochs")  # the fields that change the weights made
ENV_VAR = "ZOO_TRAIN_OPTIONS"


def _check_epochs(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(f"{name} must be a positive integer or None, got {value!r}")


@dataclass(frozen=True)
class TrainOptions:
    """`epochs`: base-model training epochs (None: the entry's TrainSpec). `finetune_epochs`: epochs of
    the default gradual-pruning recipes' fine-tuning (None: half the base's TrainSpec epochs).
    `latency_seconds`: minimum run time of each latency measurement. `graph_runtimes`: the exported-graph
    runtimes a variant's latency is also measured in (None: all of `GRAPH_RUNTIMES`; (): torch eager
    only, which skips the exports: what the tests do)."""

    epochs: int | None = None
    finetune_epochs: int | None = None
    latency_seconds: float = DEFAULT_LATENCY_SECONDS
    graph_runtimes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _check_epochs("epochs", self.epochs)
        _check_epochs("finetune_epochs", self.finetune_epochs)
        seconds = self.latency_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            raise InvalidArgumentError(f"latency_seconds must be a finite number > 0, got {seconds!r}")
        if self.graph_runtimes is not None:
            runtimes = self.graph_runtimes
            if not isinstance(runtimes, tuple) or any(r not in GRAPH_RUNTIMES for r in runtimes) \
                    or len(set(runtimes)) != len(runtimes):
                raise InvalidArgumentError(f"graph_runtimes must be a tuple of distinct names from "
                                           f"{', '.join(GRAPH_RUNTIMES)} (or None for all), got {runtimes!r}")

    @property
    def measured_runtimes(self) -> tuple[str, ...]:
        """The graph runtimes latency is measured in."""
        return GRAPH_RUNTIMES if self.graph_runtimes is None else self.graph_runtimes

    @property
    def is_default(self) -> bool:
        return self == TrainOptions()

    def cache_key(self) -> str:
        """What of these options decides the weights made (appended to cache keys): "" for the entry's own
        recipe, else the training fields as JSON. How latency is measured does not key the weights: a
        report missing a runtime these options ask for is measured again (`zoo.api.load_cached`)."""
        training = {name: getattr(self, name) for name in TRAINING_FIELDS}
        return "" if all(value is None for value in training.values()) else json.dumps(training, sort_keys=True)

    def to_text(self) -> str:
        """The `parse` form: `epochs=1,finetune_epochs=1,latency_seconds=0.05,graph_runtimes=openvino`
        (unset fields left out; runtimes joined by `+`, `none` for no graph runtime)."""
        def text(value: object) -> str:
            return ("+".join(value) or "none") if isinstance(value, tuple) else str(value)

        return ",".join(f"{k}={text(v)}" for k, v in dataclasses.asdict(self).items() if v is not None)

    @classmethod
    def parse(cls, text: str) -> TrainOptions:
        """`key=value` pairs separated by commas; keys are the field names; "" gives the defaults."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, int | float | tuple[str, ...]] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                raise InvalidArgumentError(f"train options: {item!r} is not one of {', '.join(k + '=...' for k in fields)}")
            if key == "graph_runtimes":
                value = value.strip()
                values[key] = () if value == "none" else tuple(value.split("+"))
                continue
            try:
                values[key] = float(value) if key == "latency_seconds" else int(value)
            except ValueError:
                raise InvalidArgumentError(f"train options: {key} must be a number, got {value!r}") from None
        return cls(**values)

    @classmethod
    def from_env(cls) -> TrainOptions:
        """The options `$ZOO_TRAIN_OPTIONS` gives (the defaults when it is unset or empty)."""
        return cls.parse(os.environ.get(ENV_VAR, ""))
