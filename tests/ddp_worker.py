"""Training scenarios run alike in one process and, by tests/test_distributed.py, under torchrun with
2 processes (gloo): `python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT`
writes `OUT/<scenario>_rank<r>.pt` per rank, and `OUT/collectives_rank<r>.pt` (what rank 0's
writing helpers and the loop's checks did on each rank). Not a test module: pytest does not collect it.

The model has no BatchNorm (its statistics over a shard differ from the full batch's); the data set's
27 rows make batches of 10, 10 and 7, so the last one splits unevenly (4 and 3 rows).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from zoo.compress.pruning import apply_gradual_magnitude_pruning
from zoo.compress.recipe import RecipeContext
from zoo.compress.sparse_training import apply_sparse_training
from zoo.data import Batches
from zoo.distributed import init_from_environment, main_decides, main_only, world
from zoo.training import train

ROWS, BATCH, EPOCHS = 27, 10, 2
ROWS_SEEN = [0]  # rows the loss was given in this process (a rank sees its shards only)


class TinyNet(nn.Module):
    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)
        self.norm = nn.BatchNorm1d(16) if batchnorm else nn.Identity()
        self.temperature = 2.0  # a plain attribute the loss reads, as the families' losses do

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    ROWS_SEEN[0] += len(x)
    return F.cross_entropy(model(x) / model.temperature, y)


def _setup(batchnorm: bool = False) -> tuple[TinyNet, Batches, RecipeContext]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, 8, generator=generator)
    y = torch.randint(0, 4, (ROWS,), generator=generator)
    batches = Batches(TensorDataset(x, y), batch_size=BATCH, shuffle=True, seed=3)
    torch.manual_seed(1)
    model = TinyNet(batchnorm)
    context = RecipeContext(train_batches=batches.epoch, loss_fn=loss_fn, seed=5, progress=False)
    return model, batches, context


def run(scenario: str) -> dict[str, Any]:
    """Trains the scenario's model; returns its weights, losses and masks (where it has masks)."""
    model, batches, context = _setup(batchnorm=scenario == "batchnorm")
    out: dict[str, Any] = {}
    ROWS_SEEN[0] = 0
    if scenario in ("dense", "batchnorm"):
        out["history"] = train(model, batches.epoch, loss_fn, epochs=EPOCHS, lr=0.1, progress=False)
    elif scenario == "gmp":
        out["masks"] = apply_gradual_magnitude_pruning(model, context, final_sparsity=0.75, epochs=EPOCHS, lr=0.1,
                                                       frequency=1, end_fraction=0.7)
    elif scenario in ("rigl", "set"):
        out["masks"] = apply_sparse_training(model, context, sparsity=0.75, method=scenario, distribution="uniform",
                                             epochs=EPOCHS, lr=0.1, delta_t=1, drop_fraction=0.5)
    else:
        raise ValueError(scenario)
    out["rows_seen"] = ROWS_SEEN[0]
    out["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


SCENARIOS = ("dense", "gmp", "rigl", "set", "batchnorm")


def _error_name(fn: Callable[[], object]) -> str | None:
    try:
        fn()
    except Exception as err:  # the test compares the type and message seen on each rank
        return f"{type(err).__name__}: {err}"
    return None


def collectives() -> dict[str, Any]:
    """What `main_decides` / `main_only` return on this rank, the errors a failure on rank 0 and a loss
    that bypasses the model's forward raise here, and a torchmetrics metric built as the zoo's tasks
    build theirs (`LOCAL_METRIC`) computed on rank 0 alone (it would wait for the other ranks forever if
    it tried to synchronize)."""
    from torchmetrics.classification import MulticlassAccuracy

    from zoo.tasks import LOCAL_METRIC

    rank = world()[0]

    def fail() -> None:
        raise ValueError("disk full")

    def accuracy() -> float:
        metric = MulticlassAccuracy(2, average="micro", **LOCAL_METRIC)
        metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
        return float(metric.compute())

    model, batches, _ = _setup()
    return {
        "decided": main_decides(lambda: 10 * rank + 7),
        "nested": main_decides(lambda: main_decides(lambda: f"inner {rank}")),
        "only": main_only(lambda: f"from {rank}"),
        "error": _error_name(lambda: main_only(fail)),
        "accuracy": main_decides(accuracy),
        "bypass": _error_name(lambda: train(model, batches.epoch, lambda m, b: F.cross_entropy(m.fc2(m.fc1(b[0])), b[1]),
                                            epochs=1, lr=0.1, progress=False)),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    init_from_environment()
    rank, size = world()
    folder = Path(sys.argv[1])
    for name in SCENARIOS:
        torch.save({"world": size, **run(name)}, folder / f"{name}_rank{rank}.pt")
    torch.save(collectives(), folder / f"collectives_rank{rank}.pt")
