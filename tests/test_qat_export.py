"""QAT variants in the runtimes and as dense files: 8-bit weights with 8-bit inputs export as int8 QDQ (and run
on integer kernels where the runtime has them), lower bit widths as dequantized fp32 weights with their inputs
rounded by plain ops; the measured path says which; `zoo export`'s dense file has exactly the plain model's
keys, and the evaluator measures how its outputs differ from the quantized model's."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from zoo.compress import RecipeContext
from zoo.compress.checkpoint import export_dense, save_checkpoint
from zoo.compress.dense import dense_model, dense_state_dict
from zoo.compress.lowbit import apply_qat
from zoo.compress.quantization import apply_int8_ptq
from zoo.evaluate import VariantReport
from zoo.evaluate.report import DenseExportDifference
from zoo.evaluation import dense_export_difference
from zoo.runtimes import GRAPH_RUNTIMES, GraphSignature, RuntimeModel, batch_axes, cached_export, runtime_format
from zoo.runtimes.agreement import FP32_RTOL, disagreement, relative_error, seeded_call
from zoo.runtimes.int8 import int8_path, integer_dot_product, integer_layers
from zoo.runtimes.measure import measure_runtimes
from zoo.runtimes.qdq import has_int8_layers, low_bit_layers, quantizes_inputs
from tiny_zoo import one_torch_thread

SIGNATURE = GraphSignature(("x",), ("y",), batch_axes("x"))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 3))


def _qat(arch: str, **settings) -> tuple[nn.Module, torch.Tensor]:
    """A tiny MLP (signed inputs) or CNN after one epoch of QAT with `settings`, in eval mode, and its data."""
    torch.manual_seed(0)
    model, x = (_mlp(), torch.randn(128, 8)) if arch == "mlp" else (_cnn(), torch.randn(64, 3, 8, 8))
    y = (x.reshape(len(x), -1)[:, :4].sum(dim=1) > 0).long()
    context = RecipeContext(
        train_batches=lambda epoch: [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)],
        loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        calibration_batches=lambda: (x[i:i + 32] for i in range(0, len(x), 32)), progress=False,
    )
    apply_qat(model, context, epochs=1, lr=0.05, **settings)
    return model.eval(), x


def _graph(model: nn.Module, x: torch.Tensor, runtime: str, folder) -> RuntimeModel:
    path = cached_export(model, SIGNATURE, x[:1], folder, runtime_format(runtime), "tiny")
    return RuntimeModel(runtime, path, SIGNATURE, threads=1)


def _onnx_graph(folder):
    import onnx

    return onnx.load(str(next(folder.glob("onnx-*/model.onnx"))))


# Integer path: 8-bit weights, 8-bit inputs ----------------------------------------------------------

@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_w8a8_qat_exports_as_qdq_and_agrees_in_both_runtimes(arch, granularity, tmp_path):
    import onnx

    model, x = _qat(arch, bits_w=8, bits_a=8, granularity=granularity)
    assert has_int8_layers(model) and quantizes_inputs(model) and not low_bit_layers(model)
    layers = 2 if arch == "mlp" else 3
    for runtime in GRAPH_RUNTIMES:
        graph = _graph(model, x, runtime, tmp_path)
        integer, total = integer_layers(graph)  # before any call: the graph as measure_runtimes reads it
        assert disagreement(graph, model, [(x[:16],), (x[16:17],)], int8=True) is None
        text = int8_path(runtime, integer, total, integer_dot_product(), low_bit_layers(model))
        assert total == layers, (runtime, integer, total)
        assert text.startswith(f"{runtime} QDQ (") and f": {integer}/{total} layers" in text
        if runtime == "openvino" and integer_dot_product() is not None:
            assert integer == total  # OpenVINO's low-precision path on a CPU with VNNI / AMX
    ops = [node.op_type for node in _onnx_graph(tmp_path).graph.node]
    assert ops.count("QuantizeLinear") == layers and ops.count("DequantizeLinear") == 2 * layers
    assert "Round" not in ops
    inits = _onnx_graph(tmp_path).graph.initializer
    assert sum(init.data_type == onnx.TensorProto.INT8 and len(init.dims) >= 2 for init in inits) == layers
    if arch == "mlp":  # the MLP's input is signed: int8 with codes in [-127, 127], clamped before quantizing
        assert ops[0] == "Clip" and "Clip" in ops


@pytest.mark.parametrize("signed", [False, True])
def test_int8_input_grid_rounds_half_to_even_and_clamps_like_torch(signed, tmp_path):
    """alpha = 127.5 (unsigned, 255 levels) or 63.5 (signed, 127 levels): step 0.5, so x = +-0.25 and +-0.75
    are exact ties (-> 0 and +-1.0 by half to even; half away from zero would give +-0.5), and +-1000 lands
    on the grid's ends (+-63.5 signed: code -127, where int8's saturation alone gives -128)."""
    model, _ = _qat("mlp", bits_w=8, bits_a=8)
    layer = model[0]
    layer.act_alpha.fill_(63.5 if signed else 127.5)
    layer.act_signed.fill_(signed)
    x = torch.tensor([[0.25, -0.25, 0.75, -0.75, 1000.0, -1000.0, 2.2, -2.2]])
    if signed:
        rounded = torch.tensor([[0.0, 0.0, 1.0, -1.0, 63.5, -63.5, 2.0, -2.0]])
    else:
        rounded = torch.tensor([[0.0, 0.0, 1.0, 0.0, 127.5, 0.0, 2.0, 0.0]])
    want = F.linear(rounded, layer.weight, layer.bias)
    with torch.no_grad():
        assert torch.equal(layer(x), want)
    for runtime in GRAPH_RUNTIMES:
        got = _graph(nn.Sequential(layer), x, runtime, tmp_path / f"{signed}")(x)
        assert relative_error([got], [want]) <= 1e-5, runtime  # integer kernels: float noise, never a step


# Dequantized path: lower bit widths -------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "why"), [
    (dict(bits_w=4, bits_a=8, granularity="group", group_size=4), "4-bit weights dequantized to fp32, 8-bit inputs "
                                                                   "rounded in fp32 (no 4-bit kernel in this runtime)"),
    (dict(bits_w=4, bits_a=4), "4-bit weights dequantized to fp32, 4-bit inputs rounded in fp32"),
    (dict(bits_w=2, bits_a=32), "2-bit weights dequantized to fp32, inputs not quantized"),
])
def test_low_bit_qat_exports_dequantized_and_agrees_under_the_fp32_rule(settings, why, tmp_path):
    import onnx

    model, x = _qat("mlp", **settings)
    assert not has_int8_layers(model) and low_bit_layers(model) == {low_bit_layers(model).most_common(1)[0][0]: 2}
    assert quantizes_inputs(model) == (settings["bits_a"] != 32)
    for runtime in GRAPH_RUNTIMES:
        graph = _graph(model, x, runtime, tmp_path)
        integer, total = integer_layers(graph)
        assert disagreement(graph, model, [(x[:16],), (x[16:17],)], int8=False) is None  # the fp32 rule
        text = int8_path(runtime, integer, total, integer_dot_product(), low_bit_layers(model),
                         qdq=has_int8_layers(model))
        assert (integer, total) == (0, 2)
        assert text.startswith(f"{runtime} (") and "QDQ" not in text
        assert f"0/2 layers on integer kernels; 2 layers: {why}" in text
    graph = _onnx_graph(tmp_path).graph
    ops = [node.op_type for node in graph.node]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert ops.count("Round") == (2 if settings["bits_a"] != 32 else 0)
    assert not any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)


def test_measure_runtimes_times_a_low_bit_variant_and_names_its_path(tmp_path):
    model, x = _qat("cnn", bits_w=4, bits_a=4)
    with one_torch_thread():
        result = measure_runtimes(model, SIGNATURE, x[:1], torch_ms=1e9, export_root=tmp_path,
                                  weights_identity="w4a4", quant="w4a4", latency_seconds=0.01, threads=1,
                                  data_inputs=[(x[:2],)])
    assert result.errors == {} and set(result.latency_ms) == {"torch", *GRAPH_RUNTIMES}
    fastest = min(result.latency_ms, key=result.latency_ms.get)  # torch was given 1e9 ms: a runtime is fastest
    assert result.int8_path.startswith(f"{fastest} (")
    assert result.int8_path.endswith("0/3 layers on integer kernels; 3 layers: 4-bit weights dequantized to fp32, "
                                     "4-bit inputs rounded in fp32 (no 4-bit kernel in this runtime)")


# Dense export -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "inputs_quantized"), [
    (lambda: _qat("cnn", bits_w=4, bits_a=4), True),
    (lambda: _qat("cnn", bits_w=8, bits_a=8), True),
    (lambda: _qat("cnn", bits_w=2, bits_a=32, granularity="group", group_size=1, symmetric=False), False),
    (lambda: _qat("mlp", bits_w=4, bits_a=32), False),
    (lambda: _int8_ptq(), True),
])
def test_dense_export_has_the_plain_keys_and_records_its_difference(make, inputs_quantized, tmp_path):
    model, x = make()
    plain = _mlp() if isinstance(model[0], nn.Linear) and model[0].in_features == 8 else _cnn()
    folder = save_checkpoint(tmp_path / "ck", model.state_dict(), config={
        "name": "tiny", "base_model": "tiny", "arch": "tiny", "model_kwargs": {}, "recipe": None})
    exported = load_file(str(export_dense(folder, tmp_path / "dense.safetensors")))
    assert sorted(exported) == sorted(plain.state_dict())
    plain.load_state_dict(exported, strict=True)
    plain.eval()
    dense = dense_model(model)
    assert sorted(dense.state_dict()) == sorted(plain.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(x), dense(x)), "dense_model is what the exported file loads into"
        gap = (plain(x[:64]) - model(x[:64])).abs().max().item()
    diff = dense_export_difference(model, x, x[:1])
    assert diff.inputs == "64 evaluation examples" and diff.max_abs == pytest.approx(gap, abs=0)
    if inputs_quantized:
        assert diff.max_abs > 0 and diff.relative_rms > 0
    else:
        assert diff.max_abs == 0 and diff.relative_rms == 0  # weight-only: the dense file computes the same
    seeded = dense_export_difference(model, None, x[:1])
    assert seeded.inputs.startswith("3 seeded random inputs") and (seeded.max_abs > 0) == inputs_quantized


def _int8_ptq() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    return apply_int8_ptq(_cnn().eval(), [x[:32], x[32:]]), x


def test_dense_state_dict_drops_only_quantized_layers_buffers():
    sd = {"fc.weight": torch.ones(2, 2), "fc.weight_scale": torch.ones(2), "fc.act_bits": torch.tensor(4),
          "fc.act_alpha": torch.tensor(1.0), "fc.act_signed": torch.tensor(False),
          "pact.act_alpha": torch.tensor(3.0), "act_alpha": torch.tensor(2.0)}  # a plain model's own buffers
    assert sorted(dense_state_dict(sd)) == ["act_alpha", "fc.weight", "pact.act_alpha"]
    assert dense_export_difference(_mlp(), None, torch.zeros(1, 8)) is None  # nothing quantized: no difference


def test_the_card_says_how_the_dense_export_differs():
    from zoo.model_cards.card import DENSE_EXPORT_ROW, _dense_export_rows

    report = VariantReport(name="t_w4a4", base_model="t", task="image-classification", dataset="d", split="test",
                           metrics={}, metric_average="macro", flops_dense=1, flops_sparse=1, params_total=1,
                           params_nonzero=1, bytes_on_disk=1, latency_ms=1.0, quant="w4a4",
                           dense_export=DenseExportDifference(0.0123, 0.0045, "64 evaluation examples"))
    again = VariantReport.from_dict(report.to_dict())
    assert again.dense_export == report.dense_export
    assert _dense_export_rows(again) == [(DENSE_EXPORT_ROW, "outputs differ from this model's by up to 0.0123 "
                                          "(relative RMS 0.45 %) on 64 evaluation examples: the dense file keeps "
                                          "the dequantized weights and drops the input quantization")]
    same = VariantReport.from_dict({**report.to_dict(), "dense_export": {"max_abs": 0.0, "relative_rms": 0.0,
                                                                        "inputs": "3 inputs"}})
    assert "the same outputs as this model on 3 inputs" in _dense_export_rows(same)[0][1]
    unrecorded = VariantReport.from_dict({**report.to_dict(), "dense_export": None})
    assert _dense_export_rows(unrecorded)[0][1] == "not recorded"
