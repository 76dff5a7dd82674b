"""N:M fine-grained structured sparsity (2:4, 1:4, any N < M): in every group of M consecutive weights
along the input axis, only the N of largest |w| are kept. One-shot (`apply_nm_pruning`,
`NMPruningConfig`) and gradual while fine-tuning (`apply_gradual_nm_pruning`, `GradualNMPruningConfig`).

Groups. A weight is read as [out, in, *kernel] (linear [out, in], conv [out, in / groups, kh, kw],
embedding [rows, dim]) and a group is M consecutive entries of dim 1, the input channels (features), at
one output and one kernel position: the conv weight in channels-last order [out, kh, kw, in] split into
rows of M (`zoo.compress.formats.nm_groups`, the same layout the checkpoint's N:M encoding stores).
This is the grouping N:M kernels execute: sparse tensor cores (cuSPARSELt, and NVIDIA's ASP, which
prunes convs the same way; Mishra et al. 2021, arXiv:2104.08378) need N non-zeros in every M
consecutive elements of the GEMM's reduction dimension, and an implicit-GEMM convolution over NHWC
activations reduces over (kh, kw, in) with the channels innermost; for a linear layer the reduction
dimension is simply `in`. (Grouping the PyTorch view [out, in * kh * kw] instead would put a 3x3 conv's
groups across kernel positions of one channel, a pattern no kernel runs.) Every pruned layer's dim 1
must be a multiple of M: a layer that is not (a stem conv with 3 input channels, a depthwise conv with
1) raises InvalidArgumentError naming it, never skipped silently; leave it dense with `keep_dense`.

Ties in |w| go to the lower position in the group; pruned weights become +0.0 (`apply_masks`).

Gradual. Sparse structure decay (Kao et al. 2022, "Training Recipe for N:M Structured Sparsity with
Decaying Pruning Mask", arXiv:2209.07617: moving through progressively sparser N:M patterns beats
jumping to the target one), timed by Zhu & Gupta's cubic schedule: at step t the model is N_t:M with
N_t = N + round((M - N) * (1 - p)^exponent), p the fraction of the way from `begin_fraction` to
`end_fraction` of the fine-tuning steps (dense before, N:M from `end_fraction` on), i.e. the pattern
nearest the cubic schedule's sparsity from 0 to 1 - N/M (2:4 goes 4:4, 3:4, 2:4; 1:4 goes 4:4, 3:4,
2:4, 1:4). Masks are recomputed by magnitude every `frequency` steps and re-applied after every step;
the rest of training recovers at N:M, like one-shot N:M pruning followed by the fine-tuning that ASP
shows restores dense accuracy.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch
from torch import nn

from zoo.compress.config import (
    CompressionConfig, check_choice, check_patterns, register_config,
)
from zoo.compress.formats import nm_groups, nm_ungroup
from zoo.compress.pruning import (
    _NUMPY_FLOATS, Masks, apply_masks, check_finetune_schedule, prunable_weights, train_pruning_on_schedule,
)
from zoo.compress.recipe import RecipeContext, handles
from zoo.errors import InvalidArgumentError, RecipeError


def check_nm(n: int, m: int, *, allow_dense: bool = False) -> tuple[int, int]:
    """(n, m) checked: integers with 1 <= n < m (n == m too with `allow_dense`)."""
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (n, m)) or not (
            1 <= n <= m if allow_dense else 1 <= n < m):
        raise InvalidArgumentError(f"N:M needs integers 1 <= N {'<=' if allow_dense else '<'} M, got N={n!r}, M={m!r}")
    return n, m


def _check_shape(name: str, shape: tuple[int, ...], m: int) -> str | None:
    """Why a tensor of `shape` cannot be grouped by `m` along dim 1, or None if it can."""
    if len(shape) < 2:
        return f"{name} {list(shape)} has no input axis (dim 1)"
    if shape[1] % m:
        return f"{name} {list(shape)}: dim 1 ({shape[1]}) is not a multiple of M={m}"
    return None


def nm_mask(weight: torch.Tensor, n: int, m: int, *, score: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean keep-mask of one tensor: in every group of `m` consecutive entries along dim 1 (see the
    module docstring), the `n` of largest |weight| (or of largest `score`, same shape, e.g. a grow
    criterion), ties to the lower position. `n == m` keeps everything. The mask is on `weight`'s device."""
    check_nm(n, m, allow_dense=True)
    problem = _check_shape("weight", tuple(weight.shape), m)
    if problem:
        raise InvalidArgumentError(f"cannot group by {n}:{m}: {problem}")
    if score is None:
        score = weight.detach().abs()  # (-|w| ranks 0.0 and -0.0 alike)
    elif score.shape != weight.shape:
        raise InvalidArgumentError(f"score has shape {list(score.shape)}, weight {list(weight.shape)}")
    if n == m:
        return torch.ones_like(weight, dtype=torch.bool)
    groups = nm_groups(score.detach(), m)
    if groups.device.type == "cpu" and groups.is_floating_point():
        # numpy, on one thread: torch's sort and scatter were measured ~2x slower on a shared 2-core
        # machine (see zoo.compress.pruning._magnitudes); bfloat16 is widened exactly
        ranked = groups.numpy() if groups.dtype in _NUMPY_FLOATS else groups.float().numpy()
        keep = np.argsort(-ranked, axis=1, kind="stable")[:, :n]  # stable: ties to the lower position
        mask_np = np.zeros(ranked.shape, dtype=np.bool_)
        np.put_along_axis(mask_np, keep, True, axis=1)
        mask = torch.from_numpy(mask_np)
    else:
        order = torch.argsort(groups, dim=1, descending=True, stable=True)[:, :n]
        mask = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device).scatter_(1, order, True)
    return nm_ungroup(mask, tuple(weight.shape))


