"""Deployment runtimes: a zoo model exported to ONNX / OpenVINO and run by ONNX Runtime / OpenVINO with
the torch model's call and outputs. `zoo.load(name, runtime=...)` and `zoo export --format` use it;
families say what exports through `Task.export_signature`."""
from zoo.runtimes.export import (
    EXPORT_VERSION, FORMATS, cached_export, export_onnx, export_openvino, weights_identity,
)
from zoo.runtimes.session import GRAPH_RUNTIMES, RUNTIMES, RuntimeModel, check_runtime, runtime_format
from zoo.runtimes.signature import GraphSignature, UnsupportedExportError, batch_axes

__all__ = [
    "EXPORT_VERSION", "FORMATS", "GRAPH_RUNTIMES", "GraphSignature", "RUNTIMES", "RuntimeModel",
    "UnsupportedExportError", "batch_axes", "check_runtime", "export_onnx", "export_openvino", "cached_export",
    "runtime_format", "weights_identity",
]
