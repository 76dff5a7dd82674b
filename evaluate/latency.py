"""Wall-clock latency of one forward pass, measured by torch's benchmark Timer (which adapts the number
of runs to the requested time and synchronizes accelerators)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.errors import InvalidArgumentError

_WARMUP_CALLS = 2


@dataclass(frozen=True)
class LatencyReport:
    """Median and inter-quartile range of one `model(*inputs)` call, in milliseconds, over `runs` calls."""

    median_ms: float
    iqr_ms: float
    runs: int


def measure_latency(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...], *,
                    min_run_time: float = 1.0, num_threads: int | None = None) -> LatencyReport:
    """Time `model(*example_input)` as given (choosing batch 1 is the caller's job), in eval mode under
    `torch.inference_mode`, after a few warm-up calls; the model's training flag is restored afterwards.
    `num_threads` defaults to torch's current intra-op thread count (Timer's own default would be 1)."""
    from torch.utils.benchmark import Timer  # imported here: it pulls in torch's C++ extension helpers

    if not min_run_time > 0:
        raise InvalidArgumentError(f"min_run_time must be > 0 seconds, got {min_run_time!r}")
    threads = torch.get_num_threads() if num_threads is None else num_threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidArgumentError(f"num_threads must be a positive integer, got {num_threads!r}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(_WARMUP_CALLS):
                model(*inputs)
            timer = Timer(stmt="model(*inputs)", globals={"model": model, "inputs": inputs}, num_threads=threads)
            measurement = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        model.train(was_training)
    return LatencyReport(
        median_ms=measurement.median * 1e3,
        iqr_ms=measurement.iqr * 1e3,
        runs=len(measurement.raw_times) * measurement.number_per_run,
    )
