"""Deployment runtimes (zoo.runtimes): exported graphs answer the torch model's call with its outputs.

Tolerances are the evaluator's own (zoo.runtimes.agreement): fp32 graphs within `FP32_RTOL` of the largest
output value, int8 QDQ graphs within `INT8_RTOL` relative RMS error of the zoo's fake-quant torch output.
OpenVINO must run here: a missing or broken OpenVINO fails these tests, it does not skip them.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import zoo
from zoo.compress.quantization import apply_int8_ptq
from zoo.models import build_model, get_entry
from zoo.runtimes import (
    GRAPH_RUNTIMES, GraphSignature, RuntimeModel, UnsupportedExportError, batch_axes, cached_export, runtime_format,
)
from zoo.runtimes.agreement import FP32_RTOL, INT8_RTOL, check_inputs, disagreement, relative_rms_error
from zoo.runtimes.int8 import FAKE_QUANT, integer_dot_product, integer_layers, int8_path
from zoo.runtimes.measure import measure_runtimes, relative_error, seeded_call, tensors_of
from zoo.tasks import task_of
from tiny_zoo import BASE, one_torch_thread, store_with_base


def timing_every_runtime(store):
    """`store` (the tests' SHORT options, torch latency only) measuring latency in every graph runtime too."""
    return dataclasses.replace(store, options=dataclasses.replace(store.options, graph_runtimes=None))


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    """`name`'s model with random weights and random BatchNorm statistics: timm zero-initializes the last
    BatchNorm of a residual block, which makes a random ResNet's residual branches constant (a graph that
    got them wrong would still agree)."""
    torch.manual_seed(seed)
    model = build_model(get_entry(name)).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.weight.data, module.bias.data = torch.rand(n) + 0.5, 0.2 * torch.randn(n)
            module.running_mean, module.running_var = 0.2 * torch.randn(n), torch.rand(n) + 0.5
    return model


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
    inputs = check_inputs(_inputs(name, 4), draws=2)
    assert disagreement(graph, model, inputs, int8=True) is None
    # the int8 rule is looser than the fp32 one, not blind: the graph of another int8 model fails it
    other = apply_int8_ptq(_model(name, seed=1), [torch.randn(8, *inputs[0][0].shape[1:])])
    assert relative_rms_error(seeded_call(graph, inputs[0]), seeded_call(other, inputs[0])) > 5 * INT8_RTOL
    assert "int8 graph" in disagreement(graph, other, inputs, int8=True)


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
    assert disagreement(graph, model, check_inputs(_inputs(name, 2)), int8=True) is None


def _scaled_first_conv(model: nn.Module, factor: float) -> nn.Module:
    """`model` (a copy) with its first convolution's weight scaled: a wrong graph that an all-zero input
    cannot see (a bias-free conv maps zeros to zeros whatever its weight)."""
    import copy

    model = copy.deepcopy(model)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.bias is None
    conv.weight.data.mul_(factor)
    return model


@pytest.mark.parametrize("runtime", GRAPH_RUNTIMES)
def test_a_wrong_graph_is_caught_where_a_zero_input_is_blind(runtime, tmp_path):
    name = "test_resnet.zoo_digits"
    model = _model(name)
    wrong = _graph(_scaled_first_conv(model, 1.5), name, runtime, tmp_path)
    example = task_of(get_entry(name)).example_input(get_entry(name))
    assert not example.any()  # the task's example is an all-zero image: it sees nothing wrong
    assert relative_error(seeded_call(wrong, (example,)), seeded_call(model, (example,))) <= FP32_RTOL
    inputs = check_inputs(example)
    assert len(inputs) == 3 and all(x[0].shape == example.shape and x[0].std() > 0.5 for x in inputs)
    assert check_inputs(example)[1][0].equal(inputs[1][0])  # deterministic by seed
    assert "fp32 graph" in disagreement(wrong, model, inputs, int8=False)
    assert disagreement(_graph(model, name, runtime, tmp_path / "right"), model, inputs, int8=False) is None


def test_check_inputs_keep_integer_inputs_in_the_example_range():
    ids = torch.tensor([[2, 7, 7, 7, 3]])
    drawn = [x[0] for x in check_inputs((ids, torch.ones(1, 5, dtype=torch.long)), draws=4)]
    assert all(x.dtype == torch.long and int(x.min()) >= 2 and int(x.max()) <= 7 for x in drawn)
    assert len({tuple(x.flatten().tolist()) for x in drawn}) > 1
    with pytest.raises(zoo.InvalidArgumentError):
        check_inputs(ids, draws=0)


def test_measure_runtimes_does_not_time_a_graph_that_disagrees(tmp_path):
    """A stale export under the model's name (another model's graph) is recorded, not timed."""
    name = "test_resnet.zoo_digits"
    entry = get_entry(name)
    task = task_of(entry)
    model, example = _model(name), task.example_input(entry)
    cached_export(_scaled_first_conv(model, 1.5), task.export_signature(entry), example, tmp_path, "onnx", "same")
    with one_torch_thread():
        result = measure_runtimes(model, task.export_signature(entry), example, torch_ms=1.0, export_root=tmp_path,
                                  weights_identity="same", quant=None, latency_seconds=0.01, threads=1,
                                  runtimes=("onnxruntime",))
    assert set(result.latency_ms) == {"torch"}
    assert "not timed" in result.errors["onnxruntime"]


class _ConvFeedingBothAddInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + torch.relu(y)


def test_openvino_computes_a_qdq_conv_feeding_an_add_at_any_batch(tmp_path):
    """OpenVINO 2026.4 miscomputes this pattern (~50 % off) when it compiles the graph with a dynamic batch
    axis; the runtime model compiles per static input shape (zoo.runtimes.session._OpenVino)."""
    torch.manual_seed(0)
    model = apply_int8_ptq(_ConvFeedingBothAddInputs().eval(), [torch.rand(4, 8, 4, 4) * 4])
    signature = GraphSignature(("x",), ("y",), batch_axes("x"))
    path = cached_export(model, signature, torch.rand(1, 8, 4, 4), tmp_path, "openvino", "conv-add")
    graph = RuntimeModel("openvino", path, signature, threads=1)
    for batch in (1, 3, 1):
        x = torch.rand(batch, 8, 4, 4) * 4
        assert relative_rms_error(seeded_call(graph, (x,)), seeded_call(model, (x,))) <= 1e-5


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
