"""ES masks: the hybrid of Lenc, Elsen, Schaul & Simonyan (2019): gradient steps for the weights, an
evolution strategy over the distribution of the sparsity mask. The paper's body was not at hand; this
is the reconstruction of the zoo's method notes (seed_methods.md, section 4), to be judged by what it
measures, not taken as the paper's exact algorithm.

Every prunable weight w_i has a logit theta_i and keep probability p_i = sigmoid(theta_i); the mask is
drawn as independent Bernoulli(p_i). At each training step:

1. draw `population` masks m_1..m_P and compute the loss L_k of W * m_k on the same minibatch (with
   `torch.func.functional_call`, all P at once under `torch.func.vmap` when `vectorized`);
2. step the weights (the zoo's training loop, `zoo.training.train`) on the mean of the L_k, i.e. with
   the gradient averaged over the sampled masks;
3. step theta along the score-function (NES) estimate g = (1/P) sum_k A_k (m_k - p), where A_k is the
   centred rank of the fitness -L_k (`centred_ranks`, in [-1/2, 1/2]), with Adam or plain SGD;
4. shift the logits of each group (each tensor for `scope="layer"`, all of them for `"global"`) by the
   one constant that puts the mean of p at the step's target density (`renormalize_logits`).

The target density follows Zhu & Gupta's cubic schedule (`cubic_sparsity`) from 1 - `initial_sparsity`
(default 0.99) at the first step to 1 - `sparsity` at `end_fraction` of the steps, then stays there.
This ramp is the zoo's choice, not the notes': started at the final density, the P sampled masks are
independent draws of a few per cent of the weights, the network cannot learn under that noise, and the
ranks carry no signal (measured: chance accuracy on digits at 90 %). Starting near dense, every weight
trains first and the mask distribution sharpens as the density falls (Adam on the logits at a large
`mask_lr`, 1.0 by default, is what lets p reach 0 and 1 within a short run).

The final mask keeps the top-k weights by p: exactly n - floor(sparsity * n) per tensor (`layer`) or
over all prunable weights (`global`), ties broken by position. For the last `fixed_fraction` of the
steps that mask is fixed and only the weights train (as the recovery phase of gradual pruning), so the
weights the model ends with are the ones trained under the mask it is evaluated with.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from zoo.compress.config import (
    CompressionConfig, check_choice, check_fraction, check_patterns, check_positive, register_config,
)
from zoo.compress.pruning import OPTIMIZERS, SCOPES, Masks, apply_masks, cubic_sparsity, prunable_weights
from zoo.compress.recipe import RecipeContext, handles
from zoo.errors import InvalidArgumentError, RecipeError
from zoo.training import steps_per_epoch, train

MASK_OPTIMIZERS = ("adam", "sgd")


def centred_ranks(fitness: torch.Tensor) -> torch.Tensor:
    """Fitness shaping: the rank of each value (0 for the lowest; tied values share the mean of their
    ranks) scaled to [-1/2, 1/2], so the best sample gets +1/2, the worst -1/2, the values sum to
    zero, and a population of equal values gets all zeros."""
    if fitness.ndim != 1 or fitness.numel() < 2:
        raise InvalidArgumentError(f"centred ranks need a 1-d tensor of at least 2 values, got {tuple(fitness.shape)}")
    column, row = fitness[:, None], fitness[None, :]
    ranks = (row < column).sum(1).double() + ((row == column).sum(1).double() - 1.0) / 2.0
    return ranks / (fitness.numel() - 1) - 0.5


def nes_gradient(samples: torch.Tensor, probs: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """The score-function estimate of the gradient of the expected fitness (-loss) with respect to the
    logits: (1/P) sum_k A_k (m_k - p), A = `centred_ranks(-losses)`. `samples` is [P, n] (0/1),
    `probs` [n], `losses` [P]. An ascent direction: adding it to the logits favours the masks that
    scored a lower loss."""
    if samples.ndim != 2 or samples.shape != (losses.numel(), probs.numel()):
        raise InvalidArgumentError(f"samples must be [P, n] = [{losses.numel()}, {probs.numel()}], "
                                   f"got {tuple(samples.shape)}")
    shaped = centred_ranks(-losses.detach()).to(probs.dtype)
    return shaped @ (samples.to(probs.dtype) - probs) / losses.numel()


def renormalize_logits(logits: torch.Tensor, density: float, *, tol: float = 1e-9, max_iter: int = 200) -> float:
    """Adds in place the one constant b to `logits` for which mean(sigmoid(logits + b)) = `density`,
    and returns b. The mean is increasing in b, so b is found by Newton's method kept inside a
    shrinking bracket (a bisection step whenever Newton would leave it), in float64."""
    if not 0.0 < density < 1.0:
        raise InvalidArgumentError(f"density must be in (0, 1), got {density}")
    theta = logits.detach().to(torch.float64)
    target = math.log(density / (1.0 - density))
    low, high = target - float(theta.max()), target - float(theta.min())  # mean <= / >= density there
    shift = min(max(0.0, low), high)
    for _ in range(max_iter):
        p = torch.sigmoid(theta + shift)
        error = float(p.mean()) - density
        if abs(error) <= tol:
            break
        if error > 0:
            high = shift
        else:
            low = shift
        slope = float((p * (1.0 - p)).mean())
        newton = shift - error / slope if slope > 0 else math.nan
        shift = newton if low < newton < high else 0.5 * (low + high)
    with torch.no_grad():
        logits.add_(shift)
    return shift


def _groups(sizes: list[int], scope: str) -> list[slice]:
    """Slices of the flat logit vector renormalized and ranked together: one per tensor, or one."""
    check_choice("scope", scope, SCOPES)
    if scope == "global":
        return [slice(0, sum(sizes))]
    bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def top_k_masks(logits: torch.Tensor, weights: dict[str, torch.Tensor], sparsity: float, scope: str = "layer"
                ) -> Masks:
    """Keep-masks of the largest logits (equivalently the largest p): in each group of n weights
    (each tensor for `layer`, all for `global`) exactly n - floor(sparsity * n) are kept, ties going
    to the earlier position. `logits` is flat, in the order of `weights`."""
    sizes = [w.numel() for w in weights.values()]
    if logits.shape != (sum(sizes),):
        raise InvalidArgumentError(f"logits must be flat with {sum(sizes)} entries, got {tuple(logits.shape)}")
    keep = torch.zeros(logits.numel(), dtype=torch.bool, device=logits.device)
    for group in _groups(sizes, scope):
        part = logits[group]
        n_keep = part.numel() - math.floor(sparsity * part.numel())
        keep[group.start + torch.argsort(part, descending=True, stable=True)[:n_keep]] = True
    return {name: part.reshape(w.shape) for (name, w), part in zip(weights.items(), keep.split(sizes))}


class MaskDistribution:
    """Independent Bernoulli keep-probabilities p = sigmoid(`logits`) over the flat concatenation of
    weights of `sizes` elements, renormalized per group (each tensor for `scope="layer"`, all of them for
    `"global"`), with its own optimizer on the logits (`"adam"` or plain `"sgd"` at `lr`)."""

    def __init__(self, sizes: list[int], *, scope: str, density: float, lr: float, optimizer: str = "adam",
                 seed: int = 0, device: torch.device | str = "cpu"):
        check_choice("mask_optimizer", optimizer, MASK_OPTIMIZERS)
        if not 0.0 < density < 1.0:
            raise InvalidArgumentError(f"density must be in (0, 1), got {density}")
        self.sizes, self.groups = list(sizes), _groups(list(sizes), scope)
        self.logits = nn.Parameter(torch.full((sum(sizes),), math.log(density / (1.0 - density)), device=device))
        self.optimizer = (torch.optim.Adam([self.logits], lr=lr) if optimizer == "adam"
                          else torch.optim.SGD([self.logits], lr=lr))
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits.detach())

    def sample(self, population: int) -> torch.Tensor:
        """`population` masks drawn from the distribution: a [P, n] tensor of 0.0 and 1.0."""
        return torch.bernoulli(self.probs.expand(population, -1), generator=self.generator)

    def step(self, samples: torch.Tensor, losses: torch.Tensor, density: float) -> None:
        """One ES step on the logits from the losses of `samples` (drawn from the current p): the
        optimizer descends -`nes_gradient`, then each group is shifted to mean p = `density`."""
        self.logits.grad = -nes_gradient(samples, self.probs, losses)
        self.optimizer.step()
        for group in self.groups:
            renormalize_logits(self.logits.detach()[group], density)


class _LossOf(nn.Module):
    """`loss_fn(model, batch)` as a module, so `functional_call` can swap the model's weights."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def apply_es_masks(
    model: nn.Module,
    context: RecipeContext,
    *,
    sparsity: float,
    epochs: int,
    lr: float,
    population: int = 8,
    mask_lr: float = 1.0,
    mask_optimizer: str = "adam",
    fixed_fraction: float = 0.1,
    initial_sparsity: float = 0.01,
    end_fraction: float = 0.7,
    scope: str = "layer",
    keep_dense: tuple[str, ...] = (),
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    vectorized: bool = True,
    seed: int | None = None,
) -> Masks:
    """Trains `model` in place for `epochs` with ES masks (module docstring) at `sparsity`, then zeroes
    the weights outside the final top-k-by-p mask and returns the keep-masks: exactly
    n - floor(sparsity * n) kept in each tensor (`scope="layer"`, uniform) or over all prunable weights
    (`"global"`, ES then also chooses the distribution over layers).

    The weights train with `zoo.training.train` (`optimizer`, `lr`, `weight_decay`, warm-up + cosine);
    the logits with `mask_optimizer` at the constant `mask_lr`, from p = 1 - `initial_sparsity`
    everywhere, the mean of p following the cubic schedule to 1 - `sparsity` at `end_fraction` of the
    steps; the last `fixed_fraction` of the steps train the weights under the fixed final mask.
    `vectorized` evaluates the `population` masks in one `vmap`ped call (the model and loss must be
    vmap-safe: no batch norm in training mode); otherwise one after the other, which keeps all P graphs
    for the backward pass. `seed` (None: `context.seed`) seeds the mask draws."""
    context.require("train_batches", "loss_fn", step="ES masks")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0:
        raise InvalidArgumentError(f"ES masks need a sparsity in (0, 1), got {sparsity!r}")
    if isinstance(population, bool) or not isinstance(population, int) or population < 2:
        raise InvalidArgumentError(f"population must be an integer >= 2 (ranks need two samples), got {population!r}")
    if not 0.0 < initial_sparsity <= sparsity:
        raise InvalidArgumentError(f"initial_sparsity must be in (0, sparsity], got {initial_sparsity!r}")
    if not 0.0 < end_fraction <= 1.0 or not 0.0 <= fixed_fraction < 1.0 or end_fraction + fixed_fraction > 1.0:
        raise InvalidArgumentError("end_fraction must be in (0, 1], fixed_fraction in [0, 1), and the density must "
                                   f"reach its target before the mask is fixed; got end_fraction={end_fraction!r}, "
                                   f"fixed_fraction={fixed_fraction!r}")
    check_choice("mask_optimizer", mask_optimizer, MASK_OPTIMIZERS)
    weights = prunable_weights(model, keep_dense)
    if not weights:
        raise InvalidArgumentError("the model has no prunable weights outside keep_dense")
    keys = [".".join(filter(None, ("model", name, "weight"))) for name in weights]  # names in `loss_of`
    sizes = [w.numel() for w in weights.values()]
    distribution = MaskDistribution(sizes, scope=scope, density=1.0 - initial_sparsity, lr=mask_lr,
                                    optimizer=mask_optimizer, seed=context.seed if seed is None else seed,
                                    device=next(iter(weights.values())).device)
    loss_of = _LossOf(model, context.loss_fn)
    total = steps_per_epoch(context.train_batches) * epochs
    es_steps = total - math.floor(fixed_fraction * total)
    end = max(1, int(end_fraction * total))
    state: dict[str, Any] = {"masks": None}

    def masked_loss(masks: tuple[torch.Tensor, ...], batch: Any) -> torch.Tensor:
        params = {key: w * m for key, w, m in zip(keys, weights.values(), masks)}
        return functional_call(loss_of, params, (batch,))

    def es_loss(_: nn.Module, batch: Any) -> torch.Tensor:
        if state["masks"] is not None:  # the fixed phase
            return context.loss_fn(model, batch)
        samples = distribution.sample(population)
        masks = tuple(part.reshape(population, *w.shape).to(w.dtype)
                      for part, w in zip(samples.split(sizes, dim=1), weights.values()))
        if vectorized:
            losses = vmap(masked_loss, in_dims=(0, None), randomness="different")(masks, batch)
        else:
            losses = torch.stack([masked_loss(tuple(m[k] for m in masks), batch) for k in range(population)])
        state.update(samples=samples, losses=losses.detach())
        return losses.mean()

    def after_step(step: int) -> None:
        if state["masks"] is not None:
            apply_masks(weights, state["masks"])
            return
        target = 1.0 - cubic_sparsity(step + 1, initial=initial_sparsity, final=sparsity, begin=0, end=end)
        distribution.step(state["samples"], state["losses"], target)
        if step + 1 == es_steps:
            state["masks"] = top_k_masks(distribution.logits.detach(), weights, sparsity, scope)
            apply_masks(weights, state["masks"])

    train(model, context.train_batches, es_loss, epochs=epochs, lr=lr, weight_decay=weight_decay,
          optimizer=optimizer, after_step=after_step, progress=context.progress,
          desc=f"ES masks P={population} to {sparsity:.0%}")
    masks = state["masks"]
    if masks is None:  # zero epochs of data
        masks = top_k_masks(distribution.logits.detach(), weights, sparsity, scope)
    apply_masks(weights, masks)
    return masks


