"""Parameter counts of a model: all of them, and the non-zero ones (what sparsity actually removed)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamCount:
    """Number of parameter elements (buffers excluded; shared parameters counted once)."""

    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        """Fraction of parameter elements that are exactly zero (0.0 for a model without parameters)."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0


def count_parameters(model: nn.Module) -> ParamCount:
    """Count the elements of `model.parameters()`, and how many of them are non-zero."""
    params = list(model.parameters())
    return ParamCount(
        total=sum(p.numel() for p in params),
        nonzero=sum(int(torch.count_nonzero(p)) for p in params),
    )
