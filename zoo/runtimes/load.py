"""`zoo.load(name, runtime=...)`: the loaded torch model's graph in ONNX Runtime or OpenVINO."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from zoo.models import get_entry
from zoo.runtimes.export import cached_export, weights_identity
from zoo.runtimes.session import RuntimeModel, check_runtime, runtime_format
from zoo.tasks import task_of

EXPORTS_FOLDER = "exports"
# Sources whose folder is the zoo's own variant cache: exports go beside the checkpoint. A hub snapshot
# or an upstream download is never written into; their exports go to the variant cache under the name.
_CACHE_SOURCES = ("cache", "derived", "trained")


def export_root(model: nn.Module, cache_root: Path) -> Path:
    """Where the exports of a model `zoo.load` returned are cached."""
    if model.zoo.source in _CACHE_SOURCES:
        return Path(model.zoo.path) / EXPORTS_FOLDER
    return Path(cache_root) / model.zoo.name / EXPORTS_FOLDER


def export_model(model: nn.Module, fmt: str, cache_root: Path) -> Path:
    """The cached export in `fmt` ("onnx" or "openvino") of a model `zoo.load` returned, made now if absent.
    Raises `UnsupportedExportError` for a family whose models do not export, saying why."""
    entry = get_entry(model.zoo.base_model)
    task = task_of(entry)
    signature = task.export_signature(entry)
    return cached_export(model, signature, task.example_input(entry), export_root(model, cache_root), fmt,
                         weights_identity(model.zoo.path))


def with_runtime(model: nn.Module, runtime: str, cache_root: Path) -> nn.Module:
    """`model` itself for "torch", else a `RuntimeModel` of its export with `zoo` metadata saying the runtime."""
    if check_runtime(runtime) == "torch":
        return model
    entry = get_entry(model.zoo.base_model)
    path = export_model(model, runtime_format(runtime), cache_root)
    wrapped = RuntimeModel(runtime, path, task_of(entry).export_signature(entry))
    wrapped.zoo = dataclasses.replace(model.zoo, runtime=runtime)
    return wrapped
