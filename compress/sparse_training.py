"""Sparse training with a changing topology: RigL, SET and static sparse training, from a random sparse
start (`apply_sparse_training`, `SparseTrainingConfig`).

Method card
-----------
**TL;DR.** Train a network that is sparse from the first step to the last: each prunable layer keeps a
fixed number of active weights, chosen at random at the start (at densities given by a distribution,
`zoo.compress.distributions`). Every `delta_t` steps, until `end_fraction` of training, RigL drops the
smallest-magnitude active weights of each layer and regrows as many at the inactive positions where the
dense gradient of the current batch is largest; SET regrows at random; static never changes the masks.

**Attribution.** Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners",
ICML 2020 (RigL, ERK). Mocanu et al., "Scalable training of artificial neural networks with adaptive
sparse connectivity inspired by network science", Nature Communications 2018 (SET, ER).

**How to use.**

    masks = apply_sparse_training(model, context, sparsity=0.9, method="rigl", distribution="erk",
                                  epochs=30, lr=0.1, delta_t=100)
    recipe = Recipe((SparseTrainingConfig(sparsity=0.9, method="rigl", epochs=30, lr=0.1),))

`context` (a `RecipeContext`) gives the training batches, the loss and the seed of the random masks and
of the re-initialization. With `from_scratch=True` (the default) the weights are re-initialized first:
to `context.fresh_model()`'s when the context has it (the zoo's contexts do: the base's architecture as
its family builds and initializes it, seeded as the base's own training), else by the root model's own
`reset_parameters()` when it has one, otherwise by the `reset_parameters()` of every module holding
parameters (torch's default initializers; a module holding parameters without one is refused). With
`from_scratch=False` training starts from the given weights, masked at random.

**Technical details.** At update step t (t = delta_t, 2 delta_t, ... <= T_end = floor(end_fraction *
total steps); `delta_t=None` spreads AUTO_UPDATES updates over [0, T_end]: delta_t = max(1, T_end //
AUTO_UPDATES)), each layer with N_active active weights drops n_drop = floor(f(t) * N_active) of them,
f(t) = drop_fraction / 2 * (1 + cos(pi t / T_end)):
- drop: keep the N_active - n_drop active weights with the largest |w| (after the step's update);
- grow: enable the n_drop positions not kept with the largest |dL/dw| of the step's batch, the dense
  gradient taken before it was masked (RigL), or chosen uniformly at random (SET);
- a grown weight that was inactive starts at exactly 0 and its optimizer state (SGD momentum, Adam's
  moments) is reset to 0; a weight dropped and regrown in the same update keeps its value and state;
- ties go by position (the lower flat index first), so the masks are a function of the seed, the weights
  and the gradients.
Gradients of inactive weights are zeroed before every optimizer step and the masks are re-applied after
it, so the inactive weights and their optimizer state stay at zero and each layer's active count is
constant. Biases, norms and the `keep_dense` layers are trained dense.

**N:M.** With `nm=(n, m)` every sparse layer keeps exactly n of each group of m consecutive input
channels (`zoo.compress.nm`) from the random start to the end: the random start draws n per group, and
an update drops the layer's n_drop smallest active weights as above, then regrows, in each group, as
many as it lost, at the group's free positions of largest |gradient| (SET: at random). The sparsity is
then 1 - n/m and the distribution uniform (layers that cannot be grouped go in `keep_dense`).

**Suggested hyperparameters.** The paper's: drop_fraction 0.3, delta_t 100, end_fraction 0.75, ERK; RigL
gains from longer training (2-5x the dense run's steps). delta_t must leave at least one update before
T_end (refused otherwise: it would be static training under another name); on small data sets lower it.

**Considerations.** The masked weights are zero-filled dense tensors, so this implementation costs what
dense training costs in time; `sparse_training_flops` counts what a sparse implementation would spend
(the non-zero multiply-accumulates, and RigL's dense gradient every delta_t steps). A weight shared by
two modules (tied embeddings) has one mask, under its first module's name.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.compress.config import (
    CompressionConfig, check_choice, check_fraction, check_patterns, check_positive, register_config,
)
from zoo.compress.distributions import DISTRIBUTIONS, active_counts, layer_densities
from zoo.compress.formats import nm_groups, nm_ungroup
from zoo.compress.nm import UNGROUPABLE, check_groupable, check_nm, groupable_weights, nm_mask
from zoo.compress.pruning import OPTIMIZERS, Masks, apply_masks, prunable_weights
from zoo.compress.recipe import RecipeContext, handles
from zoo.errors import InvalidArgumentError, RecipeError
from zoo.training import steps_per_epoch, train

METHODS = ("rigl", "set", "static")
AUTO_UPDATES = 20  # topology updates of a run whose delta_t is None (the default recipes': any data size)


def sparse_weights(model: nn.Module, keep_dense: tuple[str, ...] = ()) -> dict[str, nn.Parameter]:
    """`prunable_weights(model, keep_dense)` with each tensor once: a weight shared by several modules
    (tied embeddings) is kept under the first module's name."""
    seen: set[int] = set()
    weights = {}
    for name, weight in prunable_weights(model, keep_dense).items():
        if id(weight) not in seen:
            seen.add(id(weight))
            weights[name] = weight
    return weights


