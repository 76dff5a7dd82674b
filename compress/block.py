"""Block pruning (Sparse WaveRNN; Kalchbrenner et al. 2018): whole blocks of a weight matrix are zeroed,
so that a sparse kernel can skip them. Blocks are scored by their mean |w| and the lowest-scoring
floor(s * n_blocks) blocks are pruned, in each tensor (`layer`) or over all of them (`global`).

A block is (rows, cols) of the weight viewed as a matrix [out_features, in_features] (a conv's
[out, in * kh * kw]): (4, 4) squares, or (16, 1) strips of 16 consecutive output units in one input
column, the shape the paper picked for ARM CPUs. One-shot (`apply_block_pruning`, `BlockPruningConfig`)
and gradual along Zhu & Gupta's cubic schedule with fine-tuning (`apply_gradual_block_pruning`,
`GradualBlockPruningConfig`). `layers` restricts pruning to modules whose name fully matches one of its
regular expressions (Sparse WaveRNN prunes only the recurrent matrix); `keep_dense` excludes modules.
"""
from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch import nn

from zoo.compress.config import (
    CompressionConfig, check_block, check_choice, check_fraction, check_patterns, register_config,
)
from zoo.compress.pruning import (
    SCOPES, Masks, apply_masks, check_gradual_schedule, cubic_sparsity, prunable_weights, train_pruning_on_schedule,
)
from zoo.compress.recipe import RecipeContext, handles
from zoo.errors import InvalidArgumentError, RecipeError



def block_weights(model: nn.Module, *, layers: tuple[str, ...] = (), keep_dense: tuple[str, ...] = ()
                  ) -> dict[str, nn.Parameter]:
    """The prunable weights (conv, linear, embedding) whose module name fully matches a `layers`
    pattern (all of them when `layers` is empty) and no `keep_dense` pattern."""
    weights = prunable_weights(model, keep_dense)
    if layers:
        patterns = [re.compile(p) for p in layers]
        weights = {n: w for n, w in weights.items() if any(p.fullmatch(n) for p in patterns)}
        if not weights:
            raise InvalidArgumentError(f"no prunable layer matches {layers!r}")
    return weights


