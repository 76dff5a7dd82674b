"""How a target sparsity S is spread over a model's prunable layers (Evci et al. 2020, RigL section 3):

- `uniform`: every layer at density 1 - S, except the first layer, which stays dense (so the model as a
  whole is a little less sparse than S; with a single layer nothing is pruned).
- `er` (Erdos-Renyi): density of a layer proportional to (n_in + n_out) / (n_in * n_out), its first two
  dimensions (a conv's kernel size is left out).
- `erk` (Erdos-Renyi-Kernel): density proportional to sum(shape) / prod(shape), kernel dimensions
  included: (c_out + c_in + k_h + k_w) / (c_out * c_in * k_h * k_w) for a 2-D conv.

For `er` and `erk` the factor epsilon is solved so that the layers hold (1 - S) * N non-zero weights in
all (N: their total size). A layer whose density would exceed 1 is made dense and epsilon is solved again
over the others, until no density exceeds 1. Every layer over 1 is made dense at once; RigL's reference
code caps one at a time, with the same result: a capped layer holds less than epsilon gave it, so the
others must hold more, epsilon only grows, and a layer over 1 stays over 1.

`layer_densities` gives real densities; `active_counts` turns them into whole numbers of weights per
layer by largest remainder, so that their sum is the real total rounded (for `er` and `erk`, exactly
round((1 - S) * N)).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from zoo.errors import InvalidArgumentError

DISTRIBUTIONS = ("uniform", "er", "erk")

Shapes = Mapping[str, Sequence[int]]


def _check(shapes: Shapes, sparsity: float, distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise InvalidArgumentError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise InvalidArgumentError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if not shapes:
        raise InvalidArgumentError("no prunable layer to spread the sparsity over")
    for name, shape in shapes.items():
        if len(shape) < 2 or any(int(d) < 1 for d in shape):
            raise InvalidArgumentError(f"layer {name!r}: a weight of shape {tuple(shape)} has no (n_out, n_in, ...) "
                                       "dimensions to spread a sparsity over")


def raw_density(shape: Sequence[int], distribution: str) -> float:
    """The density of a layer before scaling by epsilon: ER's (n_in + n_out) / (n_in n_out) over the
    first two dimensions, or ERK's sum(shape) / prod(shape)."""
    if distribution == "er":
        n_out, n_in = int(shape[0]), int(shape[1])
        return (n_in + n_out) / (n_in * n_out)
    if distribution == "erk":
        return sum(int(d) for d in shape) / math.prod(int(d) for d in shape)
    raise InvalidArgumentError(f"raw densities are defined for 'er' and 'erk', not {distribution!r}")


def layer_densities(shapes: Shapes, sparsity: float, distribution: str, *,
                    first_dense: bool = True) -> dict[str, float]:
    """Density (fraction of weights kept) of each layer, keyed and ordered as `shapes` (module order:
    `uniform` keeps the first one dense, unless `first_dense` is False: the model's first layer is
    already left out of `shapes`). See the module docstring for each distribution."""
    _check(shapes, sparsity, distribution)
    if distribution == "uniform":
        first = next(iter(shapes)) if first_dense else None
        return {name: 1.0 if name == first else 1.0 - sparsity for name in shapes}
    sizes = {name: math.prod(int(d) for d in shape) for name, shape in shapes.items()}
    raw = {name: raw_density(shape, distribution) for name, shape in shapes.items()}
    target = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [name for name in shapes if name not in dense]
        if not free:  # only when sparsity is 0: every layer dense holds the whole target
            return {name: 1.0 for name in shapes}
        remaining = target - sum(sizes[name] for name in dense)
        if remaining <= 0:
            raise InvalidArgumentError(f"no {distribution} densities give sparsity {sparsity}: the layers made "
                                       "dense already hold more than the target")
        epsilon = remaining / sum(raw[name] * sizes[name] for name in free)
        over = {name for name in free if epsilon * raw[name] > 1.0}
        if not over:
            return {name: 1.0 if name in dense else epsilon * raw[name] for name in shapes}
        dense |= over


def active_counts(shapes: Shapes, densities: Mapping[str, float]) -> dict[str, int]:
    """Whole numbers of weights to keep per layer: floor(density * size) each, plus one for the layers
    with the largest fractional parts (first in order among equals) until the sum is the real total
    sum(density * size) rounded to the nearest integer. Each count is between floor and ceil of its
    layer's real count."""
    if set(shapes) != set(densities):
        raise InvalidArgumentError("shapes and densities must name the same layers")
    exact: dict[str, float] = {}
    for name, shape in shapes.items():
        density = densities[name]
        if not 0.0 <= density <= 1.0:
            raise InvalidArgumentError(f"layer {name!r}: density must be in [0, 1], got {density!r}")
        exact[name] = density * math.prod(int(d) for d in shape)
    counts = {name: math.floor(value) for name, value in exact.items()}
    missing = round(sum(exact.values())) - sum(counts.values())
    by_remainder = sorted(exact, key=lambda name: exact[name] - counts[name], reverse=True)  # stable
    for name in by_remainder[:max(0, missing)]:
        counts[name] += 1
    return counts
