"""Honest int8: does this CPU have integer dot-product instructions, and did a runtime use integer kernels?

An int8 variant is faster only where a runtime runs its convolutions and matrix products on integer
kernels, and those pay on CPUs with integer dot-product instructions (x86: AVX-512 VNNI or AVX-VNNI,
AMX-INT8). Both are read here, never assumed: the flags from /proc/cpuinfo (zoo.evaluate.machine), the
kernels from the graph the runtime actually built.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from zoo.evaluate.machine import integer_dot_product  # noqa: F401  (re-exported: the flags live there)
from zoo.runtimes.session import RuntimeModel

# Layer types counted, and the node types that compute them on integer inputs.
_OPENVINO_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"}
_OPENVINO_INTEGER = {"u8", "i8"}
_ORT_FLOAT = {"Conv", "FusedConv", "NchwcConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "ConvTranspose"}
_ORT_INTEGER = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "QGemm",
                "DynamicQuantizeMatMul", "QAttention", "MatMulNBits"}
FAKE_QUANT = "fake-quant (no integer kernel used)"


def integer_layers(model: RuntimeModel) -> tuple[int, int]:
    """(layers run on integer kernels, conv / matmul layers in all) in the graph `model`'s runtime built."""
    if model.runtime == "openvino":
        counts: Counter[bool] = Counter()
        for op in model._session.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in _OPENVINO_LAYERS:
                counts[info["runtimePrecision"].astype(str).lower() in _OPENVINO_INTEGER] += 1
        return counts[True], counts[True] + counts[False]
    return _ort_integer_layers(model.path, model.threads)


def _ort_integer_layers(path: Path, threads: int) -> tuple[int, int]:
    """ONNX Runtime fuses QDQ patterns at its "extended" level (later levels change only the layout):
    the graph it writes at that level says which layers run on integer kernels."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    integer = sum(n for op, n in ops.items() if op in _ORT_INTEGER)
    return integer, integer + sum(n for op, n in ops.items() if op in _ORT_FLOAT)


def int8_path(runtime: str, integer: int, total: int, instructions: str | None,
              low_bit: Mapping[str, int] | None = None, *, qdq: bool = True) -> str:
    """What produced a quantized variant's numbers, in words, e.g. "openvino QDQ (VNNI): 21/21 layers on
    integer kernels", "onnxruntime QDQ (no VNNI/AMX): 0/21 layers on integer kernels (dequantized to
    fp32)" or, for torch, `FAKE_QUANT`. `qdq`: the graph has int8 (QDQ) layers. `low_bit` counts the
    layers exported with dequantized fp32 weights by why (`zoo.runtimes.qdq.low_bit_layers`), named after
    the count, e.g. "onnxruntime (VNNI): 0/3 layers on integer kernels; 3 layers: 4-bit weights
    dequantized to fp32, 8-bit inputs rounded in fp32 (no 4-bit kernel in this runtime)"."""
    if runtime == "torch":
        return FAKE_QUANT
    low_bit = {why: n for why, n in (low_bit or {}).items() if n}
    isa = instructions or "no VNNI/AMX"
    tail = " (dequantized to fp32)" if qdq and not integer else ""
    text = f"{runtime}{' QDQ' if qdq else ''} ({isa}): {integer}/{total} layers on integer kernels{tail}"
    for why, n in sorted(low_bit.items()):
        text += f"; {n} layer{'' if n == 1 else 's'}: {why}"
    return text
