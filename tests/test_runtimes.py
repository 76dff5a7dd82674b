"""Deployment runtimes (zoo.runtimes): exported graphs answer the torch model's call with its outputs.

Tolerances, from measurement on tiny random-weight entries (fp32 graphs agree to ~1e-7 relative here):
fp32 graphs within `FP32_RTOL` of the largest output value; the int8 QDQ graph in ONNX Runtime within
`INT8_RTOL` of the zoo's fake-quant torch output (same grids and rounding: measured ~1e-7). OpenVINO must
run here: a missing or broken OpenVINO fails these tests, it does not skip them.
"""
from __future__ import annotations

import dataclasses
import pytest
import torch

import zoo
from zoo.compress.quantization import apply_int8_ptq
from zoo.models import build_model, get_entry
from zoo.runtimes import GRAPH_RUNTIMES, RuntimeModel, UnsupportedExportError, cached_export, runtime_format
from zoo.runtimes.int8 import FAKE_QUANT, integer_dot_product, integer_layers, int8_path
from zoo.runtimes.measure import relative_error, seeded_call, tensors_of
from zoo.tasks import task_of
from tiny_zoo import BASE, one_torch_thread, store_with_base


def timing_every_runtime(store):
    """`store` (the tests' SHORT options, torch latency only) measuring latency in every graph runtime too."""
    return dataclasses.replace(store, options=dataclasses.replace(store.options, graph_runtimes=None))

FP32_RTOL = 1e-4
INT8_RTOL = 1e-4


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(get_entry(name)).eval()


def _graph(model, name, runtime, folder):
    entry = get_entry(name)
    task = task_of(entry)
    signature = task.export_signature(entry)
    path = cached_export(model, signature, task.example_input(entry), folder, runtime_format(runtime), "weights-" + name)
    return RuntimeModel(runtime, path, signature, threads=1)


def _inputs(name: str, batch: int) -> tuple[torch.Tensor, ...]:
    """The task's example input with `batch` rows of random content (ids kept in the vocabulary)."""
    example = task_of(get_entry(name)).example_input(get_entry(name))
    example = example if isinstance(example, tuple) else (example,)
    generator = torch.Generator().manual_seed(1)
    out = []
    for tensor in example:
        shape = (batch, *tensor.shape[1:])
        if tensor.dtype == torch.long:
            out.append(torch.randint(5, int(get_entry(name).input.vocab_size), shape, generator=generator))
        else:
            out.append(torch.rand(shape, generator=generator))
    return tuple(out)


@pytest.mark.parametrize("runtime", GRAPH_RUNTIMES)
@pytest.mark.parametrize("name", ["test_resnet.zoo_digits", "test_mcbert.zoo_pydoc_ft_stdlib", "test_bert.zoo_pydoc",
                                  "test_irn.zoo_skimage", "test_ilc.zoo_skimage"])
def test_fp32_graph_agrees_with_torch(name, runtime, tmp_path):
    model = _model(name)
    graph = _graph(model, name, runtime, tmp_path)
    for batch in (1, 3):  # the batch axis is dynamic: the graph was traced at another size
        inputs = _inputs(name, batch)
        want, got = seeded_call(model, inputs, seed=7), seeded_call(graph, inputs, seed=7)
        assert [t.shape for t in got] == [t.shape for t in want]
        assert relative_error(got, want) <= FP32_RTOL
    assert type(graph(*_inputs(name, 1))) is type(model(*_inputs(name, 1)))  # the same output type


def test_graph_reproduces_a_seeded_draw_and_differs_for_another(tmp_path):
    """IRN samples z: the runtime model draws it in torch from the caller's generator, as torch does."""
    name = "test_irn.zoo_skimage"
    model, x = _model(name), _inputs(name, 2)[0]
    graph = _graph(model, name, "onnxruntime", tmp_path)
    same = graph(x, generator=torch.Generator().manual_seed(3)).hr
    assert relative_error([same], [model(x, generator=torch.Generator().manual_seed(3)).hr]) <= FP32_RTOL
    assert not torch.equal(same, graph(x, generator=torch.Generator().manual_seed(4)).hr)


def _int8(name: str) -> torch.nn.Module:
    model = _model(name)
    shape = _inputs(name, 8)[0].shape
    return apply_int8_ptq(model, [torch.rand(shape, generator=torch.Generator().manual_seed(i)) for i in range(2)])


