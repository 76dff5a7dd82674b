"""Tests of the evaluator's measuring functions: FLOPs, parameters, latency, accuracy, Pareto front, the
machine, and the report that holds them."""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from importlib import metadata

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import flop_registry

import zoo.evaluate.flops as flops
import zoo.evaluate.machine as machine
from zoo.compress.checkpoint import checkpoint_bytes, save_checkpoint
from zoo.errors import InvalidArgumentError
from zoo.evaluate import (
    count_flops,
    count_parameters,
    evaluate_classifier,
    measure_latency,
    pareto_front,
)
from zoo.evaluate.machine import MachineInfo, cpu_flags, cpu_name, current_machine, isa_level
from zoo.evaluate.report import EVALUATOR_VERSION, LayerFlops, VariantReport
from zoo.evaluation import measure_variant
from zoo.models import build_model, get_entry
from zoo.tasks import task_of


def _zero_first(weight: torch.Tensor, k: int) -> None:
    """Set the first k elements of `weight` (flattened) to zero; make sure no other element is zero."""
    with torch.no_grad():
        weight[weight == 0] = 0.5
        weight.view(-1)[:k] = 0


# FLOPs -------------------------------------------------------------------------------------------

def test_conv_counts_two_flops_per_mac_and_drops_the_macs_of_zeroed_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size=3)  # no padding: each weight does exactly 8 x 8 MACs on 10 x 10
    _zero_first(conv.weight, 0)
    report = count_flops(conv, torch.randn(1, 3, 10, 10))
    macs = 4 * 3 * 3 * 3 * 8 * 8
    assert report.dense == report.sparse == 2 * macs
    _zero_first(conv.weight, 5)
    report = count_flops(conv, torch.randn(1, 3, 10, 10))
    assert report.dense == 2 * macs
    assert report.sparse == 2 * (macs - 5 * 8 * 8)
    assert [(layer.name, layer.op) for layer in report.layers] == [("", "aten.convolution")]


def test_depthwise_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, kernel_size=3, groups=8, bias=False)
    _zero_first(conv.weight, 9)  # the whole filter of channel 0
    report = count_flops(conv, torch.randn(1, 8, 10, 10))
    macs = 8 * 3 * 3 * 8 * 8
    assert report.dense == 2 * macs
    assert report.sparse == 2 * (macs - 9 * 8 * 8)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(4, 5), (4, 6, 5)])
def test_linear_is_counted_at_batch_one(bias, shape):
    torch.manual_seed(0)
    linear = nn.Linear(5, 7, bias=bias)
    _zero_first(linear.weight, 3)
    report = count_flops(linear, torch.randn(*shape))  # batch 4: counted for its first example only
    rows = 1 if len(shape) == 2 else shape[1]
    assert report.dense == 2 * rows * 5 * 7
    assert report.sparse == 2 * rows * (5 * 7 - 3)


def test_zeros_in_activations_are_not_sparsity():
    class SelfProduct(nn.Module):
        def forward(self, x):
            y = torch.relu(x)  # about half zeros
            return torch.bmm(y, y.transpose(1, 2))

    report = count_flops(SelfProduct(), torch.randn(1, 6, 4))
    assert report.dense == report.sparse == 2 * 6 * 6 * 4


def test_a_parameter_in_a_matrix_product_counts_its_zeros():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, 4, 3))

        def forward(self, x):
            return torch.bmm(x, self.w)

    mixer = Mixer()
    with torch.no_grad():
        mixer.w[0, 0, :] = 0  # one row: each of its 3 entries did 6 MACs
    report = count_flops(mixer, torch.randn(1, 6, 4))
    assert report.dense == 2 * 6 * 4 * 3
    assert report.sparse == 2 * (6 * 4 * 3 - 3 * 6)