def cosine_drop_fraction(step: int, *, drop_fraction: float, end_step: int) -> float:
    """RigL's drop fraction at `step`: drop_fraction / 2 * (1 + cos(pi * step / end_step)), 0 from
    `end_step` on."""
    if end_step < 1:
        raise InvalidArgumentError(f"end_step must be >= 1, got {end_step}")
    return drop_fraction / 2.0 * (1.0 + math.cos(math.pi * min(step, end_step) / end_step))


def update_steps(total_steps: int, *, delta_t: int, end_fraction: float) -> range:
    """The steps (counted from 0, as `zoo.training.train` counts them) after which the masks change:
    delta_t, 2 delta_t, ... up to floor(end_fraction * total_steps)."""
    return range(delta_t, math.floor(end_fraction * total_steps) + 1, delta_t)


def random_nm_masks(weights: dict[str, torch.Tensor], n: int, m: int, generator: torch.Generator) -> Masks:
    """Boolean keep-masks keeping `n` positions of every group of `m` (`zoo.compress.nm`), drawn
    uniformly at random (layer after layer, from `generator`)."""
    check_groupable(weights, n, m)
    return {name: nm_mask(weight, n, m, score=torch.rand(weight.shape, generator=generator).to(weight.device))
            for name, weight in weights.items()}


def random_masks(weights: dict[str, torch.Tensor], counts: dict[str, int], generator: torch.Generator) -> Masks:
    """Boolean keep-masks with exactly `counts[name]` active positions in each tensor, drawn uniformly
    at random (layer after layer, from `generator`)."""
    masks: Masks = {}
    for name, weight in weights.items():
        if not 0 <= counts[name] <= weight.numel():
            raise InvalidArgumentError(f"{name}: cannot keep {counts[name]} of {weight.numel()} weights")
        keep = torch.zeros(weight.numel(), dtype=torch.bool)
        keep[torch.randperm(weight.numel(), generator=generator)[: counts[name]]] = True
        masks[name] = keep.reshape(weight.shape).to(weight.device)
    return masks


def drop_and_grow(weight: torch.Tensor, mask: torch.Tensor, grow_scores: torch.Tensor, n_drop: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One topology update of one tensor: keep the active weights but the `n_drop` of smallest |w|, then
    enable the `n_drop` positions not kept with the largest `grow_scores` (ties: lower flat index first).
    Returns the new mask and the grown positions, those enabled that were inactive in `mask` (a weight
    dropped and enabled again is not grown)."""
    active = int(mask.sum())
    if not 0 <= n_drop <= active:
        raise InvalidArgumentError(f"cannot drop {n_drop} of {active} active weights")
    flat_mask = mask.reshape(-1)
    magnitude = torch.where(flat_mask, weight.detach().reshape(-1).abs().float(), -1.0)
    kept = torch.zeros_like(flat_mask)
    kept[torch.argsort(magnitude, descending=True, stable=True)[: active - n_drop]] = True
    scores = torch.where(kept, -math.inf, grow_scores.detach().reshape(-1).float().to(kept.device))
    new = kept.clone()
    new[torch.argsort(scores, descending=True, stable=True)[:n_drop]] = True
    return new.reshape(mask.shape), (new & ~flat_mask).reshape(mask.shape)


def drop_and_grow_nm(weight: torch.Tensor, mask: torch.Tensor, grow_scores: torch.Tensor, n_drop: int, m: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`drop_and_grow` keeping an N:M mask N:M: the `n_drop` active weights of smallest |w| are dropped
    as there, and each group of `m` (`zoo.compress.nm`) regrows as many as it lost, at its positions not
    kept with the largest `grow_scores` (ties: lower position first)."""
    flat_mask = mask.reshape(-1)
    active = int(flat_mask.sum())
    if not 0 <= n_drop <= active:
        raise InvalidArgumentError(f"cannot drop {n_drop} of {active} active weights")
    magnitude = torch.where(flat_mask, weight.detach().reshape(-1).abs().float(), -1.0)
    kept = torch.zeros_like(flat_mask)
    kept[torch.argsort(magnitude, descending=True, stable=True)[: active - n_drop]] = True
    kept_groups, old_groups = nm_groups(kept.reshape(mask.shape), m), nm_groups(mask, m)
    lost = old_groups.sum(1) - kept_groups.sum(1)  # per group
    scores = torch.where(kept_groups, -math.inf, nm_groups(grow_scores.detach().float().to(mask.device), m))
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=order.device).expand_as(order))
    new_groups = kept_groups | (rank < lost[:, None])
    new = nm_ungroup(new_groups, tuple(mask.shape))
    return new, new & ~mask