def test_int8_exports_as_qdq_and_agrees_with_fake_quant(tmp_path):
    import onnx

    name = "test_resnet.zoo_digits"
    model = _int8(name)
    graph = _graph(model, name, "onnxruntime", tmp_path)
    ops = [node.op_type for node in onnx.load(graph.path).graph.node]
    convs = sum(op in ("Conv", "Gemm", "MatMul") for op in ops)
    assert ops.count("QuantizeLinear") == convs  # every layer's input: quantized with the zoo's scale
    assert ops.count("DequantizeLinear") == 2 * convs  # ... and dequantized, and so is every int8 weight
    weights = {init.name: init for init in onnx.load(graph.path).graph.initializer}
    assert any(init.data_type == onnx.TensorProto.INT8 for init in weights.values())
    assert not any(init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 4 for init in weights.values())
    x = _inputs(name, 4)
    assert relative_error(seeded_call(graph, x), seeded_call(model, x)) <= INT8_RTOL
    # and it is not the fp32 model: fake-quant changed the outputs
    fp32 = _model(name)
    assert relative_error(seeded_call(fp32, x), seeded_call(model, x)) > 10 * INT8_RTOL


def test_openvino_runs_int8_layers_on_integer_kernels_where_the_cpu_has_them(tmp_path):
    name = "test_resnet.zoo_digits"
    model = _int8(name)
    graph = _graph(model, name, "openvino", tmp_path)
    integer, total = integer_layers(graph)
    assert total > 0
    fp32_integer, _ = integer_layers(_graph(_model(name), name, "openvino", tmp_path / "fp32"))
    assert fp32_integer == 0
    if integer_dot_product() is not None:  # OpenVINO's low-precision path needs no VNNI, but say it here
        assert integer == total
    assert relative_error(seeded_call(graph, _inputs(name, 2)), seeded_call(model, _inputs(name, 2))) <= 1e-3


def test_integer_dot_product_flags_and_int8_path_words():
    assert integer_dot_product({"avx2", "avx512f", "avx512_vnni"}) == "VNNI"
    assert integer_dot_product({"avx2", "avx_vnni"}) == "VNNI"
    assert integer_dot_product({"avx512_vnni", "amx_int8"}) == "AMX"
    assert integer_dot_product({"avx2", "fma"}) is None
    assert int8_path("torch", 0, 0, "VNNI") == FAKE_QUANT
    assert int8_path("openvino", 21, 21, "VNNI") == "openvino QDQ (VNNI): 21/21 layers on integer kernels"
    assert int8_path("onnxruntime", 0, 21, None).endswith("0/21 layers on integer kernels (dequantized to fp32)")


@pytest.mark.parametrize("name, reason", [("transformer_tiny.zoo_numbers_tiny", "beam search"),
                                          ("test_wavernn.zoo_espeak", "sampling loop"),
                                          ("test_mcbert.zoo_pydoc", "multinomial")])
def test_families_that_do_not_export_say_why(name, reason):
    entry = get_entry(name)
    with pytest.raises(UnsupportedExportError, match=reason):
        task_of(entry).export_signature(entry)


def test_tensors_of_flattens_outputs():
    a, b = torch.ones(1), torch.zeros(2)
    assert [t.shape for t in tensors_of((a, [b]))] == [(1,), (2,)]
    assert relative_error([a], [a, b]) == float("inf")


def test_load_with_runtime_caches_the_export_and_reports_latency_per_runtime(tmp_path_factory, tmp_path):
    store = timing_every_runtime(store_with_base(tmp_path_factory, tmp_path))
    with one_torch_thread():
        model = zoo.load(BASE, store=store, progress=False)
        report = model.zoo.report
        x = _inputs(BASE, 2)
        for runtime in GRAPH_RUNTIMES:
            graph = zoo.load(BASE, store=store, progress=False, runtime=runtime)
            assert graph.zoo.runtime == runtime and graph.zoo.name == model.zoo.name
            assert graph.path.is_relative_to(model.zoo.path / "exports")
            assert relative_error(seeded_call(graph, x), seeded_call(model, x)) <= FP32_RTOL
            again = zoo.load(BASE, store=store, progress=False, runtime=runtime)
            assert again.path == graph.path and again.path.stat().st_mtime_ns == graph.path.stat().st_mtime_ns
    assert model.zoo.runtime == "torch"
    # the cached base's report was measured by this evaluator: torch and both runtimes, no int8 path
    assert report.latency_by_runtime["torch"] == report.latency_ms
    assert set(report.latency_by_runtime) == {"torch", *GRAPH_RUNTIMES}, report.runtime_errors
    assert all(ms > 0 for ms in report.latency_by_runtime.values()) and report.int8_path is None
    with pytest.raises(zoo.InvalidArgumentError, match="runtime"):
        zoo.load(BASE, store=store, runtime="tensorrt")


def test_int8_variant_report_names_its_int8_path(tmp_path_factory, tmp_path):
    store = timing_every_runtime(store_with_base(tmp_path_factory, tmp_path))
    with one_torch_thread():
        report = zoo.load(BASE, quant="int8", store=store, progress=False).zoo.report
    fastest = min(report.latency_by_runtime, key=report.latency_by_runtime.get)
    assert report.int8_path is not None
    assert report.int8_path == FAKE_QUANT if fastest == "torch" else report.int8_path.startswith(f"{fastest} QDQ")
