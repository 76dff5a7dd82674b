"""Training on several processes (one machine or several) with torch.distributed: data parallel, exact.

Every training recipe of the zoo runs unchanged under `torchrun`; the CLI initializes the process group
itself (`init_from_environment`, called by the `zoo` command); Python callers call it, or
`torch.distributed.init_process_group`, before `zoo.load` or any recipe. Without a process group (or
with one process) nothing here changes anything.

How a run with W processes relates to the single-process run:

- **Same global batch, same steps, same schedule.** Every rank iterates the same seeded global batches
  (each loads the whole data set) and trains on its contiguous shard of each (`shard`: near-equal parts
  along dim 0). The model is wrapped in DistributedDataParallel, which averages the gradients; each
  rank's loss is weighted by W * n_rank / n_batch, so for a loss that is a mean over the batch's rows the
  averaged gradient is the full batch's (a mean over tokens, as translation's, is weighted by rows:
  close, not equal, when shards hold different token counts). The result equals the single-process run
  up to floating-point summation order (tests/test_distributed.py: 3e-8 relative after two epochs,
  tested at 1e-5). The loss must call the wrapped model's forward exactly once a step (DDP averages the
  gradients of what went through it; anything else is refused, `DistributedError`); DDP looks for
  parameters a forward leaves unused (`find_unused_parameters`: every family's model runs unchanged, at
  the cost of a graph traversal a step, and torch warns once per process when it finds none).
- **Callbacks.** `before_step`/`after_step` of `zoo.training.train` see the unwrapped model's parameters
  after the gradients were averaged: the pruning masks, computed from weights and averaged gradients with
  seeded generators (SET's growth, the random sparse start), are the same on every rank.
- **Losses** reported by `train` are the global batch's (the ranks' weighted losses summed).
- **BatchNorm.** torch has no SyncBatchNorm on CPU: each rank normalizes its shard with the shard's own
  statistics (as a batch of B / W would), and DDP copies rank 0's running statistics to every rank at
  each forward (and once more at the end), so a model with BatchNorm does not equal the single-process
  run (its batch statistics are noisier). On CUDA the BatchNorm layers are swapped for SyncBatchNorm
  while training (statistics over the global batch, equal to the single-process run) and restored after
  (not exercised by the tests, which run on CPU).
- **Randomness inside a loss** (dropout, sampled masks) draws from each rank's own generator, seeded
  alike: the ranks draw the same numbers for different rows, not the single-process run's numbers.
- **Files.** Only rank 0 writes (the variant cache, reports, cards, hub pushes) and evaluates; the other
  ranks wait for it and then read what it wrote (`main_only`, `main_decides`), so the store must be on a
  file system every rank reads (the same machine, or a shared one across machines). An error on rank 0
  is raised on every rank (`DistributedError`), not left as a hang. torchmetrics, which synchronizes
  over any initialized process group, is told not to while rank 0 evaluates alone.

Backends: gloo when CUDA is not available; with CUDA "cpu:gloo,cuda:nccl", so the zoo's CPU training
goes through gloo and a model the caller placed on a GPU through NCCL.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from zoo.errors import InvalidArgumentError, ZooError

T = TypeVar("T")


class DistributedError(ZooError):
    """A distributed run went wrong on some rank (an error on rank 0 seen from the others, a loss that
    bypassed the wrapped model's forward)."""


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when none is initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process is rank 0 (or the only one)."""
    return world()[0] == 0


def default_backend() -> str:
    """gloo on a machine without CUDA; else gloo for CPU tensors and NCCL for CUDA tensors."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_environment() -> tuple[int, int]:
    """Initializes the default process group from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT; LOCAL_RANK picks this process's GPU) when WORLD_SIZE > 1 and no group
    exists yet; otherwise does nothing. Returns `world()`."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        raise InvalidArgumentError(f"WORLD_SIZE must be an integer, got {text!r}") from None
    if size > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise DistributedError(f"WORLD_SIZE={size}, but this torch build has no torch.distributed")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=default_backend())
    return world()


def close() -> None:
    """Destroys the default process group, if there is one (the CLI's last act under torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: Any, rank: int, world_size: int) -> Any:
    """Part `rank` of `world_size` of `batch`: every tensor of a (nested tuple, list or dict) batch
    split along dim 0 into `world_size` contiguous parts, the first `n % world_size` one row longer
    (`torch.tensor_split`); other leaves are kept whole. Refuses a batch whose tensors disagree on their
    number of rows, that holds no tensor, or with fewer rows than `world_size`."""
    if not 0 <= rank < world_size:
        raise InvalidArgumentError(f"rank must be in [0, {world_size}), got {rank}")
    rows = batch_rows(batch)
    if rows < world_size:
        raise InvalidArgumentError(f"a batch of {rows} rows cannot be split among {world_size} processes; "
                                   "use a larger batch or fewer processes")
    return _map_tensors(batch, lambda t: torch.tensor_split(t, world_size, dim=0)[rank])


def batch_rows(batch: Any) -> int:
    """The number of rows (dim 0) every tensor of `batch` has."""
    sizes: set[int] = set()

    def record(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim == 0:
            raise InvalidArgumentError("a batch holding a 0-dimensional tensor cannot be split into rows")
        sizes.add(tensor.shape[0])
        return tensor

    _map_tensors(batch, record)
    if len(sizes) != 1:
        raise InvalidArgumentError("a batch to split must hold tensors that all have the same number of rows; "
                                   f"got {sorted(sizes) or 'no tensor'}")
    return sizes.pop()


def _map_tensors(batch: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return type(batch)({key: _map_tensors(value, fn) for key, value in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_map_tensors(value, fn) for value in batch))
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return type(batch)(_map_tensors(value, fn) for value in batch)
    return batch


# Rank 0 writes, the others wait -------------------------------------------------------------------

def main_decides(fn: Callable[[], T]) -> T:
    """`fn()` run on rank 0 only, its value (which must pickle) returned on every rank; the other ranks
    wait for it. An error in `fn` is raised on rank 0 and, as a DistributedError, on the others."""
    return _on_main(fn, share=True)


def main_only(fn: Callable[[], T]) -> T | None:
    """`fn()` run on rank 0 only (writes, evaluation): its value there, None on the other ranks, which
    wait until it is done. An error in `fn` is raised on rank 0 and, as a DistributedError, on the
    others."""
    return _on_main(fn, share=False)


_ALONE = [False]  # rank 0 is inside `_on_main`: nested calls run in place (the others are waiting)


def _on_main(fn: Callable[[], T], *, share: bool) -> T | None:
    rank, size = world()
    if size == 1 or _ALONE[0]:
        return fn()
    message: list[Any] = [None, None]  # [error on rank 0, value]
    value = None
    if rank == 0:
        try:
            with _alone():
                value = fn()
        except BaseException as err:
            dist.broadcast_object_list([f"{type(err).__name__}: {err}", None], src=0)
            raise
        message = [None, value if share else None]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise DistributedError(f"rank 0 failed: {message[0]}")
    return value if rank == 0 else message[1]


@contextlib.contextmanager
def _alone() -> Iterator[None]:
    """Rank 0 working while the others wait: nested `_on_main` calls run in place. (The metrics it
    computes never synchronize over the process group: the tasks build them with
    `zoo.tasks.LOCAL_METRIC`.)"""
    _ALONE[0] = True
    try:
        yield
    finally:
        _ALONE[0] = False


# The training loop's side -------------------------------------------------------------------------

class _DataParallel(DistributedDataParallel):
    """DistributedDataParallel whose unknown attributes are the wrapped model's (the families' losses
    read `model.scale` and the like), counting its forward calls."""

    forward_calls: int = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.forward_calls += 1
        return super().forward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


class DataParallelTraining:
    """What `zoo.training.train` does differently on several processes, and nothing on one:

    - `model`: the model to hand the loss (wrapped in DistributedDataParallel on several processes);
    - `shard(batch)`: this rank's part of a global batch and its share of the rows (1.0 alone);
    - `backward(loss, share)`: the backward pass, the loss weighted so that the averaged gradient is the
      global batch's (checks that the loss went through the wrapped model's forward: DDP averages only
      then);
    - `global_sum(value)`: a float summed over the ranks.

    A context manager: on leaving, the BatchNorm layers swapped for SyncBatchNorm are put back and, when
    the block succeeded, rank 0's buffers (running statistics) are copied to every rank.
    """

    def __init__(self, model: nn.Module) -> None:
        self.rank, self.world_size = world()
        self.model = model
        self._restore: list[tuple[nn.Module, str, nn.Module]] = []
        if self.world_size == 1:
            return
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if device.type == "cuda":
            self._restore = _to_sync_batchnorm(model)
        self.model = _DataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=True)

    def shard(self, batch: Any) -> tuple[Any, float]:
        if self.world_size == 1:
            return batch, 1.0
        part = shard(batch, self.rank, self.world_size)
        return part, batch_rows(part) / batch_rows(batch)

    def backward(self, loss: torch.Tensor, share: float) -> None:
        if self.world_size == 1:
            loss.backward()
            return
        if self.model.forward_calls != 1:
            raise DistributedError(f"the loss called the model's forward {self.model.forward_calls} times in a "
                                   "step; data-parallel training averages gradients only through exactly one call")
        self.model.forward_calls = 0
        scale = share * self.world_size
        (loss if scale == 1.0 else loss * scale).backward()

    def global_sum(self, value: float) -> float:
        if self.world_size == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(total)
        return float(total)

    def __enter__(self) -> DataParallelTraining:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        for parent, name, child in self._restore:
            setattr(parent, name, child)
        if self.world_size > 1 and kind is None:
            for buffer in self.model.module.buffers():
                dist.broadcast(buffer.data, src=0)


def _to_sync_batchnorm(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swaps every BatchNorm child for a SyncBatchNorm sharing its parameters and buffers; returns what
    to put back."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                swapped.append((parent, name, child))
    return swapped