def nm_masks(weights: dict[str, torch.Tensor], n: int, m: int) -> Masks:
    """`nm_mask` of every tensor; InvalidArgumentError listing every tensor whose dim 1 is not a
    multiple of `m` (leave those dense) before any mask is computed."""
    check_groupable(weights, n, m)
    return {name: nm_mask(w, n, m) for name, w in weights.items()}


def check_groupable(weights: dict[str, torch.Tensor], n: int, m: int) -> None:
    """InvalidArgumentError naming every tensor whose dim 1 does not split into groups of `m`."""
    check_nm(n, m, allow_dense=True)
    problems = [p for name, w in weights.items() if (p := _check_shape(repr(name), tuple(w.shape), m))]
    if problems:
        raise InvalidArgumentError(
            f"{n}:{m} sparsity groups dim 1 (input channels) by {m}; cannot group: {'; '.join(problems)}. "
            "Leave these layers dense (keep_dense)"
        )


def is_nm(tensor: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of `m` along dim 1 holds at most `n` non-zeros."""
    check_nm(n, m)
    if _check_shape("tensor", tuple(tensor.shape), m):
        return False
    return tensor.numel() == 0 or int(nm_groups(tensor.detach() != 0, m).sum(dim=1).max()) <= n


UNGROUPABLE = ("refuse", "dense")  # what N:M does with a layer whose input channels do not split by m


def groupable_weights(weights: dict[str, torch.Tensor], n: int, m: int, ungroupable: str) -> dict[str, torch.Tensor]:
    """The weights N:M prunes: all of them (`ungroupable="refuse"`: InvalidArgumentError naming every
    layer whose dim 1 does not split into groups of `m`), or those that split (`"dense"`: the others stay
    dense, named in a warning)."""
    check_choice("ungroupable", ungroupable, UNGROUPABLE)
    if ungroupable == "refuse":
        check_groupable(weights, n, m)
        return weights
    kept = {name: w for name, w in weights.items() if not _check_shape(name, tuple(w.shape), m)}
    left = sorted(set(weights) - set(kept))
    if left:
        warnings.warn(f"{n}:{m} leaves {len(left)} layer(s) dense, their input channels not a multiple of {m}: "
                      f"{', '.join(left)}", stacklevel=3)
    if not kept:
        raise InvalidArgumentError(f"no layer's input channels split into groups of {m}: nothing to prune {n}:{m}")
    return kept


def apply_nm_pruning(model: nn.Module, n: int = 2, m: int = 4, *, keep_dense: tuple[str, ...] = (),
                     ungroupable: str = "refuse") -> Masks:
    """One-shot N:M magnitude pruning of every conv, linear and embedding weight of `model` in place
    (modules fully matching a `keep_dense` pattern are left dense; layers whose input channels do not
    split into groups of m refused, or left dense with `ungroupable="dense"`); returns the keep-masks."""
    check_nm(n, m)
    weights = groupable_weights(prunable_weights(model, keep_dense), n, m, ungroupable)
    masks = nm_masks(weights, n, m)
    apply_masks(weights, masks)
    return masks


def nm_schedule(step: int, *, n: int, m: int, begin: int, end: int, exponent: float = 3.0) -> int:
    """Entries kept per group of `m` at `step`: m up to `begin`, n from `end` on, between them
    n + round((m - n) * (1 - p)^exponent) with p = (step - begin) / (end - begin), rounding halves up."""
    check_nm(n, m)
    if step <= begin:
        return m
    if step >= end:
        return n
    remaining = (1.0 - (step - begin) / (end - begin)) ** exponent
    return n + math.floor((m - n) * remaining + 0.5)


def apply_gradual_nm_pruning(
    model: nn.Module,
    context: RecipeContext,
    *,
    n: int = 2,
    m: int = 4,
    epochs: int,
    lr: float,
    begin_fraction: float = 0.0,
    end_fraction: float = 0.5,
    frequency: int = 10,
    exponent: float = 3.0,
    keep_dense: tuple[str, ...] = (),
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    ungroupable: str = "refuse",
) -> Masks:
    """Fine-tunes `model` for `epochs` while moving it from dense to N:M by sparse structure decay (see
    the module docstring): every `frequency` steps from `begin_fraction` to `end_fraction` of training
    the masks are recomputed at the scheduled N_t:M, and re-applied after every step; the rest of
    training recovers at N:M. Returns the final keep-masks (exactly N:M). `ungroupable` as in
    `apply_nm_pruning`."""
    context.require("train_batches", "loss_fn", step="gradual N:M pruning")
    check_nm(n, m)
    weights = groupable_weights(prunable_weights(model, keep_dense), n, m, ungroupable)  # before any training

    def masks_at(step: int, begin: int, end: int) -> Masks:
        return nm_masks(weights, nm_schedule(step, n=n, m=m, begin=begin, end=end, exponent=exponent), m)

    train_pruning_on_schedule(model, context, weights, masks_at, epochs=epochs, lr=lr, begin_fraction=begin_fraction,
                              end_fraction=end_fraction, frequency=frequency, weight_decay=weight_decay,
                              optimizer=optimizer, desc=f"{n}:{m} pruning")
    masks = nm_masks(weights, n, m)
    apply_masks(weights, masks)
    return masks


def _check_nm_config(config: NMPruningConfig | GradualNMPruningConfig) -> None:
    try:
        check_nm(config.n, config.m)
    except InvalidArgumentError as err:
        raise RecipeError(str(err)) from None
    check_patterns("keep_dense", config.keep_dense)
    check_choice("ungroupable", config.ungroupable, UNGROUPABLE)


@register_config
@dataclasses.dataclass(frozen=True)
class NMPruningConfig(CompressionConfig):
    """One-shot N:M magnitude pruning: the `n` largest |w| of every `m` consecutive input channels."""

    VERSION = 1
    n: int = 2
    m: int = 4
    keep_dense: tuple[str, ...] = ()
    ungroupable: str = "refuse"

    def __post_init__(self) -> None:
        _check_nm_config(self)


@register_config
@dataclasses.dataclass(frozen=True)
class GradualNMPruningConfig(CompressionConfig):
    """N:M pruning by sparse structure decay while fine-tuning (dense -> ... -> N:M along the cubic
    schedule). Schedule points are fractions of the fine-tuning steps, so a recipe fits any data set."""

    VERSION = 1
    n: int = 2
    m: int = 4
    epochs: int = 10
    lr: float = 0.02
    begin_fraction: float = 0.0
    end_fraction: float = 0.5
    frequency: int = 10
    exponent: float = 3.0
    keep_dense: tuple[str, ...] = ()
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    ungroupable: str = "refuse"

    def __post_init__(self) -> None:
        _check_nm_config(self)
        check_finetune_schedule(self)


@handles(NMPruningConfig)
def _one_shot(model: nn.Module, config: NMPruningConfig, context: RecipeContext) -> nn.Module:
    apply_nm_pruning(model, config.n, config.m, keep_dense=config.keep_dense, ungroupable=config.ungroupable)
    return model


@handles(GradualNMPruningConfig)
def _gradual(model: nn.Module, config: GradualNMPruningConfig, context: RecipeContext) -> nn.Module:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    apply_gradual_nm_pruning(model, context, **fields)
    return model