def test_attention_with_a_learned_query():
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Parameter(torch.ones(1, 1, 2, 8))

        def forward(self, x):
            return F.scaled_dot_product_attention(self.query, x, x)

    pool = Pool()
    with torch.no_grad():
        pool.query[0, 0, 0, :3] = 0  # 3 query entries, each met all 5 keys
    report = count_flops(pool, torch.randn(1, 1, 5, 8))
    assert report.dense == 2 * (2 * 5 * 8) * 2
    assert report.sparse == report.dense - 2 * 3 * 5
    free = count_flops(pool, torch.randn(1, 1, 5, 8) * 0)  # zero keys/values are activations
    assert free.sparse == report.sparse


aten = torch.ops.aten


@pytest.mark.parametrize("shapes", [
    ((2, 4, 3, 8), (2, 4, 5, 8), (2, 4, 5, 8)),
    ((1, 8, 7, 16), (1, 2, 11, 16), (1, 2, 11, 4)),  # grouped-query attention, values narrower than keys
])
def test_the_attention_formula_is_torchs_where_torch_has_one(shapes):
    q, k, v = (torch.empty(shape, device="meta") for shape in shapes)
    (batch, heads, queries, dim), (_, _, keys, value_dim) = q.shape, v.shape
    ours = flops._attention_flops(q, k, v)
    assert ours == 2 * batch * heads * queries * keys * (dim + value_dim)
    torch_counted = [op for op in flops._SDPA_OPS if op in flop_registry]
    assert aten._scaled_dot_product_flash_attention in torch_counted
    for op in torch_counted:
        assert flop_registry[op](q, k, v, out_val=None) == ours, op


def test_mismatched_attention_operands_are_refused_by_the_formula():
    q, k = torch.empty(1, 2, 3, 8, device="meta"), torch.empty(1, 2, 5, 8, device="meta")
    with pytest.raises(ValueError, match="do not match"):
        flops._attention_flops(q, k, torch.empty(1, 2, 4, 8, device="meta"))
    with pytest.raises(ValueError, match="do not divide"):
        flops._attention_flops(q, torch.empty(1, 3, 5, 8), torch.empty(1, 3, 5, 8))


class _Attention(nn.Module):
    """Calls one attention op directly: `op` None goes through F.scaled_dot_product_attention."""

    def __init__(self, op=None, *extra):
        super().__init__()
        self.op, self.extra = op, extra

    def forward(self, q, k, v):
        if self.op is None:
            return F.scaled_dot_product_attention(q, k, v)
        return self.op(q, k, v, *self.extra)[0]


_ATTENTION_FLOPS = 2 * 2 * 3 * 5 * (8 + 8)  # heads 2, 3 queries, 5 keys, dims 8
_QKV = ((1, 2, 3, 8), (1, 2, 5, 8), (1, 2, 5, 8))


@pytest.mark.parametrize("backend", [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION])
def test_attention_counts_the_same_on_every_cpu_backend(backend):
    with sdpa_kernel(backend):
        report = count_flops(_Attention(), tuple(torch.randn(shape) for shape in _QKV))
    assert report.dense == report.sparse == _ATTENTION_FLOPS
    assert report.uncounted == {}


@pytest.mark.parametrize("name, extra", [
    ("_scaled_dot_product_flash_attention_for_cpu", ()),
    ("_scaled_dot_product_flash_attention", ()),
    ("_scaled_dot_product_efficient_attention", (None, False)),
    ("_scaled_dot_product_cudnn_attention", (None, False)),
    ("_scaled_dot_product_fused_attention_overrideable", ()),
])
def test_every_fused_attention_kernel_is_counted(name, extra):
    if not hasattr(aten, name):
        pytest.skip(f"torch {torch.__version__} has no aten.{name}")
    op = getattr(aten, name)
    # Meta tensors: the CUDA kernels' shapes and dispatch, without a GPU.
    report = count_flops(_Attention(op, *extra), tuple(torch.empty(shape, device="meta") for shape in _QKV))
    assert report.dense == report.sparse == _ATTENTION_FLOPS
    assert [(layer.name, layer.op) for layer in report.layers] == [("", f"aten.{name}")]
    assert report.uncounted == {}