def reset_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, positions: torch.Tensor) -> None:
    """Zeroes, at `positions`, every per-element state the optimizer keeps for `param` (SGD's momentum
    buffer, Adam's first and second moments): the state tensors of the parameter's shape."""
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.masked_fill_(positions, 0)


@dataclass(frozen=True)
class MaskUpdate:
    """What one topology update did: its step, drop fraction and number of weights grown (all layers)."""

    step: int
    drop_fraction: float
    grown: int


class SparseTopology:
    """The masks of a sparse training run and their updates, as the two callbacks of
    `zoo.training.train`: `before_step` (reads RigL's dense gradient at update steps, then masks the
    gradients) and `after_step` (updates the masks at update steps, then re-applies them)."""

    def __init__(self, weights: dict[str, nn.Parameter], masks: Masks, *, method: str, total_steps: int,
                 delta_t: int, drop_fraction: float, end_fraction: float, generator: torch.Generator,
                 nm: tuple[int, int] | None = None) -> None:
        check_choice("method", method, METHODS)
        if set(weights) != set(masks):
            raise InvalidArgumentError("weights and masks must name the same layers")
        self.weights, self.masks = weights, dict(masks)
        self.method, self.drop_fraction, self.generator, self.nm = method, drop_fraction, generator, nm
        self.end_step = math.floor(end_fraction * total_steps)
        self.schedule = update_steps(total_steps, delta_t=delta_t, end_fraction=end_fraction)
        if method != "static" and not self.schedule:
            raise RecipeError(f"{method} with delta_t={delta_t} would never update its masks: training ends its "
                              f"updates at step {self.end_step} of {total_steps}; lower delta_t")
        self.updates: list[MaskUpdate] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._grow_scores: dict[str, torch.Tensor] = {}

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        scoring = self.method == "rigl" and step in self.schedule
        for name, weight in self.weights.items():
            if weight.grad is None:
                if scoring:
                    raise RecipeError(f"RigL grows by the gradient, and the loss has none for {name}")
                continue
            if scoring:
                self._grow_scores[name] = weight.grad.detach().abs()
            weight.grad.masked_fill_(~self.masks[name], 0.0)

    def after_step(self, step: int) -> None:
        if self.method != "static" and step in self.schedule:
            self.update(step)
        apply_masks(self.weights, self.masks)

    def update(self, step: int) -> None:
        """Drops and regrows in every layer (see the module docstring); needs `before_step` of this step."""
        if self._optimizer is None or (self.method == "rigl" and not self._grow_scores):
            raise RecipeError("a mask update needs before_step to have run at the same step")
        fraction = cosine_drop_fraction(step, drop_fraction=self.drop_fraction, end_step=self.end_step)
        grown_total = 0
        for name, weight in self.weights.items():
            mask = self.masks[name]
            active = int(mask.sum())
            n_drop = math.floor(fraction * active)
            if n_drop == 0 or active == mask.numel():
                continue
            if self.method == "rigl":
                scores = self._grow_scores[name]
            else:
                scores = torch.rand(weight.shape, generator=self.generator)
            if self.nm is None:
                self.masks[name], grown = drop_and_grow(weight, mask, scores, n_drop)
            else:
                self.masks[name], grown = drop_and_grow_nm(weight, mask, scores, n_drop, self.nm[1])
            with torch.no_grad():
                weight.masked_fill_(grown, 0.0)
            reset_optimizer_state(self._optimizer, weight, grown)
            grown_total += int(grown.sum())
        self._grow_scores.clear()
        self.updates.append(MaskUpdate(step=step, drop_fraction=fraction, grown=grown_total))