@register_config
@dataclasses.dataclass(frozen=True)
class ESMaskConfig(CompressionConfig):
    """ES masks (Lenc et al. 2019, reconstructed): SGD on the weights, an evolution strategy on a
    Bernoulli mask distribution whose mean density ramps to 1 - `sparsity`; the final mask keeps the
    top-k by p. Schedule points are fractions of the training steps."""

    VERSION = 1
    sparsity: float
    epochs: int = 10
    lr: float = 0.05
    population: int = 8
    mask_lr: float = 1.0
    mask_optimizer: str = "adam"
    fixed_fraction: float = 0.1
    initial_sparsity: float = 0.01
    end_fraction: float = 0.7
    scope: str = "layer"
    keep_dense: tuple[str, ...] = ()
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    vectorized: bool = True

    def __post_init__(self) -> None:
        check_fraction("sparsity", self.sparsity)
        if self.sparsity == 0:
            raise RecipeError("ES masks need a sparsity > 0")
        check_positive("epochs", self.epochs, integer=True)
        check_positive("lr", self.lr)
        check_positive("population", self.population, integer=True)
        if self.population < 2:
            raise RecipeError(f"population must be at least 2 (ranks need two samples), got {self.population}")
        check_positive("mask_lr", self.mask_lr)
        check_choice("mask_optimizer", self.mask_optimizer, MASK_OPTIMIZERS)
        check_fraction("fixed_fraction", self.fixed_fraction)
        check_fraction("initial_sparsity", self.initial_sparsity)
        if not 0 < self.initial_sparsity <= self.sparsity:
            raise RecipeError(f"initial_sparsity must be in (0, sparsity], got {self.initial_sparsity}")
        check_fraction("end_fraction", self.end_fraction, upper_open=False)
        if self.end_fraction == 0 or self.end_fraction + self.fixed_fraction > 1:
            raise RecipeError("end_fraction must be > 0 and end_fraction + fixed_fraction at most 1 (the density "
                              "reaches its target before the mask is fixed)")
        check_choice("scope", self.scope, SCOPES)
        check_patterns("keep_dense", self.keep_dense)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not isinstance(self.vectorized, bool):
            raise RecipeError(f"vectorized must be true or false, got {self.vectorized!r}")


@handles(ESMaskConfig)
def _es_masks(model: nn.Module, config: ESMaskConfig, context: RecipeContext) -> nn.Module:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    apply_es_masks(model, context, **fields)
    return model
