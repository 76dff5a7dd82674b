"""Magnitude pruning: one-shot (per layer or with one global threshold) and gradual (Zhu & Gupta's
cubic schedule, fine-tuning between pruning steps). Each method has a functional form
(`apply_magnitude_pruning`, `apply_gradual_magnitude_pruning`) and a config form handled by a recipe.

A pruned model stays a plain `nn.Module`: pruned weights are exact zeros, nothing else changes.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
import math
import re

import numpy as np
import torch
from torch import nn
from torch.autograd.graph import increment_version

from zoo.compress.config import (
    CompressionConfig, check_choice, check_fraction, check_patterns, check_positive, register_config,
)
from zoo.compress.recipe import RecipeContext, handles
from zoo.compress.selection import METHODS, select_kth
from zoo.errors import InvalidArgumentError, RecipeError
from zoo.training import steps_per_epoch, train

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)
SCOPES = ("global", "layer")

Masks = dict[str, torch.Tensor]


def prunable_weights(model: nn.Module, keep_dense: tuple[str, ...] = ()) -> dict[str, nn.Parameter]:
    """Weights of conv, linear and embedding modules, keyed by module name; biases and norms are never
    pruned. Modules whose name fully matches one of the `keep_dense` regular expressions are left out."""
    patterns = [re.compile(p) for p in keep_dense]
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES) and not any(p.fullmatch(name) for p in patterns)
    }


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _magnitudes(weights: dict[str, torch.Tensor]) -> np.ndarray:
    """|w| of all the weights, concatenated in order, as one numpy array on the CPU. numpy works on one
    thread, which keeps these passes fast when another process shares the cores (two torch threads were
    measured 3-10x slower then). Dtypes numpy lacks (bfloat16) are widened to float32, exactly."""
    parts = []
    for w in weights.values():
        w = w.detach()
        parts.append((w if w.dtype in _NUMPY_FLOATS else w.float()).cpu().reshape(-1).numpy())
    flat = np.empty(sum(part.size for part in parts), np.result_type(*parts))
    offset = 0
    for part in parts:
        np.abs(part, out=flat[offset : offset + part.size])
        offset += part.size
    return flat


def _masks_for_threshold(weights: dict[str, torch.Tensor], magnitudes: np.ndarray, threshold: float,
                         n_prune: int, below: int) -> Masks:
    """Keep |w| > threshold; prune |w| < threshold (`below` of them); ties at the threshold are pruned
    in order until exactly `n_prune` weights are pruned. `magnitudes` is `_magnitudes(weights)`."""
    masks: Masks = {}
    ties_to_prune = n_prune - below
    threshold = magnitudes.dtype.type(threshold)  # exact: it is one of the magnitudes
    offset = 0
    for name, w in weights.items():
        magnitude = magnitudes[offset : offset + w.numel()]
        offset += w.numel()
        if ties_to_prune > 0:
            keep = magnitude > threshold
            ties = np.flatnonzero(magnitude == threshold)
            keep[ties[ties_to_prune:]] = True
            ties_to_prune -= min(ties_to_prune, ties.size)
        else:
            keep = magnitude >= threshold
        masks[name] = torch.from_numpy(keep).reshape(w.shape).to(w.device)
    return masks


def magnitude_masks(
    weights: dict[str, torch.Tensor], sparsity: float, scope: str = "global", *, selection: str | None = None
) -> Masks:
    """Boolean keep-masks pruning exactly floor(sparsity * n) weights by magnitude, over all weights
    at once (`global`) or in each tensor separately (`layer`, uniform sparsity as in Gale et al.).

    The threshold is the exact k-th smallest magnitude, found by `selection` (one of
    `zoo.compress.selection.METHODS`) or, by default, by the method measured fastest on this machine
    for inputs of this size; every method gives the same masks."""
    check_choice("scope", scope, SCOPES)
    if selection is not None:
        check_choice("selection", selection, tuple(METHODS))
    if not 0.0 <= sparsity < 1.0:
        raise InvalidArgumentError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope == "layer":
        masks: Masks = {}
        for name, w in weights.items():
            masks.update(magnitude_masks({name: w}, sparsity, "global", selection=selection))
        return masks
    total = sum(w.numel() for w in weights.values())
    n_prune = math.floor(sparsity * total)
    if n_prune == 0:
        return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    magnitudes = _magnitudes(weights)
    threshold, below = select_kth(torch.from_numpy(magnitudes), n_prune, selection)
    return _masks_for_threshold(weights, magnitudes, threshold, n_prune, below)


def apply_masks(weights: dict[str, torch.Tensor], masks: Masks) -> None:
    """Zeroes the pruned entries in place, as +0.0 (multiplying by the mask would leave -0.0 where a
    weight was negative, which the checkpoint format does not keep). CPU tensors of numpy's float dtypes
    are written through numpy, on one thread (see `_magnitudes`), the others with `masked_fill_`; either
    way autograd's version counter records the change."""
    with torch.no_grad():
        for name, w in weights.items():
            if w.device.type == "cpu" and w.dtype in _NUMPY_FLOATS:
                np.copyto(w.detach().numpy(), 0, where=np.logical_not(masks[name].cpu().numpy()))
                increment_version(w)
            else:
                w.masked_fill_(~masks[name], 0.0)


