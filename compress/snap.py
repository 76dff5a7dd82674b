"""SnAp training (Menick et al., ICLR 2021) as a recipe step: the recurrent matrix of a model's GRU,
sparse or not, trained online by SnAp-1 / SnAp-2 (`zoo.online.SnApTracker`), the weights updated every
`update_every` steps of each training sequence (1: fully online). The matrix's zeros when the step
starts are its sparsity mask (e.g. after block pruning): they get no gradient and stay zero.

Which layer is the GRU and what a step's loss is are the family's business. A family registers
`OnlineGRUHooks` for its model class (`register_online_gru`):

- `recurrent(model)`: the nn.Linear computing W h + b for the (u, r, e) gates, with the cell of
  `zoo.online` (e = tanh(r * (W_e h + b_e) + input));
- `sequence(model, batch)`: an `OnlineSequence`, the untracked input pre-activation of every step
  [streams, L, 3k] (conditioning, previous samples: teacher-forced, no gradient) and `step_loss(h_t, t)`,
  the loss of step t from the state h_t through the model's readout.

    recipe = Recipe((BlockPruningConfig(0.9, block=(16, 1), layers=("recurrent",)), SnApTrainingConfig(n=2)))
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zoo.compress.config import CompressionConfig, check_choice, check_positive, register_config
from zoo.compress.recipe import RecipeContext, handles
from zoo.errors import InvalidArgumentError, RecipeError
from zoo.online import GATES, SnApTracker
from zoo.registry import Registry, lookup_by_class, register_for_class

SNAP_ORDERS = (1, 2)  # SnAp-1 (O(p) per step, BPTT's cost) and SnAp-2 (sparse nets only)
OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class OnlineSequence:
    """One training batch as the GRU sees it: `gate_inputs` [streams, L, 3k] (no gradient) and
    `step_loss(h_t, t)`, the scalar loss of step t given h_t [streams, k]."""

    gate_inputs: torch.Tensor
    step_loss: Callable[[torch.Tensor, int], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class OnlineGRUHooks:
    """How a family's model exposes its GRU to online training (see the module docstring)."""

    recurrent: Callable[[nn.Module], nn.Linear]
    sequence: Callable[[nn.Module, Any], OnlineSequence]


ONLINE_GRU_HOOKS: Registry[OnlineGRUHooks] = Registry("online GRU hooks")


def register_online_gru(model_type: type[nn.Module], hooks: OnlineGRUHooks) -> OnlineGRUHooks:
    """Registers `hooks` for `model_type` and its subclasses (a family calls this in its folder)."""
    return register_for_class(ONLINE_GRU_HOOKS, model_type, hooks)


def online_gru_hooks(model: nn.Module) -> OnlineGRUHooks:
    """The hooks registered for `model`'s class or its nearest registered base class."""
    hooks = lookup_by_class(ONLINE_GRU_HOOKS, model)
    if hooks is not None:
        return hooks
    raise InvalidArgumentError(f"no online GRU training is registered for {type(model).__name__} (its family "
                               "registers OnlineGRUHooks when its model module is imported)")


def _optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise InvalidArgumentError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def apply_snap_training(model: nn.Module, context: RecipeContext, *, n: int | None = 1, lr: float = 1e-3,
                        epochs: int = 1, update_every: int = 1, optimizer: str = "adam") -> list[float]:
    """Trains the recurrent matrix and bias of `model`'s GRU (found through its family's
    `OnlineGRUHooks`) with SnAp-`n` (None: exact RTRL) on `context.train_batches`, each batch a set of
    sequences started from h = 0, updating every `update_every` steps and at each sequence's end.
    The matrix's zeros stay zero. Returns the mean step loss of each epoch."""
    context.require("train_batches", step="SnAp training")
    for name, value in (("epochs", epochs), ("update_every", update_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidArgumentError(f"lr must be a finite number > 0, got {lr!r}")
    hooks = online_gru_hooks(model)
    layer = hooks.recurrent(model)
    mask = layer.weight.detach() != 0
    params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    opt = _optimizer(optimizer, params, lr)
    trackers: dict[int, SnApTracker] = {}  # per stream count: the SnAp pattern is built once
    means = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in context.train_batches(epoch):
            sequence = hooks.sequence(model, batch)
            streams, length, width = sequence.gate_inputs.shape
            if width != GATES * layer.weight.shape[1]:
                raise InvalidArgumentError(f"gate inputs of width {width} do not fit a GRU of "
                                           f"{layer.weight.shape[1]} units")
            if streams not in trackers:
                trackers[streams] = SnApTracker(layer.weight, layer.bias, mask=mask, n=n, batch=streams)
            tracker = trackers[streams]
            tracker.reset()
            tracker.zero_grad()
            for t in range(length):
                h = tracker.step(sequence.gate_inputs[:, t]).requires_grad_()
                loss = sequence.step_loss(h, t)
                (grad_h,) = torch.autograd.grad(loss, h)
                tracker.accumulate(grad_h)
                total, count = total + float(loss.detach()), count + 1
                if (t + 1) % update_every == 0 or t + 1 == length:
                    opt.zero_grad()
                    tracker.write_grads()
                    opt.step()
                    tracker.zero_grad()
        if count == 0:
            raise RecipeError("SnAp training got no training batches")
        means.append(total / count)
    opt.zero_grad()
    return means


@register_config
@dataclasses.dataclass(frozen=True)
class SnApTrainingConfig(CompressionConfig):
    """Online training of the (sparse) recurrent matrix of a GRU by SnAp-`n` (1 or 2), Adam or SGD at
    `lr`, weights updated every `update_every` steps (1: fully online), for `epochs` over the training data."""

    VERSION = 1
    n: int = 1
    lr: float = 1e-3
    epochs: int = 1
    update_every: int = 1
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if isinstance(self.n, bool):
            raise RecipeError(f"n must be one of {SNAP_ORDERS}, got {self.n!r}")
        check_choice("n", self.n, SNAP_ORDERS)
        check_positive("lr", self.lr)
        check_positive("epochs", self.epochs, integer=True)
        check_positive("update_every", self.update_every, integer=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)


@handles(SnApTrainingConfig)
def _snap(model: nn.Module, config: SnApTrainingConfig, context: RecipeContext) -> nn.Module:
    apply_snap_training(model, context, n=config.n, lr=config.lr, epochs=config.epochs,
                        update_every=config.update_every, optimizer=config.optimizer)
    return model
