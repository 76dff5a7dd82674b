"""Latency of a variant in every runtime that runs it, and which int8 path produced its int8 numbers.

Export and session building happen before the timed region; each runtime's output on the example is
first checked against the torch model's (same seed for any noise the model samples), and a runtime
whose graph disagrees is not timed: its latency would describe another model. What could not be
measured, and why, is recorded beside the numbers.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zoo.errors import ZooError
from zoo.evaluate.latency import measure_latency
from zoo.runtimes.export import cached_export
from zoo.runtimes.int8 import FAKE_QUANT, int8_path, integer_dot_product, integer_layers
from zoo.runtimes.session import GRAPH_RUNTIMES, RuntimeModel, runtime_format
from zoo.runtimes.signature import GraphSignature

# A runtime agrees when max |runtime - torch| <= AGREEMENT_RTOL * max |torch| over all outputs. It catches
# a wrong graph (or a runtime's int8 arithmetic departing from the zoo's: OpenVINO's int8 MobileNetV2
# with random weights was off by ~100 %), not float noise: fp32 graphs measured here agree to ~1e-6.
AGREEMENT_RTOL = 1e-2


@dataclass(frozen=True)
class RuntimeLatencies:
    """`latency_ms`: median ms per runtime (torch included); `errors`: runtime -> why it was not timed;
    `int8_path`: for an int8 variant, what produced the fastest int8 number (None for fp32 variants)."""

    latency_ms: dict[str, float]
    errors: dict[str, str] = field(default_factory=dict)
    int8_path: str | None = None


def tensors_of(output: Any) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, a tuple / NamedTuple / list of them, or a dataclass)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in tensors_of(item)]
    if hasattr(output, "__dataclass_fields__"):
        return [t for name in output.__dataclass_fields__ for t in tensors_of(getattr(output, name))]
    return []


def seeded_call(model: nn.Module, inputs: Sequence[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """`model(*inputs)` in inference mode, torch's generator seeded (on a fork: the caller's is untouched)."""
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        return tensors_of(model(*inputs))


def relative_error(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """max |got - want| / max |want| over all outputs (inf when the shapes differ)."""
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return float("inf")
    diff = max((float((g.detach().float() - w.detach().float()).abs().max()) for g, w in zip(got, want) if w.numel()), default=0.0)
    scale = max((float(w.detach().float().abs().max()) for w in want if w.numel()), default=0.0)
    return diff / scale if scale > 0 else diff


def measure_runtimes(model: nn.Module, signature: GraphSignature | None, example: torch.Tensor | tuple[torch.Tensor, ...],
                     *, torch_ms: float, export_root: str | os.PathLike[str], weights_identity: str,
                     quant: str | None, latency_seconds: float, threads: int,
                     runtimes: Sequence[str] = GRAPH_RUNTIMES, unsupported: str | None = None) -> RuntimeLatencies:
    """Times `model` (already timed in torch: `torch_ms`) in each of `runtimes`, exported under
    `export_root`. `signature` None means the family does not export, for the reason `unsupported`."""
    latency, errors = {"torch": torch_ms}, {}
    inputs = example if isinstance(example, tuple) else (example,)
    paths: dict[str, str] = {}
    if signature is None:
        errors = {runtime: unsupported or "does not export" for runtime in runtimes}
    else:
        want = seeded_call(model, inputs)
        for runtime in runtimes:
            try:
                path = cached_export(model, signature, example, export_root, runtime_format(runtime), weights_identity)
                session = RuntimeModel(runtime, path, signature, threads=threads)
            except ZooError as err:
                errors[runtime] = f"{type(err).__name__}: {err}"
                continue
            error = relative_error(seeded_call(session, inputs), want)
            if not error <= AGREEMENT_RTOL:
                errors[runtime] = f"output differs from torch's by {error:.3g} of its largest value: not timed"
                continue
            latency[runtime] = measure_latency(session, example, min_run_time=latency_seconds,
                                               num_threads=threads).median_ms
            paths[runtime] = str(path)
    path_text = None
    if quant is not None:
        fastest = min(latency, key=latency.get)
        if fastest == "torch":
            path_text = FAKE_QUANT
        else:
            session = RuntimeModel(fastest, paths[fastest], signature, threads=threads)
            path_text = int8_path(fastest, *integer_layers(session), integer_dot_product())
    return RuntimeLatencies(latency, errors, path_text)
