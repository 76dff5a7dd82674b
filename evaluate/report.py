"""What the evaluator measures for one variant: a dataclass kept as such from measurement to card."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.atomic import atomic_write_json
from zoo.evaluate.machine import MachineInfo

# Bumped when the evaluator measures differently, so that reports cached by an older one are measured
# again (2: per-layer FLOPs credited to the outermost module that counted them; 3: attention counted on
# every SDPA kernel, the ops left out of the FLOPs named, the machine recorded; 4: latency per runtime,
# torch eager, ONNX Runtime and OpenVINO, and the int8 path; 5: each runtime's graph checked on seeded
# random inputs and evaluation examples by an fp32 or an int8 rule, OpenVINO compiled per input shape; 6: QAT
# layers exported as int8 QDQ or dequantized fp32, a quantized variant's difference from its dense export).
EVALUATOR_VERSION = 6


@dataclass(frozen=True)
class LayerFlops:
    """FLOPs of one module for one example: dense, and counting only non-zero weights."""

    name: str
    op: str
    dense: int
    sparse: int


@dataclass(frozen=True)
class DenseExportDifference:
    """How the outputs of a quantized variant's dense export (`zoo export`: dequantized weights in the plain
    architecture, input quantization dropped) differ from the quantized model's on `inputs` (in words, e.g.
    "64 evaluation examples"): the largest absolute difference and the relative RMS difference
    ||dense - quantized||_2 / ||quantized||_2 (the largest over the outputs). Both are 0 when no layer
    quantizes its input."""

    max_abs: float
    relative_rms: float
    inputs: str


@dataclass
class VariantReport:
    """Measurements of one model variant on its task. FLOPs are 2 x multiply-accumulates, per example
    at batch 1 (torch's FlopCounterMode convention), leaving out the ops named in `flops_uncounted`
    (op name -> calls, see `zoo.evaluate.flops`); metrics are as their task's `MetricSpec`s say.
    `machine` is where it was measured (None for reports that predate it). `eval_data_missing` says why
    `metrics` is empty when the evaluation data was not on the machine (None: it was measured).
    `evaluator_version` is the `EVALUATOR_VERSION` that measured it (1 for reports that predate it).
    `latency_ms` is torch eager's; `latency_by_runtime` the median ms in each runtime that ran it (torch,
    onnxruntime, openvino: see zoo.runtimes.measure), `runtime_errors` why a runtime has no number, and
    `int8_path` what produced an int8 variant's fastest number (e.g. "openvino QDQ (VNNI): 21/21 layers
    on integer kernels", or "fake-quant (no integer kernel used)"; None for fp32 variants), `dense_export`
    how a quantized variant's dense export computes differently (None for unquantized variants and
    reports that predate it). `user_data` describes the user's evaluation data it was measured on
    (zoo.userdata: source, format, split, columns, examples, content fingerprint, description); None when
    measured on the entry's own data."""

    name: str
    base_model: str
    task: str
    dataset: str
    split: str
    metrics: dict[str, float]
    metric_average: str
    flops_dense: int
    flops_sparse: int
    params_total: int
    params_nonzero: int
    bytes_on_disk: int
    latency_ms: float
    sparsity: float = 0.0
    quant: str | None = None
    recipe: list[dict[str, Any]] | None = None
    layers: list[LayerFlops] = field(default_factory=list)
    flops_uncounted: dict[str, int] = field(default_factory=dict)
    machine: MachineInfo | None = None
    eval_data_missing: str | None = None
    latency_by_runtime: dict[str, float] = field(default_factory=dict)
    runtime_errors: dict[str, str] = field(default_factory=dict)
    int8_path: str | None = None
    dense_export: DenseExportDifference | None = None
    evaluator_version: int = EVALUATOR_VERSION
    user_data: dict[str, Any] | None = None

    @property
    def best_runtime(self) -> tuple[str, float]:
        """(runtime, median ms) of the fastest runtime measured (torch eager when no other ran)."""
        if not self.latency_by_runtime:
            return "torch", self.latency_ms
        runtime = min(self.latency_by_runtime, key=lambda name: (self.latency_by_runtime[name], name))
        return runtime, self.latency_by_runtime[runtime]

    @property
    def is_current(self) -> bool:
        return self.evaluator_version == EVALUATOR_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantReport:
        data = dict(data)
        data["layers"] = [LayerFlops(**layer) for layer in data.get("layers", [])]
        machine = data.get("machine")
        data["machine"] = MachineInfo.from_dict(machine) if machine is not None else None
        dense = data.get("dense_export")
        data["dense_export"] = DenseExportDifference(**dense) if dense is not None else None
        data.setdefault("evaluator_version", 1)
        return cls(**data)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> VariantReport:
        return cls.from_dict(json.loads(Path(path).read_text()))
