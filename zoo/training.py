"""The one training loop of the zoo: SGD with Nesterov momentum (or AdamW) and a warm-up + cosine
schedule, or cosine with warm restarts (`schedule="cyclic"`).

Used to train zoo-native base models and to fine-tune while a recipe prunes. Two optional callbacks see
each step, `step` counting optimizer steps from 0:

- `before_step(step, optimizer)` runs after the backward pass and before the optimizer step: the
  gradients of the batch are in `param.grad` and may be read or changed (sparse training reads the dense
  gradient and masks it); the optimizer is passed so that its state can be changed (sparse training
  resets the momentum of regrown weights).
- `after_step(step)` runs after the optimizer and learning-rate steps (this is where pruning masks are
  re-applied or updated).
- with the cyclic schedule, `on_trough(steps_done)` runs at the end of every complete cycle (the
  learning-rate troughs the one-run trade-off curves of `zoo.tradeoff` evaluate at).

Under torchrun (a process group initialized, zoo.distributed) the same call trains data-parallel: the
loss gets the model wrapped in DistributedDataParallel and this rank's shard of each global batch, the
callbacks see the unwrapped model's parameters after the gradients were averaged, and the losses
returned are the global batches'; the steps and the schedule are the single-process run's.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sized
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.distributed import DataParallelTraining, is_main
from zoo.errors import InvalidArgumentError

BatchesFn = Callable[[int], Iterable[Any]]
LossFn = Callable[[nn.Module, Any], torch.Tensor]
SCHEDULES = ("warmup_cosine", "cyclic")


def steps_per_epoch(batches: BatchesFn) -> int:
    first = batches(0)
    return len(first) if isinstance(first, Sized) else sum(1 for _ in first)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _check_cycles(t0: int, t_mult: int) -> None:
    for name, value in (("t0", t0), ("t_mult", t_mult)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")


def cycle_ends(t0: int, t_mult: int, total: int) -> list[int]:
    """The cumulative step counts at which the cycles of `cyclic_cosine` end, up to `total`:
    t0, t0 (1 + m), t0 (1 + m + m^2)... (cycle i lasts t0 m^i steps)."""
    _check_cycles(t0, t_mult)
    ends, length, end = [], t0, t0
    while end <= total:
        ends.append(end)
        length *= t_mult
        end += length
    return ends


def cyclic_cosine(step: int, t0: int, t_mult: int) -> float:
    """Learning-rate factor of cosine annealing with warm restarts (SGDR; Composer's
    `CosineAnnealingWarmRestartsScheduler(t_0, t_mult)` with eta_min 0): cycle i lasts T_i = t0 m^i
    steps and step `step` (0-based) of it gets (1 + cos(pi tau)) / 2, tau the fraction of the cycle
    elapsed. 1 at the first step of each cycle; no warm-up."""
    _check_cycles(t0, t_mult)
    start, length = 0, t0
    while step >= start + length:
        start += length
        length *= t_mult
    return 0.5 * (1.0 + math.cos(math.pi * (step - start) / length))


def train(
    model: nn.Module,
    batches: BatchesFn,
    loss_fn: LossFn,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    warmup_fraction: float = 0.05,
    optimizer: str = "sgd",
    after_step: Callable[[int], None] | None = None,
    before_step: Callable[[int, torch.optim.Optimizer], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    schedule: str = "warmup_cosine",
    t0: int = 1,
    t_mult: int = 1,
    on_trough: Callable[[int], None] | None = None,
) -> list[float]:
    """Trains `model` in place for `epochs`; returns the mean loss of each epoch. `before_step` and
    `after_step` as in the module docstring.

    `schedule` "warmup_cosine" (default): linear warm-up over `warmup_fraction` of the steps, then one
    cosine decay to zero. "cyclic": `cyclic_cosine` with a first cycle of `t0` epochs, each next one
    `t_mult` times longer (no warm-up), and `on_trough(steps_done)` called after the last step of every
    complete cycle (after that step's `after_step`), with the number of optimizer steps done so far;
    the model is put back in training mode after it."""
    if schedule not in SCHEDULES:
        raise InvalidArgumentError(f"unknown schedule {schedule!r}; supported: {', '.join(SCHEDULES)}")
    if schedule == "cyclic":
        _check_cycles(t0, t_mult)
    elif on_trough is not None:
        raise InvalidArgumentError("on_trough needs schedule='cyclic': warmup_cosine has no troughs to call it at")
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr)
    else:
        raise InvalidArgumentError(f"unknown optimizer {optimizer!r}; supported: sgd, adamw")
    per_epoch = steps_per_epoch(batches)
    total = per_epoch * epochs
    if schedule == "cyclic":
        troughs = set(cycle_ends(t0 * per_epoch, t_mult, total))
        factor: Callable[[int], float] = lambda s: cyclic_cosine(s, t0 * per_epoch, t_mult)
    else:
        troughs, warmup = set(), max(1, int(total * warmup_fraction))
        factor = lambda s: warmup_cosine(s, total, warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    history: list[float] = []
    step = 0
    with DataParallelTraining(model) as parallel, \
            tqdm(total=total, desc=desc, disable=not progress or not is_main(), unit="step", leave=False) as bar:
        for epoch in range(epochs):
            running = 0.0
            for batch in batches(epoch):
                part, share = parallel.shard(batch)  # on several processes: this rank's rows (zoo.distributed)
                loss = loss_fn(parallel.model, part)
                opt.zero_grad(set_to_none=True)
                parallel.backward(loss, share)
                if before_step is not None:
                    before_step(step, opt)
                opt.step()
                scheduler.step()
                if after_step is not None:
                    after_step(step)
                running += loss.item() * share
                step += 1
                bar.update(1)
                if on_trough is not None and step in troughs:
                    on_trough(step)
                    model.train()  # the callback may evaluate: training resumes in training mode
            history.append(parallel.global_sum(running) / per_epoch)
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.4f}")
    model.eval()
    return history
