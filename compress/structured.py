"""Structured pruning: whole output channels of convolutions (filters), whole attention heads and whole
FFN neurons are removed, so the result is a smaller *dense* model that every runtime (eager PyTorch,
ONNX Runtime, OpenVINO) runs faster, with no sparse kernel (Li et al. 2017, "Pruning Filters for
Efficient ConvNets"; Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

- Channels (`apply_channel_pruning`, `ChannelPruningConfig`): torch-pruning's dependency graph finds
  the groups of coupled layers (a conv, its BatchNorm, the next layer's input, residual additions,
  depthwise convs); every group outside `keep` loses the same fraction of its output channels, those
  of lowest L1 norm over the whole group. Any CNN torch-pruning traces works.
- Heads and FFN neurons (`apply_head_pruning`, `HeadPruningConfig`): every layer keeps the same
  fraction of its heads and of its FFN neurons, those of largest L1 norm (the head's query/key/value
  rows and output columns; the neuron's input row and output column). Which layers are heads is the
  family's business: it registers `StructuredHooks.head_sizes` / `prune_heads` for its model classes.

Widths are rounded: a layer that keeps at least `round_to` channels (or FFN neurons) keeps the
nearest multiple of `round_to` (8: what vectorized CPU kernels like), narrower ones keep the exact
count; heads are never rounded and every layer keeps at least one of each.

Fine-tuning is gradual: the target is reached in `steps` equal steps (of the original widths) at
epoch boundaries spread over the first half of the `epochs`, each followed by fine-tuning, and the
second half recovers at the final width. Removing half of a layer at once costs more accuracy than
removing it in steps with training in between, and each step ranks channels on weights that have
already adapted to the previous removal (Molchanov et al. 2017). The optimizer and learning-rate
schedule restart after each step, because the parameters are new tensors of new shapes.

The pruned architecture is saved with the checkpoint in its library's own terms (`describe`): a timm
pruned-model string (`timm.models._prune.adapt_model_from_string`), or a BERT's or a Marian Transformer's
per-layer head and FFN sizes. `zoo.load` builds the default architecture, `rebuild_architecture` narrows
it, and the weights are assigned. Hooks are registered per model class by the families (`register_structured`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zoo.compress.config import (
    CompressionConfig, check_choice, check_fraction, check_patterns, check_positive, register_config,
)
from zoo.compress.recipe import Recipe, RecipeContext, handles
from zoo.entry import OPTIMIZERS
from zoo.errors import InvalidArgumentError, RecipeError
from zoo.registry import Registry, lookup_by_class, register_for_class
from zoo.training import train

PRUNE_PHASE_FRACTION = 0.5  # the pruning steps happen in the first half of fine-tuning

Widths = dict[str, tuple[int, int]]  # group or layer -> (width before, width after)


@dataclasses.dataclass(frozen=True)
class StructuredHooks:
    """How a family's model class is structurally pruned and rebuilt.

    `describe(model)` returns the (pruned) architecture as JSON-able data in its library's own terms;
    `rebuild(model, architecture)` narrows a model of the default architecture (built on the meta
    device) to it and returns the result. `channels` says whether channel pruning applies.
    `head_sizes(model)` lists (heads, FFN neurons) per transformer layer, and `prune_heads(model,
    heads, ffn)` keeps, in layer i, the `heads[i]` heads and `ffn[i]` neurons of largest magnitude."""

    describe: Callable[[nn.Module], dict[str, Any]]
    rebuild: Callable[[nn.Module, dict[str, Any]], nn.Module]
    channels: bool = False
    head_sizes: Callable[[nn.Module], list[tuple[int, int]]] | None = None
    prune_heads: Callable[[nn.Module, list[int], list[int]], None] | None = None


STRUCTURED_HOOKS: Registry[StructuredHooks] = Registry("structured pruning hooks")


def narrow_linear(linear: nn.Linear, keep: torch.Tensor | int, dim: int) -> nn.Linear:
    """A copy of `linear` with only the `keep` indices (or the first `keep`, for a meta-device shell)
    along `dim` of its weight (0: outputs, with the bias; 1: inputs): how the families' head and FFN
    pruning narrows a transformer's projections."""
    index = torch.arange(keep) if isinstance(keep, int) else keep
    out_f, in_f = (len(index), linear.in_features) if dim == 0 else (linear.out_features, len(index))
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
    if not linear.weight.is_meta:
        with torch.no_grad():
            new.weight.copy_(linear.weight.index_select(dim, index.to(linear.weight.device)))
            if linear.bias is not None:
                new.bias.copy_(linear.bias if dim == 1 else linear.bias[index.to(linear.bias.device)])
    return new


