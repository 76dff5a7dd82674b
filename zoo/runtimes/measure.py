"""Latency of a variant in every runtime that runs it, and which int8 path produced its int8 numbers.

Export and session building happen before the timed region; each runtime's outputs are first checked
against the torch model's (zoo.runtimes.agreement: seeded random inputs, real batches where the caller
has them, a stated tolerance for fp32 and for int8 graphs), and a runtime whose graph disagrees is not
timed: its latency would describe another model. What could not be measured, and why, is recorded
beside the numbers.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.errors import ZooError
from zoo.evaluate.latency import measure_latency
from zoo.runtimes.agreement import Inputs, check_inputs, disagreement
from zoo.runtimes.agreement import relative_error, seeded_call, tensors_of  # noqa: F401  (re-exported)
from zoo.runtimes.export import cached_export
from zoo.runtimes.int8 import FAKE_QUANT, int8_path, integer_dot_product, integer_layers
from zoo.runtimes.qdq import has_int8_layers, low_bit_layers, quantizes_inputs
from zoo.runtimes.session import GRAPH_RUNTIMES, RuntimeModel, runtime_format
from zoo.runtimes.signature import GraphSignature

@dataclass(frozen=True)
class RuntimeLatencies:
    """`latency_ms`: median ms per runtime (torch included); `errors`: runtime -> why it was not timed;
    `int8_path`: for a quantized variant, what produced its fastest number (`zoo.runtimes.int8.int8_path`;
    None for unquantized variants)."""

    latency_ms: dict[str, float]
    errors: dict[str, str] = field(default_factory=dict)
    int8_path: str | None = None


def measure_runtimes(model: nn.Module, signature: GraphSignature | None, example: torch.Tensor | tuple[torch.Tensor, ...],
                     *, torch_ms: float, export_root: str | os.PathLike[str], weights_identity: str,
                     quant: str | None, latency_seconds: float, threads: int,
                     runtimes: Sequence[str] = GRAPH_RUNTIMES, unsupported: str | None = None,
                     data_inputs: Sequence[Inputs] = ()) -> RuntimeLatencies:
    """Times `model` (already timed in torch: `torch_ms`) in each of `runtimes`, exported under
    `export_root`. `signature` None means the family does not export, for the reason `unsupported`.
    A runtime is timed only when its graph agrees with `model` (zoo.runtimes.agreement: the int8 rule
    for a model that rounds some layer's input, at any bit width, else the fp32 rule) on seeded random
    inputs shaped as `example` and on `data_inputs` (real batches, as the model is called with them), if
    any. For a quantized variant (`quant` not None) `int8_path` says what its fastest runtime ran: the
    integer layers counted in that runtime's graph, and the low-bit layers it ran in fp32."""
    latency, errors = {"torch": torch_ms}, {}
    paths: dict[str, str] = {}
    if signature is None:
        errors = {runtime: unsupported or "does not export" for runtime in runtimes}
    else:
        checked = [*check_inputs(example), *data_inputs]
        int8 = quantizes_inputs(model)
        for runtime in runtimes:
            try:
                path = cached_export(model, signature, example, export_root, runtime_format(runtime), weights_identity)
                session = RuntimeModel(runtime, path, signature, threads=threads)
            except ZooError as err:
                errors[runtime] = f"{type(err).__name__}: {err}"
                continue
            why = disagreement(session, model, checked, int8=int8)
            if why is not None:
                errors[runtime] = why
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
            path_text = int8_path(fastest, *integer_layers(session), integer_dot_product(), low_bit_layers(model),
                                  qdq=has_int8_layers(model))
    return RuntimeLatencies(latency, errors, path_text)