def reinitialize(model: nn.Module, seed: int) -> None:
    """Re-initializes `model` in place, seeded on a fork of torch's random state (the caller's stream
    is untouched): by the model's own `reset_parameters()` if it has one, otherwise by that of every
    module holding parameters of its own (`_reset_parameters()` where torch names it so, as in
    `nn.MultiheadAttention`). Refuses a model where some module holds parameters but has neither (its
    weights would silently stay trained)."""
    own_reset = getattr(model, "reset_parameters", None)
    resets = [] if callable(own_reset) else [
        (name, getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None))
        for name, module in model.named_modules() if next(module.parameters(recurse=False), None) is not None
    ]
    missing = [name or "(root)" for name, reset in resets if not callable(reset)]
    if missing:
        raise RecipeError(f"cannot re-initialize {type(model).__name__}: {', '.join(missing)} hold parameters "
                          "but have no reset_parameters(); give the model a reset_parameters() or use from_scratch=False")
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if callable(own_reset):
            own_reset()
        for _, reset in resets:
            reset()


def sparse_training_flops(method: str, *, dense_forward: int, sparse_forward: int, total_steps: int,
                          examples_per_step: int, delta_t: int = 100, end_fraction: float = 0.75) -> int:
    """Training FLOPs of a sparse training run, as a sparse implementation would spend them (non-zero
    multiply-accumulates; the spec's accounting for the accuracy-vs-FLOPs evaluator).

    `dense_forward` and `sparse_forward` are the forward FLOPs of one example with all weights and with
    the non-zero ones (`zoo.evaluate.flops.count_flops(...)`'s `dense` and `sparse`); the active count of
    each layer is constant through training, so the final model's count holds at every step. Per example,
    a step costs a sparse forward, a sparse backward to the activations and a sparse weight gradient
    (3 x sparse_forward); at RigL's update steps the weight gradient is dense (2 x sparse_forward +
    dense_forward). SET and static never need a dense gradient."""
    check_choice("method", method, METHODS)
    for name, value in (("dense_forward", dense_forward), ("sparse_forward", sparse_forward),
                        ("total_steps", total_steps), ("examples_per_step", examples_per_step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgumentError(f"{name} must be an integer >= 0, got {value!r}")
    if sparse_forward > dense_forward:
        raise InvalidArgumentError(f"sparse_forward ({sparse_forward}) exceeds dense_forward ({dense_forward})")
    dense_steps = len(update_steps(total_steps, delta_t=delta_t, end_fraction=end_fraction)) if method == "rigl" else 0
    per_example = 3 * sparse_forward * (total_steps - dense_steps) + (2 * sparse_forward + dense_forward) * dense_steps
    return per_example * examples_per_step


def apply_sparse_training(
    model: nn.Module,
    context: RecipeContext,
    *,
    sparsity: float,
    method: str = "rigl",
    distribution: str = "erk",
    epochs: int = 10,
    lr: float = 0.02,
    delta_t: int | None = 100,
    drop_fraction: float = 0.3,
    end_fraction: float = 0.75,
    keep_dense: tuple[str, ...] = (),
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    from_scratch: bool = True,
    nm: tuple[int, int] | None = None,
    ungroupable: str = "refuse",
) -> Masks:
    """Trains `model` in place for `epochs` with a sparse topology (see the module docstring): re-
    initialized first when `from_scratch`, then masked at random at the `distribution`'s densities for
    `sparsity` (seeded by `context.seed`), the masks updated by `method`. Returns the final keep-masks;
    the arguments are validated as `SparseTrainingConfig`'s fields."""
    config = SparseTrainingConfig(
        sparsity=sparsity, method=method, distribution=distribution, epochs=epochs, lr=lr, delta_t=delta_t,
        drop_fraction=drop_fraction, end_fraction=end_fraction, keep_dense=keep_dense, weight_decay=weight_decay,
        optimizer=optimizer, from_scratch=from_scratch, nm=nm, ungroupable=ungroupable,
    )
    context.require("train_batches", "loss_fn", step="sparse training")
    if not sparse_weights(model, config.keep_dense):
        raise RecipeError("sparse training found no prunable weight (conv, linear, embedding) outside keep_dense")
    if config.from_scratch and context.fresh_model is not None:
        with torch.no_grad():
            model.load_state_dict(context.fresh_model().state_dict())
    elif config.from_scratch:
        reinitialize(model, context.seed)
    weights = sparse_weights(model, config.keep_dense)
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    first_dense = next(iter(sparse_weights(model))) in weights  # uniform: unless keep_dense holds it already
    counts = active_counts(shapes, layer_densities(shapes, config.sparsity, config.distribution,
                                                   first_dense=first_dense))
    generator = torch.Generator().manual_seed(context.seed)
    if config.nm is None:
        masks = random_masks(weights, counts, generator)
    else:  # uniform: the first layer dense, every other layer n:m
        sparse = groupable_weights({name: w for name, w in weights.items() if counts[name] < w.numel()},
                                   *config.nm, config.ungroupable)
        masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
        masks.update(random_nm_masks(sparse, *config.nm, generator))
    apply_masks(weights, masks)
    total_steps = steps_per_epoch(context.train_batches) * config.epochs
    delta_t = config.delta_t or max(1, math.floor(config.end_fraction * total_steps) // AUTO_UPDATES)
    topology = SparseTopology(
        weights, masks, method=config.method, total_steps=total_steps, delta_t=delta_t, drop_fraction=config.drop_fraction, end_fraction=config.end_fraction,
        generator=generator, nm=config.nm,
    )
    train(model, context.train_batches, context.loss_fn, epochs=config.epochs, lr=config.lr,
          weight_decay=config.weight_decay, optimizer=config.optimizer, before_step=topology.before_step,
          after_step=topology.after_step, progress=context.progress,
          desc=f"{config.method} {config.distribution} at {config.sparsity:.0%}")
    return topology.masks


@register_config
@dataclasses.dataclass(frozen=True)
class SparseTrainingConfig(CompressionConfig):
    """Sparse training with a changing topology (RigL, SET) or a fixed one (static), from a random
    sparse start at `sparsity` spread by `distribution`; `from_scratch` re-initializes the weights
    first. Update points are fractions of the training steps, so a recipe fits any data set size;
    `delta_t` None spreads AUTO_UPDATES topology updates over them. `nm` = (n, m) keeps every sparse
    layer n:m throughout (sparsity 1 - n/m, distribution uniform; a layer whose input channels do not
    split by m refused, or left dense with `ungroupable="dense"`)."""

    VERSION = 1
    sparsity: float
    method: str = "rigl"
    distribution: str = "erk"
    epochs: int = 10
    lr: float = 0.02
    delta_t: int | None = 100
    drop_fraction: float = 0.3
    end_fraction: float = 0.75
    keep_dense: tuple[str, ...] = ()
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    from_scratch: bool = True
    nm: tuple[int, int] | None = None
    ungroupable: str = "refuse"

    def __post_init__(self) -> None:
        check_choice("ungroupable", self.ungroupable, UNGROUPABLE)
        check_choice("method", self.method, METHODS)
        if self.nm is not None:
            if not isinstance(self.nm, tuple) or len(self.nm) != 2:
                raise RecipeError(f"nm must be (n, m), got {self.nm!r}")
            try:
                n, m = check_nm(*self.nm)
            except InvalidArgumentError as err:
                raise RecipeError(str(err)) from None
            if abs(self.sparsity - (1 - n / m)) > 1e-12 or self.distribution != "uniform":
                raise RecipeError(f"{n}:{m} sparse training is {1 - n / m:.4g} sparse with the uniform distribution; "
                                  f"got sparsity {self.sparsity}, distribution {self.distribution!r}")
        check_fraction("sparsity", self.sparsity)
        check_choice("distribution", self.distribution, DISTRIBUTIONS)
        check_positive("epochs", self.epochs, integer=True)
        check_positive("lr", self.lr)
        if self.delta_t is not None:
            check_positive("delta_t", self.delta_t, integer=True)
        check_fraction("drop_fraction", self.drop_fraction, upper_open=False)
        check_fraction("end_fraction", self.end_fraction, upper_open=False)
        if self.end_fraction == 0:
            raise RecipeError("end_fraction must be greater than 0")
        check_patterns("keep_dense", self.keep_dense)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not isinstance(self.from_scratch, bool):
            raise RecipeError(f"from_scratch must be true or false, got {self.from_scratch!r}")


@handles(SparseTrainingConfig)
def _sparse_training(model: nn.Module, config: SparseTrainingConfig, context: RecipeContext) -> nn.Module:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    apply_sparse_training(model, context, **fields)
    return model
