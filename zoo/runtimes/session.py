"""A graph in a runtime, called like the torch model it came from.

`RuntimeModel` is an nn.Module without parameters: `model(*inputs)` turns torch tensors into the
runtime's arrays, runs the graph (ONNX Runtime's InferenceSession or an OpenVINO compiled model) and
returns torch tensors, mapped by the family's `GraphSignature` to what the torch model returns. Graphs
run in fp32 (OpenVINO's CPU plugin would otherwise pick bf16 where the CPU has it) and on torch's
intra-op thread count at the time the session is built.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.errors import InvalidArgumentError
from zoo.runtimes.signature import GraphSignature

from zoo.runtimes.names import GRAPH_RUNTIMES, RUNTIMES  # noqa: F401  (re-exported)


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise InvalidArgumentError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def runtime_format(runtime: str) -> str:
    """The export format a graph runtime reads."""
    return {"onnxruntime": "onnx", "openvino": "openvino"}[check_runtime(runtime)]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().numpy()


class _OnnxRuntime:
    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.version = ort.__version__

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        feeds = {name: _numpy(t) for name, t in zip(self.input_names, inputs)}
        return tuple(torch.from_numpy(np.asarray(out)) for out in self.session.run(None, feeds))


class _OpenVino:
    """OpenVINO's CPU plugin, compiled for the static input shapes of each call (kept per shape set).

    Not the graph's dynamic batch axis: OpenVINO 2026.4's CPU plugin computes a QDQ (int8) convolution
    wrongly when the graph's batch axis is dynamic and the convolution's output feeds both inputs of an
    Add, directly or through other ops (y + y, y + 2y, y + relu(y); MobileNetV2's residual blocks: the
    output off by ~100 %), while the same graph with a static batch computes it to 2e-7, as ONNX Runtime
    does with either. `tests/test_runtimes.py` keeps a minimal graph of the pattern."""

    def __init__(self, path: Path, threads: int) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self.config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                       "PERFORMANCE_HINT": "LATENCY"}
        self.compiled_by_shape: dict[tuple[tuple[int, ...], ...], tuple[Any, Any]] = {}
        self.latest: Any = None
        self.version = ov.__version__

    def _compiled(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        if shapes not in self.compiled_by_shape:
            model = self.model.clone()
            model.reshape({port: list(shape) for port, shape in zip(model.inputs, shapes)})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self.compiled_by_shape[shapes] = (compiled, compiled.create_infer_request())
        self.latest = self.compiled_by_shape[shapes][0]
        return self.compiled_by_shape[shapes]

    @property
    def compiled(self) -> Any:
        """The model compiled for the shapes of the latest call (before any call: the graph as exported,
        dynamic axes kept, compiled now: what zoo.runtimes.int8 reads the layers' precisions from)."""
        if self.latest is None:
            return self.core.compile_model(self.model, "CPU", self.config)
        return self.latest

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        arrays = [_numpy(t) for t in inputs]
        compiled, request = self._compiled(tuple(tuple(a.shape) for a in arrays))
        results = request.infer(arrays)
        return tuple(torch.from_numpy(np.array(results[out])) for out in compiled.outputs)


class RuntimeModel(nn.Module):
    """`runtime`'s session of the graph at `path`, answering the torch model's call (see module doc).
    `path` is the exported file; `signature` the family's mapping between calls and the graph."""

    def __init__(self, runtime: str, path: str | Path, signature: GraphSignature, *, threads: int | None = None) -> None:
        super().__init__()
        if check_runtime(runtime) == "torch":
            raise InvalidArgumentError("a RuntimeModel runs an exported graph; runtime 'torch' is the model itself")
        threads = torch.get_num_threads() if threads is None else threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
        self.runtime, self.path, self.signature, self.threads = runtime, Path(path), signature, threads
        self._session = (_OnnxRuntime if runtime == "onnxruntime" else _OpenVino)(self.path, threads)

    @property
    def runtime_version(self) -> str:
        return self._session.version

    def run_graph(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The graph's outputs for its inputs, in the order of the signature's names."""
        return self._session(inputs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.signature.call(self.run_graph, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"runtime={self.runtime!r}, path={str(self.path)!r}, threads={self.threads}"
