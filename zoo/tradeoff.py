"""Trade-off curves of training cost against the task metric (Portes, Blalock, Stephenson, Frankle 2022).

`standard_curve(entry, budgets)`: one full run of the zoo's own schedule (warm-up + cosine) per budget,
each trained by `zoo.native.train_base_model` with `TrainOptions(epochs=budget)` and evaluated at its end.
`one_run_curve(entry, t0, t_mult, cycles)`: a single run with cosine annealing with warm restarts
(`zoo.training.cyclic_cosine`: cycle i lasts t0 m^i epochs), evaluated at every learning-rate trough,
i.e. after t0, t0 (1 + m), ... epochs. It costs the sum of its cycles instead of the sum of the budgets.

Training cost is counted in epochs, optimizer steps, seconds of training (evaluation excluded) and FLOPs:
3 x the dense forward FLOPs of one example (`zoo.evaluate.count_flops` on the task's example input;
the backward pass taken as 2 x the forward) x the examples seen. Both drivers train zoo-native entries
that start from random weights (the seed, data order and optimizer of the entry's TrainSpec).
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from zoo.atomic import atomic_write_text
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.evaluate import count_flops
from zoo.options import TrainOptions
from zoo.tasks import task_of

FORMAT = "zoo-tradeoff-curve"
VERSION = 1
KINDS = ("cyclic", "standard")


@dataclass(frozen=True)
class TradeoffPoint:
    """The model after `epochs` epochs (`steps` optimizer steps, `train_flops` FLOPs, `train_seconds` of
    training, evaluation excluded) and its task metrics on the entry's evaluation split."""

    epochs: int
    steps: int
    train_flops: float
    train_seconds: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class TradeoffCurve:
    """The points of one curve: `kind` "cyclic" (one run, a point per trough; `settings` holds t0,
    t_mult and cycles) or "standard" (one run per budget; `settings` holds the budgets)."""

    kind: str
    model: str
    dataset: str
    split: str
    metric: str
    points: list[TradeoffPoint]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"a trade-off curve is one of {', '.join(KINDS)}, not {self.kind!r}")

    @property
    def total_epochs(self) -> int:
        """Epochs trained to draw the curve: the last trough's for a cyclic run, the budgets' sum else."""
        if self.kind == "cyclic":
            return self.points[-1].epochs if self.points else 0
        return sum(p.epochs for p in self.points)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TradeoffCurve:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise InvalidArgumentError(f"not a {FORMAT} version {VERSION} file: format={data.get('format')!r}, "
                                       f"version={data.get('version')!r}")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        fields["points"] = [TradeoffPoint(**p) for p in fields["points"]]
        return cls(**fields)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TradeoffCurve:
        return cls.from_dict(json.loads(Path(path).read_text()))