def register_structured(model_type: type[nn.Module], hooks: StructuredHooks) -> StructuredHooks:
    """Registers `hooks` for `model_type` and its subclasses (a family calls this in its folder)."""
    return register_for_class(STRUCTURED_HOOKS, model_type, hooks)


def structured_hooks(model: nn.Module) -> StructuredHooks:
    """The hooks registered for `model`'s class or its nearest registered base class."""
    hooks = lookup_by_class(STRUCTURED_HOOKS, model)
    if hooks is None:
        raise InvalidArgumentError(f"no structured pruning is registered for {type(model).__name__}")
    return hooks


def kept_width(width: int, fraction: float, round_to: int = 8) -> int:
    """How many of `width` channels stay when `fraction` of them are pruned: width - floor(fraction *
    width), at least 1, rounded to the nearest multiple of `round_to` (at most `width`) when it is at
    least `round_to`."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise InvalidArgumentError(f"width must be a positive integer, got {width!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise InvalidArgumentError(f"fraction must be in [0, 1), got {fraction!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise InvalidArgumentError(f"round_to must be a positive integer, got {round_to!r}")
    kept = max(1, width - math.floor(fraction * width))
    if fraction == 0 or round_to == 1 or kept < round_to:
        return kept
    return min(width, round_to * math.floor(kept / round_to + 0.5))


# Channels -----------------------------------------------------------------------------------------

def _modules_matching(model: nn.Module, patterns: tuple[str, ...]) -> list[nn.Module]:
    compiled = [re.compile(p) for p in patterns]
    return [m for name, m in model.named_modules() if name and any(p.fullmatch(name) for p in compiled)]


def _prune_channels(model: nn.Module, fraction: float, example_inputs: Any, *, keep: tuple[str, ...],
                    round_to: int, original: dict[str, int] | None) -> Widths:
    """Prunes each group to kept_width(original width of its root layer, fraction); returns the widths."""
    import torch_pruning as tp  # imported when channels are first pruned: a heavy import

    kept_modules = _modules_matching(model, keep)
    names = {m: n for n, m in model.named_modules()}
    was_training = model.training
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    importance = tp.importance.GroupMagnitudeImportance(p=1)
    plans = []
    for group in graph.get_all_groups(ignored_layers=kept_modules, root_module_types=[nn.Conv2d, nn.Linear]):
        if any(dep.target.module in kept_modules and graph.is_out_channel_pruning_fn(dep.handler)
               for dep, _ in group):
            continue  # the output channels of a kept layer (a classifier's classes) never go
        root, handler = group[0].dep.target.module, group[0].dep.handler
        scores = importance(group)
        if scores is None:
            continue  # torch-pruning found nothing to rank in this group
        name = names[root]
        width = (original or {}).get(name, len(scores))
        n_prune = len(scores) - kept_width(width, fraction, round_to)
        if n_prune > 0:
            plans.append((name, root, handler, torch.argsort(scores, stable=True)[:n_prune].tolist(), len(scores)))
    widths: Widths = {}
    for name, root, handler, indices, before in plans:
        graph.get_pruning_group(root, handler, indices).prune()
        widths[name] = (before, before - len(indices))
    model.train(was_training)
    return widths


def channel_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and output features of every linear layer, by module name."""
    return {name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def apply_channel_pruning(model: nn.Module, sparsity: float, example_inputs: Any, *, keep: tuple[str, ...] = (),
                          round_to: int = 8) -> Widths:
    """One-shot channel pruning of `model` in place: every coupled group of layers loses `sparsity` of
    its output channels (lowest group L1 norm first; widths rounded as `kept_width` says). Layers
    whose name fully matches a `keep` pattern keep their output channels (a classifier's classes).
    `example_inputs` is one input to trace the model with. Returns {root layer: (before, after)}."""
    _check_fraction(sparsity)
    return _prune_channels(model, sparsity, example_inputs, keep=keep, round_to=round_to, original=None)


def apply_gradual_channel_pruning(model: nn.Module, context: RecipeContext, example_inputs: Any, *,
                                  sparsity: float, epochs: int, lr: float, steps: int = 3,
                                  keep: tuple[str, ...] = (), round_to: int = 8, weight_decay: float = 5e-4,
                                  optimizer: str = "sgd") -> Widths:
    """Channel pruning to `sparsity` in `steps` steps, fine-tuning between them and after (see the
    module docstring). Returns {root layer: (original width, final width)}."""
    _check_fraction(sparsity)
    original = channel_widths(model)

    def prune_to(progress: float) -> None:
        _prune_channels(model, sparsity * progress, example_inputs, keep=keep, round_to=round_to,
                        original=original)

    _prune_in_steps(model, context, prune_to, epochs=epochs, lr=lr, steps=steps,
                    weight_decay=weight_decay, optimizer=optimizer, desc=f"channel pruning to {sparsity:.0%}")
    final = channel_widths(model)
    return {name: (original[name], final[name]) for name in original if final.get(name) != original[name]}


# Heads and FFN neurons ----------------------------------------------------------------------------

def _head_hooks(model: nn.Module) -> StructuredHooks:
    hooks = structured_hooks(model)
    if hooks.head_sizes is None or hooks.prune_heads is None:
        raise InvalidArgumentError(f"{type(model).__name__} has no attention heads to prune "
                                   "(its family registers no head pruning)")
    return hooks


def _prune_heads_to(model: nn.Module, hooks: StructuredHooks, original: list[tuple[int, int]], heads: float,
                    ffn: float, round_to: int) -> None:
    hooks.prune_heads(model, [kept_width(h, heads, 1) for h, _ in original],
                      [kept_width(f, ffn, round_to) for _, f in original])


def apply_head_pruning(model: nn.Module, sparsity: float, *, ffn_sparsity: float | None = None,
                       round_to: int = 8) -> list[tuple[int, int]]:
    """One-shot: every transformer layer of `model` loses `sparsity` of its attention heads and
    `ffn_sparsity` (default: `sparsity`) of its FFN neurons, those of lowest L1 norm. Returns the
    (heads, FFN neurons) left per layer."""
    _check_fraction(sparsity)
    ffn = sparsity if ffn_sparsity is None else _check_fraction(ffn_sparsity)
    hooks = _head_hooks(model)
    _prune_heads_to(model, hooks, hooks.head_sizes(model), sparsity, ffn, round_to)
    return hooks.head_sizes(model)


def apply_gradual_head_pruning(model: nn.Module, context: RecipeContext, *, sparsity: float, epochs: int,
                               lr: float, ffn_sparsity: float | None = None, steps: int = 3, round_to: int = 8,
                               weight_decay: float = 0.01, optimizer: str = "adamw") -> list[tuple[int, int]]:
    """Head and FFN pruning in `steps` steps with fine-tuning (see the module docstring). Returns the
    (heads, FFN neurons) left per layer."""
    _check_fraction(sparsity)
    ffn = sparsity if ffn_sparsity is None else _check_fraction(ffn_sparsity)
    hooks = _head_hooks(model)
    original = hooks.head_sizes(model)

    def prune_to(progress: float) -> None:
        _prune_heads_to(model, hooks, original, sparsity * progress, ffn * progress, round_to)

    _prune_in_steps(model, context, prune_to, epochs=epochs, lr=lr, steps=steps,
                    weight_decay=weight_decay, optimizer=optimizer,
                    desc=f"head/FFN pruning to {sparsity:.0%}/{ffn:.0%}")
    return hooks.head_sizes(model)


# The schedule ------------------------------------------------------------------------------------

def pruning_epochs(epochs: int, steps: int) -> list[int]:
    """The epoch at whose start each of the `steps` pruning steps happens: spread evenly over the
    first `PRUNE_PHASE_FRACTION` of `epochs` (several may share an epoch when epochs are few)."""
    return [math.floor(k * epochs * PRUNE_PHASE_FRACTION / steps) for k in range(steps)]


def _prune_in_steps(model: nn.Module, context: RecipeContext, prune_to: Callable[[float], None], *,
                    epochs: int, lr: float, steps: int, weight_decay: float, optimizer: str,
                    desc: str) -> None:
    """Calls `prune_to(k / steps)` (the fraction of the way to the final widths) for k = 1..steps at the
    epochs `pruning_epochs` gives, training between them and to the end; pruning steps that share an
    epoch collapse into the last."""
    if epochs == 0:
        prune_to(1.0)
        return
    context.require("train_batches", "loss_fn", step=desc)
    at = pruning_epochs(epochs, steps)
    events = sorted({epoch: k + 1 for k, epoch in enumerate(at)}.items())  # epoch -> last step due then
    for i, (epoch, k) in enumerate(events):
        prune_to(k / steps)
        end = events[i + 1][0] if i + 1 < len(events) else epochs
        if end > epoch:
            train(model, lambda e, start=epoch: context.train_batches(start + e), context.loss_fn,
                  epochs=end - epoch, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                  progress=context.progress, desc=f"{desc}, step {k}/{steps}")


# Configs ------------------------------------------------------------------------------------------

def _check_fraction(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InvalidArgumentError(f"sparsity must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_schedule(config: ChannelPruningConfig | HeadPruningConfig) -> None:
    check_fraction("sparsity", config.sparsity)
    check_positive("epochs", config.epochs, allow_zero=True, integer=True)
    check_positive("steps", config.steps, integer=True)
    check_positive("lr", config.lr)
    check_positive("round_to", config.round_to, integer=True)
    check_positive("weight_decay", config.weight_decay, allow_zero=True)
    check_choice("optimizer", config.optimizer, OPTIMIZERS)
    if config.epochs == 0 and config.steps != 1:
        raise RecipeError(f"steps={config.steps} without fine-tuning (epochs=0) is pruning once: use steps=1")


@register_config
@dataclasses.dataclass(frozen=True)
class ChannelPruningConfig(CompressionConfig):
    """Channel (filter) pruning: `sparsity` of every coupled group's output channels removed, in `steps`
    steps over `epochs` of fine-tuning (0: pruned once, not fine-tuned). `keep`: layers whose output
    channels stay (regular expressions on module names); `round_to`: width multiple (see `kept_width`)."""

    VERSION = 1
    sparsity: float
    epochs: int = 0
    lr: float = 0.02
    steps: int = 1
    round_to: int = 8
    keep: tuple[str, ...] = ()
    weight_decay: float = 5e-4
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        _check_schedule(self)
        check_patterns("keep", self.keep)


@register_config
@dataclasses.dataclass(frozen=True)
class HeadPruningConfig(CompressionConfig):
    """Attention-head and FFN-neuron pruning: `sparsity` of every layer's heads and `ffn_sparsity`
    (None: the same) of its FFN neurons removed, in `steps` steps over `epochs` of fine-tuning."""

    VERSION = 1
    sparsity: float
    ffn_sparsity: float | None = None
    epochs: int = 0
    lr: float = 5e-4
    steps: int = 1
    round_to: int = 8
    weight_decay: float = 0.01
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        _check_schedule(self)
        if self.ffn_sparsity is not None:
            check_fraction("ffn_sparsity", self.ffn_sparsity)


STRUCTURED_CONFIGS: tuple[type[CompressionConfig], ...] = (ChannelPruningConfig, HeadPruningConfig)


def _example_input(context: RecipeContext) -> Any:
    """One input of the calibration data (the first example of its first batch), to trace the model."""
    context.require("calibration_batches", step="channel pruning")
    inputs = next(iter(context.calibration_batches()), None)
    if inputs is None:
        raise RecipeError("channel pruning needs one example input; the calibration data is empty")
    return tuple(t[:1] for t in inputs) if isinstance(inputs, (tuple, list)) else inputs[:1]


@handles(ChannelPruningConfig)
def _channels(model: nn.Module, config: ChannelPruningConfig, context: RecipeContext) -> nn.Module:
    if not structured_hooks(model).channels:
        raise InvalidArgumentError(f"channel pruning does not apply to {type(model).__name__} "
                                   "(its family registers no channel pruning)")
    apply_gradual_channel_pruning(model, context, _example_input(context), sparsity=config.sparsity,
                                  epochs=config.epochs, lr=config.lr, steps=config.steps, keep=config.keep,
                                  round_to=config.round_to, weight_decay=config.weight_decay,
                                  optimizer=config.optimizer)
    return model


@handles(HeadPruningConfig)
def _heads(model: nn.Module, config: HeadPruningConfig, context: RecipeContext) -> nn.Module:
    apply_gradual_head_pruning(model, context, sparsity=config.sparsity, ffn_sparsity=config.ffn_sparsity,
                               epochs=config.epochs, lr=config.lr, steps=config.steps, round_to=config.round_to,
                               weight_decay=config.weight_decay, optimizer=config.optimizer)
    return model


# Saving and rebuilding ----------------------------------------------------------------------------

def structured_architecture(model: nn.Module, recipe: Recipe | None) -> dict[str, Any] | None:
    """The architecture to save with a checkpoint that `recipe` made from `model`'s base: its family's
    description when the recipe has a structured step, else None (the entry's own architecture)."""
    if recipe is None or not any(isinstance(step, STRUCTURED_CONFIGS) for step in recipe.steps):
        return None
    return structured_hooks(model).describe(model)


def rebuild_architecture(model: nn.Module, architecture: dict[str, Any]) -> nn.Module:
    """`model` (the default architecture, usually on the meta device) narrowed to a saved `architecture`."""
    if not isinstance(architecture, dict):
        raise InvalidArgumentError(f"a saved architecture is a mapping, got {type(architecture).__name__}")
    return structured_hooks(model).rebuild(model, architecture)
