"""Export of a zoo model to ONNX (torch's torch.export-based exporter, `dynamo=True`: the TorchScript one is
deprecated in torch 2.9+ and warns that it will be removed) and to OpenVINO IR (`openvino.convert_model`
of the ONNX file, saved in fp32: no fp16 compression). Quantized variants export
as QDQ graphs where their arithmetic fits int8, with dequantized fp32 weights where it does not
(`zoo.runtimes.qdq`).

Files are written atomically (a reader never sees half a file), and `export_key` names them by what
they depend on: the weights' SHA-256, the exporter's and the runtime's versions, and this module's
`EXPORT_VERSION`, so an upgrade or a new checkpoint never reuses a stale graph.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from zoo.atomic import atomic_path, fsync_path
from zoo.errors import InvalidArgumentError
from zoo.runtimes.qdq import has_quantized_layers, to_qdq
from zoo.runtimes.signature import GraphSignature, UnsupportedExportError

# Bumped when an export changes for the same weights and library versions (1: first; 2: QAT layers as QDQ or
# dequantized fp32 weights, not traced through their fake-quant).
EXPORT_VERSION = 2
FORMATS = ("onnx", "openvino")
ONNX_OPSET = 18
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.xml"  # and model.bin beside it
_EXPORT_BATCH = 2  # torch.export specializes axes of size 1: trace with 2 so that the batch axis stays dynamic


def library_versions(fmt: str) -> dict[str, str]:
    """The versions an export in `fmt` depends on (part of its cache key)."""
    check_format(fmt)
    names = ["torch", "onnx", "onnxscript"] + (["openvino"] if fmt == "openvino" else [])
    return {name: metadata.version(name) for name in names}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def export_key(weights_identity: str, fmt: str, signature: GraphSignature) -> str:
    """A short digest of everything an exported file depends on."""
    parts = [weights_identity, fmt, str(EXPORT_VERSION), repr(signature)]
    parts += [f"{name}={version}" for name, version in sorted(library_versions(fmt).items())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _batched(tensor: torch.Tensor, axes: dict[int, str]) -> torch.Tensor:
    if 0 not in axes or tensor.shape[0] != 1:
        return tensor
    return torch.cat([tensor] * _EXPORT_BATCH)


def export_onnx(model: nn.Module, signature: GraphSignature, example: torch.Tensor | tuple[torch.Tensor, ...],
                path: str | os.PathLike[str]) -> Path:
    """Writes `model` (in eval mode; quantized layers as `zoo.runtimes.qdq.to_qdq` makes them) as one ONNX
    file at `path`, atomically."""
    graph = signature.graph_module(to_qdq(model) if has_quantized_layers(model) else model).eval()
    inputs = signature.example_inputs(example)
    if len(inputs) != len(signature.input_names):
        raise InvalidArgumentError(f"the signature names {len(signature.input_names)} inputs, the example has "
                                   f"{len(inputs)}")
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes, traced = [], []
    for name, tensor in zip(signature.input_names, inputs):
        axes = signature.dynamic_axes.get(name, {})
        dynamic_shapes.append({axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in axes.items()}
                              or None)
        traced.append(_batched(tensor, axes))
    target = Path(path)
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes: not the user's business
        try:
            program = torch.onnx.export(graph, tuple(traced), dynamo=True, input_names=list(signature.input_names),
                                        output_names=list(signature.output_names), opset_version=ONNX_OPSET,
                                        dynamic_shapes=tuple(dynamic_shapes), external_data=False, verbose=False)
        except Exception as err:  # the exporter raises many types; say which model and why, typed
            raise UnsupportedExportError(f"torch.onnx.export failed: {type(err).__name__}: "
                                         f"{str(err).splitlines()[0] if str(err) else ''}") from err
        program.save(str(tmp), external_data=False)
    return target


def export_openvino(onnx_path: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Converts an ONNX file to OpenVINO IR (`path` = the .xml; the .bin beside it), fp32, atomically:
    both are written in a temporary folder and moved in, the .bin first, so an .xml is never there
    without its weights."""
    import openvino as ov

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp"))
    try:
        tmp = tmp_dir / target.name
        ov.save_model(ov.convert_model(str(onnx_path)), str(tmp), compress_to_fp16=False)
        for suffix in (".bin", ".xml"):
            fsync_path(tmp.with_suffix(suffix))
            os.replace(tmp.with_suffix(suffix), target.with_suffix(suffix))
        fsync_path(target.parent)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def exported_file(folder: Path, fmt: str) -> Path:
    """The file of an export in `fmt` inside its cache folder."""
    return folder / (ONNX_FILE if check_format(fmt) == "onnx" else OPENVINO_FILE)


def cached_export(model: nn.Module, signature: GraphSignature, example: torch.Tensor | tuple[torch.Tensor, ...],
                  root: str | os.PathLike[str], fmt: str, weights_identity: str) -> Path:
    """The export of `model` in `fmt` under `root` (`<root>/<fmt>-<export_key>/`), made now unless it is
    there: the folder's name says it was exported from the same weights by the same versions. OpenVINO
    IR is converted from the ONNX export (itself cached)."""
    folder = Path(root) / f"{check_format(fmt)}-{export_key(weights_identity, fmt, signature)}"
    path = exported_file(folder, fmt)
    if path.is_file():
        return path
    if fmt == "onnx":
        return export_onnx(model, signature, example, path)
    return export_openvino(cached_export(model, signature, example, root, "onnx", weights_identity), path)


def weights_identity(folder: str | os.PathLike[str]) -> str:
    """What names a checkpoint folder's weights: the SHA-256 its zoo config records, else (a plain
    upstream snapshot, content-addressed by the Hub cache) the SHA-256 of its safetensors file."""
    from zoo.compress.checkpoint import FORMAT_NAME, WEIGHTS_FILE, declared_format, read_config, sha256_file

    folder = Path(folder)
    if declared_format(folder) == FORMAT_NAME:
        config = read_config(folder)  # a zoo checkpoint: checked whole
        if WEIGHTS_FILE in config.get("files", {}):
            return config["files"][WEIGHTS_FILE]["sha256"]
    if (folder / WEIGHTS_FILE).is_file():
        return sha256_file(folder / WEIGHTS_FILE)
    raise InvalidArgumentError(f"{folder} holds no {WEIGHTS_FILE} to name an export by")

