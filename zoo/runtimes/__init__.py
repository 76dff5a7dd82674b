"""Deployment runtimes: a zoo model exported to ONNX / OpenVINO and run by ONNX Runtime / OpenVINO with
the torch model's call and outputs. `zoo.load(name, runtime=...)` and `zoo export --format` use it;
families say what exports through `Task.export_signature`. Names are imported on first use."""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EXPORT_VERSION": "export", "FORMATS": "export", "cached_export": "export", "export_onnx": "export",
    "export_openvino": "export", "weights_identity": "export",
    "GRAPH_RUNTIMES": "session", "RUNTIMES": "session", "RuntimeModel": "session", "check_runtime": "session",
    "runtime_format": "session",
    "GraphSignature": "signature", "UnsupportedExportError": "signature", "batch_axes": "signature",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"zoo.runtimes.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo.runtimes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