@torch.library.custom_op("zoo_test::reverse", mutates_args=())
def _reverse(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


@_reverse.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class _Unknowns(nn.Module):
    """A linear layer (counted), an int8 matrix product torch has no formula for, and a custom op."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(32, 32)
        self.register_buffer("int8_weight", torch.ones(32, 8, dtype=torch.int8))

    def forward(self, x):
        x = _reverse(self.linear(x))
        for _ in range(2):
            product = torch._int_mm(x.round().to(torch.int8), self.int8_weight)
        return product


def test_ops_without_a_formula_are_named_not_counted():
    report = count_flops(_Unknowns(), torch.randn(3, 32))
    assert report.dense == report.sparse == 2 * 32 * 32
    assert report.uncounted == {"aten._int_mm": 2, "zoo_test.reverse": 1}
    assert [layer.op for layer in report.layers] == ["aten.addmm"]


def test_a_formula_that_raises_names_its_op(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no formula for these arguments")

    class Square(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x):
            y = self.linear(x)
            return torch.mm(y.t(), y)

    monkeypatch.setitem(flop_registry, aten.mm, broken)
    report = count_flops(Square(), torch.randn(1, 4))
    assert report.dense == report.sparse == 2 * 4 * 4
    assert report.uncounted == {"aten.mm": 1}
    monkeypatch.undo()
    assert count_flops(Square(), torch.randn(1, 4)).uncounted == {}


def test_timm_resnet_per_layer_breakdown():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            _zero_first(module.weight, 0)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    report = count_flops(model, x)
    assert model.training  # restored
    assert report.sparse == report.dense > 0
    assert sum(layer.dense for layer in report.layers) == report.dense
    assert sum(layer.sparse for layer in report.layers) == report.sparse
    leaves = {name for name, m in model.named_modules() if not list(m.children())}
    assert {layer.name for layer in report.layers} <= leaves
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model.eval()(x[:1])
    assert report.dense == counter.get_total_flops()

    conv = model.layer1[0].conv1
    half = conv.weight.numel() // 2
    _zero_first(conv.weight, half)
    sparse = count_flops(model, x)
    (layer,) = [layer for layer in sparse.layers if layer.name == "layer1.0.conv1"]
    assert layer.sparse * conv.weight.numel() == layer.dense * (conv.weight.numel() - half)
    assert sparse.dense - sparse.sparse == layer.dense - layer.sparse > 0


def test_ops_of_a_parent_module_are_credited_to_it():
    model = timm.create_model("test_vit", pretrained=False)
    report = count_flops(model, torch.randn(1, *model.pretrained_cfg["input_size"]))
    assert sum(layer.dense for layer in report.layers) == report.dense
    attention = [layer for layer in report.layers if layer.name == "blocks.0.attn"]
    assert len(attention) == 1 and "scaled_dot_product" in attention[0].op
    assert report.uncounted == {}


class _Stack(nn.Module):
    """Layers in a ModuleList (which never runs itself, so FlopCounterMode never credits it), one of them
    also registered under a second name, and an op of the stack's own."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8), nn.ReLU())])
        self.alias = self.layers[0]
        self.mix = nn.Parameter(torch.zeros(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.alias(x) @ self.mix


def test_a_layer_inside_a_container_is_credited_once():
    report = count_flops(_Stack(), torch.randn(1, 8))
    assert report.dense == 4 * 2 * 64
    assert sum(layer.dense for layer in report.layers) == report.dense
    assert sum(layer.sparse for layer in report.layers) == report.sparse == 3 * 2 * 64
    own = {(layer.name, layer.op.split(".")[1]): layer.dense for layer in report.layers}
    shared = ("alias", "addmm") if ("alias", "addmm") in own else ("layers.0", "addmm")  # torch picks the name
    assert own == {("", "mm"): 128, shared: 256, ("layers.1.0", "addmm"): 128}


def test_weights_computed_in_forward_are_refused():
    linear = nn.Linear(4, 4)
    torch.nn.utils.prune.l1_unstructured(linear, "weight", amount=0.5)
    with pytest.raises(InvalidArgumentError, match="prune.remove"):
        count_flops(nn.Sequential(linear), torch.randn(1, 4))


# Parameters --------------------------------------------------------------------------------------

def test_count_parameters_skips_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[0, :2] = 0
        model[0].bias.zero_()
    count = count_parameters(model)
    assert count.total == 3 * 2 + 2 + 2 + 2
    assert count.nonzero == count.total - 2 - 2 - 2  # two weights, the bias, the batch-norm bias
    assert count.sparsity == pytest.approx(6 / 12)


# Latency -----------------------------------------------------------------------------------------

def test_measure_latency_in_eval_and_inference_mode():
    seen = []

    class Probe(nn.Linear):
        def forward(self, x):
            seen.append((self.training, torch.is_inference_mode_enabled()))
            return super().forward(x)

    model = Probe(8, 8).train()
    report = measure_latency(model, torch.randn(1, 8), min_run_time=0.05)
    assert model.training
    assert set(seen) == {(False, True)}
    assert report.runs >= 1 and len(seen) >= report.runs + 2


def test_measure_latency_times_the_forward_pass():
    class Sleeper(nn.Module):
        def forward(self, x):
            time.sleep(0.005)
            return x

    report = measure_latency(Sleeper(), torch.randn(1, 8), min_run_time=0.05)
    assert 5.0 <= report.median_ms < 50.0, report  # a 5 ms sleep: at least 5 ms, not ten times that
    assert report.iqr_ms < report.median_ms


def test_measure_latency_refuses_a_non_positive_time():
    with pytest.raises(InvalidArgumentError):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), min_run_time=0)


# Accuracy ----------------------------------------------------------------------------------------

# Rows of logits over 4 classes; the fake model returns the rows whose indices it is given.
LOGITS = torch.tensor([
    [0.9, 0.1, 0.0, 0.0],  # top-1: 0, top-2: {0, 1}
    [0.1, 0.8, 0.3, 0.0],  # top-1: 1, top-2: {1, 2}
    [0.5, 0.0, 0.4, 0.1],  # top-1: 0, top-2: {0, 2}
    [0.0, 0.2, 0.1, 0.7],  # top-1: 3, top-2: {3, 1}
    [0.3, 0.6, 0.1, 0.0],  # top-1: 1, top-2: {1, 0}
])
LABELS = torch.tensor([0, 2, 2, 3, 0])  # top-1 right: rows 0, 3; top-2 right: all five


class FixedLogits(nn.Module):
    def forward(self, index):
        return LOGITS[index]


def _batches():
    return [(torch.tensor([0, 1]), LABELS[:2]), (torch.tensor([2, 3, 4]), LABELS[2:])]


def test_accuracy_matches_a_hand_count():
    result = evaluate_classifier(FixedLogits(), _batches(), num_classes=4, top_k=(1, 2, 5), progress=False)
    assert result.metrics == {"top1": pytest.approx(2 / 5), "top2": pytest.approx(5 / 5)}  # top5 > 4 classes
    assert result.num_examples == 5 and result.average == "micro"


def test_macro_accuracy_averages_per_class():
    result = evaluate_classifier(FixedLogits(), _batches(), num_classes=4, top_k=(1,), average="macro",
                                 progress=False)
    # Per class top-1 recall: class 0 -> 1/2 (rows 0, 4), class 2 -> 0/2, class 3 -> 1/1, and class 1,
    # never a label but predicted twice, 0 (torchmetrics leaves out only classes never labelled nor predicted).
    assert result.metrics["top1"] == pytest.approx((1 / 2 + 0 + 0 + 1) / 4)


@pytest.mark.parametrize("kwargs", [{"average": "none"}, {"average": "mean"}, {"top_k": (0,)},
                                    {"top_k": (7,)}, {"num_classes": 1}])
def test_accuracy_refuses_bad_arguments(kwargs):
    arguments = {"num_classes": 4, "top_k": (1,), "average": "micro", **kwargs}
    with pytest.raises(InvalidArgumentError):
        evaluate_classifier(FixedLogits(), _batches(), progress=False, **arguments)


def test_accuracy_refuses_wrong_logits_and_no_data():
    with pytest.raises(InvalidArgumentError, match="logits"):
        evaluate_classifier(FixedLogits(), _batches(), num_classes=5, top_k=(1,), progress=False)
    with pytest.raises(InvalidArgumentError, match="empty"):
        evaluate_classifier(FixedLogits(), [], num_classes=4, top_k=(1,), progress=False)


# Pareto front ------------------------------------------------------------------------------------

def test_pareto_front():
    points = [
        (4.0, 0.70),  # 0: dominated by 2 (cheaper, as accurate)
        (1.0, 0.50),  # 1: front
        (3.0, 0.70),  # 2: front
        (2.0, 0.40),  # 3: dominated by 1
        (5.0, 0.90),  # 4: front
        (3.0, 0.70),  # 5: equal to 2: only the first is kept
        (1.0, 0.45),  # 6: same cost as 1, less accurate
        (np.float64(6.0), np.int64(1)),  # 7: front (NumPy scalars)
    ]
    assert pareto_front(points) == [1, 2, 4, 7]
    assert pareto_front([]) == []


@pytest.mark.parametrize("bad", [[(1.0, float("nan"))], [(1.0,)], [(1.0, 2.0, 3.0)], [("a", 1.0)], [3.0]])
def test_pareto_front_refuses_bad_points(bad):
    with pytest.raises(InvalidArgumentError):
        pareto_front(bad)


# The machine ------------------------------------------------------------------------------------

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R)   Platinum 8480+
flags\t\t: fpu sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes crc32 asimddp i8mm bf16
CPU implementer\t: 0x41