def block_scores(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Mean |w| of each block: [rows // bh, cols // bw] for the weight viewed as [out, rest]."""
    bh, bw = check_block(block)
    matrix = weight.detach().reshape(weight.shape[0], -1)
    rows, cols = matrix.shape
    if rows % bh or cols % bw:
        raise InvalidArgumentError(f"a {rows}x{cols} weight does not split into {bh}x{bw} blocks")
    return matrix.abs().reshape(rows // bh, bh, cols // bw, bw).mean(dim=(1, 3))


def _expand(keep_blocks: torch.Tensor, block: tuple[int, int], shape: torch.Size) -> torch.Tensor:
    bh, bw = block
    return keep_blocks.repeat_interleave(bh, 0).repeat_interleave(bw, 1).reshape(shape)


def block_masks(weights: dict[str, torch.Tensor], sparsity: float, block: tuple[int, int],
                scope: str = "layer") -> Masks:
    """Boolean keep-masks pruning exactly floor(sparsity * n_blocks) blocks of lowest mean |w|, per
    tensor (`layer`) or with one ranking over all tensors (`global`); ties go by position."""
    if scope not in SCOPES:
        raise InvalidArgumentError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise InvalidArgumentError(f"sparsity must be in [0, 1), got {sparsity!r}")
    block = check_block(block)
    scores = {name: block_scores(w, block) for name, w in weights.items()}
    groups = [[name] for name in scores] if scope == "layer" else [list(scores)]
    masks: Masks = {}
    for names in groups:
        flat = torch.cat([scores[n].reshape(-1) for n in names])
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[: math.floor(sparsity * flat.numel())]] = False
        for name, part in zip(names, keep.split([scores[n].numel() for n in names])):
            masks[name] = _expand(part.reshape(scores[name].shape), block, weights[name].shape)
    return masks


def apply_block_pruning(model: nn.Module, sparsity: float, *, block: tuple[int, int] = (4, 4),
                        scope: str = "layer", layers: tuple[str, ...] = (), keep_dense: tuple[str, ...] = ()
                        ) -> Masks:
    """One-shot block pruning of `model` in place; returns the keep-masks."""
    weights = block_weights(model, layers=layers, keep_dense=keep_dense)
    masks = block_masks(weights, sparsity, block, scope)
    apply_masks(weights, masks)
    return masks


def apply_gradual_block_pruning(
    model: nn.Module,
    context: RecipeContext,
    *,
    final_sparsity: float,
    epochs: int,
    lr: float,
    block: tuple[int, int] = (4, 4),
    initial_sparsity: float = 0.0,
    begin_fraction: float = 0.0,
    end_fraction: float = 0.5,
    frequency: int = 10,
    exponent: float = 3.0,
    scope: str = "layer",
    layers: tuple[str, ...] = (),
    keep_dense: tuple[str, ...] = (),
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
) -> Masks:
    """Trains `model` for `epochs` while block-pruning it every `frequency` steps along the cubic
    schedule, from `initial_sparsity` at `begin_fraction` of training to `final_sparsity` at
    `end_fraction`; the rest recovers at the final sparsity. Returns the final keep-masks."""
    context.require("train_batches", "loss_fn", step="gradual block pruning")
    weights = block_weights(model, layers=layers, keep_dense=keep_dense)
    block_masks(weights, final_sparsity, block, scope)  # refuses bad shapes before any training

    def masks_at(step: int, begin: int, end: int) -> Masks:
        target = cubic_sparsity(step, initial=initial_sparsity, final=final_sparsity, begin=begin, end=end,
                                exponent=exponent)
        return block_masks(weights, target, block, scope)

    train_pruning_on_schedule(model, context, weights, masks_at, epochs=epochs, lr=lr, begin_fraction=begin_fraction,
                              end_fraction=end_fraction, frequency=frequency, weight_decay=weight_decay,
                              optimizer=optimizer, desc=f"block pruning {block[0]}x{block[1]} to {final_sparsity:.0%}")
    masks = block_masks(weights, final_sparsity, block, scope)
    apply_masks(weights, masks)
    return masks


def _check_common(config: BlockPruningConfig | GradualBlockPruningConfig, sparsity_field: str) -> None:
    check_fraction(sparsity_field, getattr(config, sparsity_field))
    try:
        check_block(config.block)
    except InvalidArgumentError as err:
        raise RecipeError(str(err)) from None
    check_choice("scope", config.scope, SCOPES)
    check_patterns("layers", config.layers)
    check_patterns("keep_dense", config.keep_dense)


@register_config
@dataclasses.dataclass(frozen=True)
class BlockPruningConfig(CompressionConfig):
    """One-shot block pruning to `sparsity` (a fraction of blocks) with `block` = (rows, cols)."""

    VERSION = 1
    sparsity: float
    block: tuple[int, int] = (4, 4)
    scope: str = "layer"
    layers: tuple[str, ...] = ()
    keep_dense: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_common(self, "sparsity")


@register_config
@dataclasses.dataclass(frozen=True)
class GradualBlockPruningConfig(CompressionConfig):
    """Block pruning along the cubic schedule while fine-tuning (Sparse WaveRNN). Schedule points are
    fractions of the training steps, so a recipe fits any data set size."""

    VERSION = 1
    final_sparsity: float
    block: tuple[int, int] = (4, 4)
    epochs: int = 10
    lr: float = 0.02
    initial_sparsity: float = 0.0
    begin_fraction: float = 0.0
    end_fraction: float = 0.5
    frequency: int = 10
    exponent: float = 3.0
    scope: str = "layer"
    layers: tuple[str, ...] = ()
    keep_dense: tuple[str, ...] = ()
    weight_decay: float = 5e-4
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        _check_common(self, "final_sparsity")
        check_gradual_schedule(self)


@handles(BlockPruningConfig)
def _one_shot(model: nn.Module, config: BlockPruningConfig, context: RecipeContext) -> nn.Module:
    apply_block_pruning(model, config.sparsity, block=config.block, scope=config.scope, layers=config.layers,
                        keep_dense=config.keep_dense)
    return model


@handles(GradualBlockPruningConfig)
def _gradual(model: nn.Module, config: GradualBlockPruningConfig, context: RecipeContext) -> nn.Module:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    apply_gradual_block_pruning(model, context, **fields)
    return model
