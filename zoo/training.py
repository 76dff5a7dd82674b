"""The one training loop of the zoo: SGD with Nesterov momentum (or AdamW) and a warm-up + cosine
schedule.

Used to train zoo-native base models and to fine-tune while a recipe prunes. Two optional callbacks see
each step, `step` counting optimizer steps from 0:

- `before_step(step, optimizer)` runs after the backward pass and before the optimizer step: the
  gradients of the batch are in `param.grad` and may be read or changed (sparse training reads the dense
  gradient and masks it); the optimizer is passed so that its state can be changed (sparse training
  resets the momentum of regrown weights).
- `after_step(step)` runs after the optimizer and learning-rate steps (this is where pruning masks are
  re-applied or updated).

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


def steps_per_epoch(batches: BatchesFn) -> int:
    first = batches(0)
    return len(first) if isinstance(first, Sized) else sum(1 for _ in first)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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
) -> list[float]:
    """Trains `model` in place for `epochs`; returns the mean loss of each epoch. `before_step` and
    `after_step` as in the module docstring."""
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
    warmup = max(1, int(total * warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
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
            history.append(parallel.global_sum(running) / per_epoch)
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.4f}")
    model.eval()
    return history