def apply_magnitude_pruning(
    model: nn.Module, sparsity: float, *, scope: str = "global", keep_dense: tuple[str, ...] = (),
    selection: str | None = None,
) -> Masks:
    """One-shot magnitude pruning of `model` in place; returns the keep-masks. `selection` as in
    `magnitude_masks` (None: the method measured fastest here)."""
    weights = prunable_weights(model, keep_dense)
    masks = magnitude_masks(weights, sparsity, scope, selection=selection)
    apply_masks(weights, masks)
    return masks


def cubic_sparsity(step: int, *, initial: float, final: float, begin: int, end: int, exponent: float = 3.0) -> float:
    """Zhu & Gupta's schedule: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_end - t0))^exponent, held at
    s_i before t0 and at s_f after t_end."""
    if step <= begin:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - begin) / (end - begin)) ** exponent


def train_pruning_on_schedule(
    model: nn.Module, context: RecipeContext, weights: dict[str, nn.Parameter],
    masks_at: Callable[[int, int, int], Masks], *, epochs: int, lr: float, begin_fraction: float,
    end_fraction: float, frequency: int, weight_decay: float, optimizer: str, desc: str,
) -> None:
    """The fine-tuning loop of the gradual pruning methods: trains `model` for `epochs`, computing the
    masks as `masks_at(step, begin, end)` every `frequency` steps from step `begin` (`begin_fraction` of
    training) to `end` (`end_fraction`, at least one step later) and at `end`, and re-applying the current
    masks to `weights` after every step (dense until the first point)."""
    total = steps_per_epoch(context.train_batches) * epochs
    begin = int(begin_fraction * total)
    end = max(begin + 1, int(end_fraction * total))
    masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}

    def prune_on_schedule(step: int) -> None:
        nonlocal masks
        if (begin <= step <= end and (step - begin) % frequency == 0) or step == end:
            masks = masks_at(step, begin, end)
        apply_masks(weights, masks)

    train(model, context.train_batches, context.loss_fn, epochs=epochs, lr=lr, weight_decay=weight_decay,
          optimizer=optimizer, after_step=prune_on_schedule, progress=context.progress, desc=desc)