Hardware\t: BCM2835
Model\t: Raspberry Pi 5 Model B Rev 1.0
"""


def test_the_cpu_and_its_flags_come_from_cpuinfo():
    assert cpu_name(X86_CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_name(ARM_CPUINFO) == "BCM2835"
    assert isa_level(cpu_flags(X86_CPUINFO)) == "AVX-512 + VNNI, AMX, AMX-INT8"  # the first core's flags
    assert isa_level(cpu_flags(ARM_CPUINFO)) == "NEON + DOTPROD, I8MM, BF16"


@pytest.mark.parametrize("flags, level", [
    ({"sse4_2", "avx2", "avx512f", "avx512_bf16"}, "AVX-512 + BF16"),
    ({"sse4_2", "avx2", "avx_vnni"}, "AVX2 + VNNI"),
    ({"sse4_2", "avx"}, "SSE4.2"),
    ({"asimd", "sve", "sve2"}, "SVE2"),
    ({"fpu", "mmx"}, "baseline"),
    (set(), "baseline"),
])
def test_isa_level_is_the_best_level_present(flags, level):
    assert isa_level(flags) == level


def test_without_cpuinfo_the_machine_is_still_described(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "_CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(platform, "processor", lambda: "Apple M3")
    info = current_machine(threads=3)
    assert (info.cpu, info.isa, info.threads) == ("Apple M3", "unknown", 3)
    assert info.torch_cpu_capability == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "")
    assert cpu_name(None) == "unknown CPU"


def test_current_machine_records_torch_and_the_libraries():
    info = current_machine()
    assert info.threads == torch.get_num_threads()
    assert info.torch == torch.__version__ and info.python == platform.python_version()
    assert info.arch == platform.machine()
    assert info.libraries == {name: metadata.version(name)
                              for name in ("timm", "transformers", "torchmetrics", "onnxruntime", "openvino")}
    summary = info.summary()
    assert summary.startswith(f"{info.cpu} ({info.isa}), torch {torch.__version__}, {info.threads} thread")
    assert f"timm {metadata.version('timm')}" in summary
    assert "1 thread;" in dataclasses.replace(info, threads=1).summary()


# The report --------------------------------------------------------------------------------------

MACHINE = MachineInfo(cpu="AMD EPYC 9654", isa="AVX-512 + VNNI, BF16", torch_cpu_capability="AVX512",
                      os="Linux 6.8.0", arch="x86_64", python="3.11.7", torch="2.14.1", threads=4,
                      libraries={"timm": "1.0.31"})


def _report(**fields):
    base = dict(name="net_sp50", base_model="net", task="image-classification", dataset="digits", split="test",
                metrics={"top1": 0.5}, metric_average="micro", flops_dense=10, flops_sparse=5, params_total=4,
                params_nonzero=2, bytes_on_disk=100, latency_ms=1.5, sparsity=0.5,
                layers=[LayerFlops(name="fc", op="aten.addmm", dense=10, sparse=5)])
    return VariantReport(**{**base, **fields})


def test_a_report_keeps_its_machine_and_uncounted_ops_through_json(tmp_path):
    report = _report(flops_uncounted={"aten._int_mm": 2}, machine=MACHINE)
    report.save(tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["machine"]["cpu"] == "AMD EPYC 9654" and data["machine"]["libraries"] == {"timm": "1.0.31"}
    assert data["flops_uncounted"] == {"aten._int_mm": 2}
    loaded = VariantReport.load(tmp_path / "report.json")
    assert loaded == report and loaded.machine == MACHINE and loaded.is_current


def test_a_report_of_the_previous_evaluator_loads_without_a_machine_and_is_not_current():
    old = _report().to_dict()
    del old["machine"], old["flops_uncounted"]
    old["evaluator_version"] = 2
    loaded = VariantReport.from_dict(old)
    assert loaded.machine is None and loaded.flops_uncounted == {}
    assert not loaded.is_current and EVALUATOR_VERSION == 6


def test_measure_variant_records_the_machine_and_the_uncounted_ops(tmp_path):
    entry = get_entry("test_resnet.zoo_digits")
    torch.manual_seed(0)
    model = build_model(entry)
    config = {"name": entry.name, "base_model": entry.name, "arch": "test_resnet",
              "model_kwargs": {"num_classes": 10}, "recipe": None}
    folder = save_checkpoint(tmp_path / "ck", model.state_dict(), config=config)
    before = torch.get_num_threads()
    report = measure_variant(model, entry, name=entry.name, checkpoint_dir=folder, sparsity=0.0, quant=None,
                             recipe=None, progress=False, latency_seconds=0.05)
    assert report.machine == current_machine(before)
    example = task_of(entry).example_input(entry)
    counted = count_flops(model, example)
    assert report.flops_uncounted == {} and (report.flops_dense, report.flops_sparse) == (counted.dense, counted.sparse)
    assert report.params_total == sum(p.numel() for p in model.parameters())
    assert report.bytes_on_disk == checkpoint_bytes(folder)
    assert report.is_current


def test_integer_dot_product_is_read_from_the_recorded_isa_exactly():
    from zoo.evaluate.machine import isa_has_integer_dot_product

    assert isa_has_integer_dot_product(isa_level({"avx512f", "avx512_vnni"}))
    assert isa_has_integer_dot_product(isa_level({"avx2", "avx_vnni"}))
    assert isa_has_integer_dot_product(isa_level({"avx512f", "amx_tile", "amx_int8"}))
    assert not isa_has_integer_dot_product(isa_level({"avx512f", "amx_tile", "amx_bf16"}))  # AMX without int8
    assert not isa_has_integer_dot_product(isa_level({"avx2", "fma"})) and not isa_has_integer_dot_product("unknown")