def cycle_epochs(t0: int, t_mult: int, cycles: int) -> list[int]:
    """Cumulative epochs at the end of each cycle: t0, t0 (1 + m), ... (`cycles` of them)."""
    for name, value in (("t0", t0), ("t_mult", t_mult), ("cycles", cycles)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    ends, length, end = [], t0, 0
    for _ in range(cycles):
        end += length
        ends.append(end)
        length *= t_mult
    return ends


def one_run_curve(entry: ModelEntry, t0: int, t_mult: int, cycles: int, *, progress: bool = True) -> TradeoffCurve:
    """One run of `cycles` cosine cycles (t0, t0 m, t0 m^2... epochs) of `entry`, evaluated at each trough."""
    spec = _native_spec(entry)
    ends = cycle_epochs(t0, t_mult, cycles)
    from zoo.native import seeded_run
    from zoo.training import train

    task = task_of(entry)
    with seeded_run(entry) as (model, batches, loss_fn):  # train_base_model's start, exactly
        per_example = _train_flops_per_example(model, entry)
        examples, per_epoch = len(batches.data), len(batches)
        points: list[TradeoffPoint] = []
        clock = {"trained": 0.0, "since": time.perf_counter()}

        def on_trough(steps: int) -> None:
            clock["trained"] += time.perf_counter() - clock["since"]
            epochs = steps // per_epoch
            points.append(TradeoffPoint(epochs, steps, per_example * examples * epochs, clock["trained"],
                                        _evaluate(model, entry, progress)))
            clock["since"] = time.perf_counter()

        train(model, batches.epoch, loss_fn, epochs=ends[-1], lr=spec.lr,
              weight_decay=spec.weight_decay, optimizer=spec.optimizer, progress=progress,
              desc=f"cyclic {entry.name}", schedule="cyclic", t0=t0, t_mult=t_mult, on_trough=on_trough)
    if [p.epochs for p in points] != ends:  # the loop's troughs and ours must agree
        raise RuntimeError(f"troughs at epochs {[p.epochs for p in points]}, expected {ends}")
    return TradeoffCurve("cyclic", entry.name, entry.eval_data.name, entry.eval_data.split, task.primary.key,
                         points, {"t0": t0, "t_mult": t_mult, "cycles": cycles})


def standard_curve(entry: ModelEntry, budgets: Sequence[int], *, progress: bool = True) -> TradeoffCurve:
    """One full-schedule run of `entry` per budget (epochs), each evaluated at its end."""
    spec = _native_spec(entry)
    budgets = list(budgets)
    if not budgets or len(set(budgets)) != len(budgets):
        raise InvalidArgumentError(f"budgets must be distinct positive epoch counts, got {budgets!r}")
    from zoo.native import train_base_model

    task = task_of(entry)
    points = []
    for epochs in sorted(budgets):
        options = TrainOptions(epochs=epochs)  # validates the budget
        start = time.perf_counter()
        model = train_base_model(entry, progress=progress, options=options)
        seconds = time.perf_counter() - start
        batches = task.batches(entry, spec.data, batch_size=spec.batch_size, shuffle=True, seed=spec.seed)
        points.append(TradeoffPoint(epochs, epochs * len(batches),
                                    _train_flops_per_example(model, entry) * len(batches.data) * epochs, seconds,
                                    _evaluate(model, entry, progress)))
    return TradeoffCurve("standard", entry.name, entry.eval_data.name, entry.eval_data.split, task.primary.key,
                         points, {"budgets": sorted(budgets)})


def _native_spec(entry: ModelEntry):
    if entry.train is None:
        raise InvalidArgumentError(f"{entry.name} is an upstream checkpoint: trade-off curves train zoo-native entries")
    if entry.train.init_from is not None:
        raise InvalidArgumentError(f"{entry.name} starts from {entry.train.init_from}'s weights; trade-off curves "
                                   "train entries that start from random weights")
    return entry.train


def _train_flops_per_example(model: nn.Module, entry: ModelEntry) -> float:
    """3 x the dense forward FLOPs of one example (forward + a backward of about twice its cost)."""
    was_training = model.training
    flops = count_flops(model.eval(), task_of(entry).example_input(entry)).dense
    model.train(was_training)
    return 3.0 * flops


def _evaluate(model: nn.Module, entry: ModelEntry, progress: bool) -> dict[str, float]:
    from zoo.evaluation import EVAL_BATCH_SIZE

    task = task_of(entry)
    batches = task.batches(entry, entry.eval_data, batch_size=EVAL_BATCH_SIZE, shuffle=False)
    return dict(task.evaluate(model.eval(), batches, entry, progress=progress).metrics)


def save_curves(cyclic: TradeoffCurve, standard: TradeoffCurve, folder: str | Path) -> list[Path]:
    """`tradeoff_cyclic.json`, `tradeoff_standard.json` and the figure of both (`TRADEOFF_PLOT_FILE`) in
    `folder`."""
    from zoo.model_cards.plot import TRADEOFF_PLOT_FILE, plot_tradeoff

    if cyclic.kind != "cyclic" or standard.kind != "standard":
        raise InvalidArgumentError(f"expected a cyclic and a standard curve, got {cyclic.kind} and {standard.kind}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [cyclic.save(folder / "tradeoff_cyclic.json"), standard.save(folder / "tradeoff_standard.json"),
            plot_tradeoff([standard, cyclic], folder / TRADEOFF_PLOT_FILE)]
