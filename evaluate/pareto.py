"""The accuracy-vs-FLOPs Pareto front of a set of model variants."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from zoo.errors import InvalidArgumentError


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates when minimizing x (FLOPs) and maximizing y
    (accuracy), sorted by increasing x. Of several equal points only the first is kept."""
    for i, point in enumerate(points):
        if not _is_point(point):
            raise InvalidArgumentError(f"point {i} must be two finite numbers (x, y), got {point!r}")
    # Cheapest first; at equal x the most accurate (then the first given) comes first.
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1]:
            front.append(i)
    return front


def _is_point(point: object) -> bool:
    """Whether `point` is a pair of finite real numbers (NumPy scalars included, booleans not)."""
    try:
        values = tuple(point)  # type: ignore[call-overload]
    except TypeError:
        return False
    return len(values) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )
