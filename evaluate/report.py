"""What the evaluator measures for one variant: a dataclass kept as such from measurement to card."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.atomic import atomic_write_json
from zoo.errors import CheckpointError, UnknownNameError
from zoo.evaluate.machine import MachineInfo
from zoo.parsing import load_json

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
    def from_dict(cls, data: Any, where: str = "report") -> VariantReport:
        """A report from its JSON form, validated (`check_report`): CheckpointError naming `where` for a
        value of the wrong type or outside its range (a top-1 of 1.5, negative FLOPs, NaN latency)."""
        check_report(data, where)
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
        """The report in `path` (see `from_dict`); its bytes are not checked against any checksum here:
        a checkpoint's report is read through `zoo.compress.checkpoint.read_report`."""
        return cls.from_json(Path(path).read_bytes(), str(path))

    @classmethod
    def from_json(cls, raw: str | bytes, where: str = "report") -> VariantReport:
        return cls.from_dict(load_json(raw, what=where, error=CheckpointError), where)


# The schema of report.json --------------------------------------------------------------------------

_REQUIRED = ("name", "base_model", "task", "dataset", "split", "metrics", "metric_average", "flops_dense",
             "flops_sparse", "params_total", "params_nonzero", "bytes_on_disk", "latency_ms")


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_amount(v: Any) -> bool:
    """A finite number >= 0 (an int or a float, not a bool)."""
    return type(v) in (int, float) and math.isfinite(v) and v >= 0


def _optional(check):
    return lambda v: v is None or check(v)


def _mapping(key_check, value_check):
    return lambda v: isinstance(v, dict) and all(key_check(k) and value_check(x) for k, x in v.items())


def _is_step(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def _fields_ok(data: Any, cls: type, checks: dict[str, Any]) -> bool:
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return isinstance(data, dict) and required <= set(data) <= names and all(checks[k](v) for k, v in data.items())


_LAYER = {"name": _is_str, "op": _is_str, "dense": _is_count, "sparse": _is_count}
_DENSE_EXPORT = {"max_abs": _is_amount, "relative_rms": _is_amount, "inputs": _is_str}
_MACHINE = {**{key: _is_str for key in ("cpu", "isa", "torch_cpu_capability", "os", "arch", "python", "torch")},
            "threads": _is_count, "libraries": _mapping(_is_str, _is_str)}
_CHECKS: dict[str, Any] = {
    "name": _is_str, "base_model": _is_str, "task": _is_str, "dataset": _is_str, "split": _is_str,
    "metrics": _mapping(_is_str, lambda v: type(v) in (int, float) and math.isfinite(v)),
    "metric_average": _is_str, "flops_dense": _is_count, "flops_sparse": _is_count, "params_total": _is_count,
    "params_nonzero": _is_count, "bytes_on_disk": _is_count, "latency_ms": _is_amount,
    "sparsity": lambda v: _is_amount(v) and v <= 1, "quant": _optional(_is_str),
    "recipe": _optional(lambda v: isinstance(v, list) and all(_is_step(s) for s in v)),
    "layers": lambda v: isinstance(v, list) and all(_fields_ok(x, LayerFlops, _LAYER) for x in v),
    "flops_uncounted": _mapping(_is_str, _is_count),
    "machine": _optional(lambda v: _fields_ok(v, MachineInfo, _MACHINE)),
    "eval_data_missing": _optional(_is_str), "latency_by_runtime": _mapping(_is_str, _is_amount),
    "runtime_errors": _mapping(_is_str, _is_str), "int8_path": _optional(_is_str),
    "dense_export": _optional(lambda v: _fields_ok(v, DenseExportDifference, _DENSE_EXPORT)),
    "evaluator_version": lambda v: type(v) is int and v >= 1, "user_data": _optional(_is_step),
}


def check_report(data: Any, where: str = "report") -> None:
    """Refuses (CheckpointError naming `where`) a report that is not a JSON object of `VariantReport`'s
    fields with their types, or whose values are out of range: counts (FLOPs, parameters, bytes) are
    integers >= 0 with the non-zero ones at most the dense ones, latencies finite and >= 0, sparsity in
    [0, 1], metrics finite, and those a task reports as fractions (top-1, exact match) in [0, 1]."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} must hold a JSON object, got {type(data).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    unknown = sorted(str(key) for key in data if key not in _CHECKS)
    if missing or unknown:
        raise CheckpointError(f"{where}: " + "; ".join(
            ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"has unknown keys {unknown[:5]}"] if unknown else [])))
    bad = [key for key, value in data.items() if not _CHECKS[key](value)]
    if not bad and (data["flops_sparse"] > data["flops_dense"] or data["params_nonzero"] > data["params_total"]):
        bad = ["flops_sparse" if data["flops_sparse"] > data["flops_dense"] else "params_nonzero"]
    if not bad:
        bad = [f"metrics.{key}" for key, value in data["metrics"].items() if _is_fraction(key) and not 0 <= value <= 1]
    if bad:
        shown = ", ".join(f"{key}={_value(data, key)!r}"[:80] for key in bad[:4])
        raise CheckpointError(f"{where}: invalid or out-of-range {shown}")


def _is_fraction(key: str) -> bool:
    from zoo.tasks import metric_spec

    try:
        return metric_spec(key).unit == "fraction"
    except UnknownNameError:  # a metric no task here defines: its range is not known, only that it is finite
        return False


def _value(data: dict[str, Any], key: str) -> Any:
    return data["metrics"][key.split(".", 1)[1]] if key.startswith("metrics.") else data[key]