def apply_gradual_magnitude_pruning(
    model: nn.Module,
    context: RecipeContext,
    *,
    final_sparsity: float,
    epochs: int,
    lr: float,
    initial_sparsity: float = 0.0,
    begin_fraction: float = 0.0,
    end_fraction: float = 0.5,
    frequency: int = 10,
    exponent: float = 3.0,
    scope: str = "layer",
    keep_dense: tuple[str, ...] = (),
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
) -> Masks:
    """Fine-tunes `model` for `epochs` while pruning it every `frequency` steps along the cubic schedule,
    from `initial_sparsity` at `begin_fraction` of training to `final_sparsity` at `end_fraction`;
    the last part of training recovers at the final sparsity. Returns the final keep-masks."""
    context.require("train_batches", "loss_fn", step="gradual magnitude pruning")
    weights = prunable_weights(model, keep_dense)

    def masks_at(step: int, begin: int, end: int) -> Masks:
        target = cubic_sparsity(step, initial=initial_sparsity, final=final_sparsity, begin=begin, end=end,
                                exponent=exponent)
        return magnitude_masks(weights, target, scope)

    train_pruning_on_schedule(model, context, weights, masks_at, epochs=epochs, lr=lr, begin_fraction=begin_fraction,
                              end_fraction=end_fraction, frequency=frequency, weight_decay=weight_decay,
                              optimizer=optimizer, desc=f"GMP to {final_sparsity:.0%}")
    masks = magnitude_masks(weights, final_sparsity, scope)
    apply_masks(weights, masks)
    return masks


@register_config
@dataclasses.dataclass(frozen=True)
class MagnitudePruningConfig(CompressionConfig):
    """One-shot magnitude pruning to `sparsity`, one global threshold or per layer."""

    VERSION = 1
    sparsity: float
    scope: str = "global"
    keep_dense: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_fraction("sparsity", self.sparsity)
        check_choice("scope", self.scope, SCOPES)
        check_patterns("keep_dense", self.keep_dense)


OPTIMIZERS = ("sgd", "adamw")


def check_gradual_schedule(config: CompressionConfig) -> None:
    """The checks every gradual (prune while fine-tuning) config shares: sparsities, schedule points,
    fine-tuning settings."""
    check_fraction("final_sparsity", config.final_sparsity)
    check_fraction("initial_sparsity", config.initial_sparsity)
    if config.initial_sparsity > config.final_sparsity:
        raise RecipeError("initial_sparsity must not exceed final_sparsity")
    check_finetune_schedule(config)


def check_finetune_schedule(config: CompressionConfig) -> None:
    """The schedule points (begin_fraction < end_fraction) and fine-tuning settings (optimizer, epochs,
    lr, frequency, exponent, weight_decay) of a config that prunes while fine-tuning."""
    check_choice("optimizer", config.optimizer, OPTIMIZERS)
    check_fraction("begin_fraction", config.begin_fraction)
    check_fraction("end_fraction", config.end_fraction, upper_open=False)
    if config.end_fraction <= config.begin_fraction:
        raise RecipeError("end_fraction must be greater than begin_fraction")
    check_positive("epochs", config.epochs, integer=True)
    check_positive("lr", config.lr)
    check_positive("frequency", config.frequency, integer=True)
    check_positive("exponent", config.exponent)
    check_positive("weight_decay", config.weight_decay, allow_zero=True)


@register_config
@dataclasses.dataclass(frozen=True)
class GradualMagnitudePruningConfig(CompressionConfig):
    """Gradual magnitude pruning with fine-tuning (Zhu & Gupta 2017; Gale et al. 2019 scope).
    Schedule points are fractions of the fine-tuning steps, so a recipe fits any data set size."""

    VERSION = 1
    final_sparsity: float
    epochs: int = 10
    lr: float = 0.02
    initial_sparsity: float = 0.0
    begin_fraction: float = 0.0
    end_fraction: float = 0.5
    frequency: int = 10
    exponent: float = 3.0
    scope: str = "layer"
    keep_dense: tuple[str, ...] = ()
    weight_decay: float = 5e-4
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        check_gradual_schedule(self)
        check_choice("scope", self.scope, SCOPES)
        check_patterns("keep_dense", self.keep_dense)


@handles(MagnitudePruningConfig)
def _one_shot(model: nn.Module, config: MagnitudePruningConfig, context: RecipeContext) -> nn.Module:
    apply_magnitude_pruning(model, config.sparsity, scope=config.scope, keep_dense=config.keep_dense)
    return model


@handles(GradualMagnitudePruningConfig)
def _gradual(model: nn.Module, config: GradualMagnitudePruningConfig, context: RecipeContext) -> nn.Module:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    apply_gradual_magnitude_pruning(model, context, **fields)
    return model
