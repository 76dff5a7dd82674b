"""How a family's model maps onto an exported graph: the family's hook (`Task.export_signature`).

A graph takes tensors and returns tensors; a zoo model may take more (a `torch.Generator` for the noise
it samples) and return more (a NamedTuple of outputs). A `GraphSignature` says which module is traced,
with which example inputs and names, which axes stay dynamic, and how a call of the model with the
task's inputs becomes a call of the graph and back (`call`), so that the runtime model answers the
same call as the torch model with the same outputs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zoo.errors import ZooError

RunGraph = Callable[[Sequence[torch.Tensor]], tuple[torch.Tensor, ...]]


class UnsupportedExportError(ZooError):
    """A model (or its family) has no exported graph that answers the same call: the message says why
    (e.g. an autoregressive beam search or a sampling loop that only Python drives)."""


@dataclass(frozen=True)
class GraphSignature:
    """The graph of a model with `input_names` in and `output_names` out. `dynamic_axes` maps an input
    name to its axes that may change size between calls (axis -> a name, e.g. {0: "batch"}); the other
    axes keep the example's size. The default maps a model called as `model(*inputs)` that returns one
    tensor or a tuple of tensors; families with other calls subclass it (`graph_module`,
    `example_inputs`, `call`)."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    def graph_module(self, model: nn.Module) -> nn.Module:
        """What is traced: a module whose forward takes the graph's inputs, in order, and returns its
        outputs (a tensor, or a tuple in the order of `output_names`)."""
        return model

    def example_inputs(self, example: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The graph's inputs for the task's example input (what `Task.example_input` gives)."""
        return example if isinstance(example, tuple) else (example,)

    def call(self, run: RunGraph, *args: Any, **kwargs: Any) -> Any:
        """The model's answer to `model(*args, **kwargs)`, computed by `run` (the graph)."""
        if kwargs:
            raise UnsupportedExportError(f"the exported graph takes {', '.join(self.input_names)} positionally; "
                                         f"got keyword arguments {', '.join(kwargs)}")
        outputs = run(args)
        return outputs[0] if len(outputs) == 1 else outputs


def batch_axes(*names: str, sequence: Sequence[str] = ()) -> dict[str, dict[int, str]]:
    """Axis 0 of every named input dynamic ("batch"), and axis 1 of those in `sequence` ("sequence")."""
    return {name: {0: "batch", **({1: "sequence"} if name in sequence else {})} for name in names}
