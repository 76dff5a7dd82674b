"""Low-bit QAT building blocks: the weight grids against hand computations (and the int8 PTQ grid), each
STE's gradient, the BCGD update by hand, QATConfig as data, and apply_qat on a tiny MLP."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from zoo.compress import CompressionConfig, Recipe, RecipeContext
from zoo.compress.lowbit import (
    ActivationQuantSTE, QATConfig, QATLinear, WeightFakeQuant, WeightGrid, apply_qat, bcgd_step, dequantize_weight,
    quantize_activation, quantize_weight,
)
from zoo.compress.quantization import dequantize_per_channel, quantize_per_channel
from zoo.errors import InvalidArgumentError, RecipeError


# Weight grids ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 96), (4, 1, 1, 1)])
def test_int8_channel_grid_is_the_int8_ptq_grid(shape: tuple[int, ...]) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    w[1] = 0.0  # a pruned channel: scale 1 in both
    q = quantize_weight(w, 8, granularity="channel")
    codes, scale = quantize_per_channel(w)
    assert q.codes.dtype == torch.int8 and torch.equal(q.codes, codes)
    assert torch.equal(q.scale, scale) and q.zero_point is None
    assert torch.equal(q.dequantize(), dequantize_per_channel(codes, scale))


def test_symmetric_grids_by_hand() -> None:
    w = torch.tensor([[0.7, -0.36, 0.1, 0.0], [-2.0, 1.2, 0.5, 0.25]])
    q4 = quantize_weight(w, 4, granularity="channel")  # qmax 7: scales 0.1, 2/7
    assert torch.allclose(q4.scale, torch.tensor([0.1, 2 / 7]))
    assert q4.codes.tolist() == [[7, -4, 1, 0], [-7, 4, 2, 1]]  # -3.6, 4.2, 1.75, 0.875 rounded
    q2 = quantize_weight(w, 2, granularity="tensor")  # qmax 1, one scale 2.0: the most negative code -2 is unused
    assert q2.scale.shape == () and float(q2.scale) == 2.0
    assert q2.codes.tolist() == [[0, 0, 0, 0], [-1, 1, 0, 0]]
    assert torch.equal(dequantize_weight(q2.codes, q2.scale), torch.tensor([[0.0, 0, 0, 0], [-2.0, 2.0, 0, 0]]))
    grouped = quantize_weight(w, 2, granularity="group", group_size=2)  # groups [.7,-.36] [.1,0] [-2,1.2] [.5,.25]
    assert torch.allclose(grouped.scale, torch.tensor([[0.7, 0.1], [2.0, 0.5]]))
    assert grouped.codes.tolist() == [[1, -1, 1, 0], [-1, 1, 1, 0]]  # 0.25 / 0.5 = 0.5 -> 0 (ties to even)


def test_affine_grid_by_hand() -> None:
    w = torch.tensor([[0.2, 1.7, 0.5, 1.0]])  # range widened to [0, 1.7]: scale 1.7 / 15, zero point 0
    q = quantize_weight(w, 4, granularity="channel", symmetric=False)
    assert q.codes.dtype == torch.uint8 and q.zero_point is not None
    assert q.zero_point.tolist() == [0] and q.scale.tolist() == pytest.approx([1.7 / 15])
    assert q.codes.tolist() == [[2, 15, 4, 9]]
    w = torch.tensor([[-1.0, 0.0, 2.0, 0.4]])  # scale 3 / 15 = 0.2, zero point 5
    q = quantize_weight(w, 4, granularity="channel", symmetric=False)
    assert q.zero_point.tolist() == [5] and q.codes.tolist() == [[0, 5, 15, 7]]
    assert torch.allclose(q.dequantize(), torch.tensor([[-1.0, 0.0, 2.0, 0.4]]))


def test_binary_and_ternary_by_hand() -> None:
    w = torch.tensor([[1.0, -2.0, 3.0, 0.0], [0.1, -0.2, 0.2, -0.1]])
    b = quantize_weight(w, 1, granularity="channel")  # a = mean |w| = 1.5, 0.15; sign(0) = +1
    assert b.codes.tolist() == [[1, -1, 1, 1], [1, -1, 1, -1]]
    assert b.scale.tolist() == pytest.approx([1.5, 0.15])
    t = quantize_weight(torch.tensor([1.0, -2.0, 3.0, 0.1]), "ternary", granularity="tensor")
    # threshold 0.7 * 1.525 = 1.0675: -2 and 3 stay, a = (2 + 3) / 2
    assert t.codes.tolist() == [0, -1, 1, 0] and float(t.scale) == pytest.approx(2.5)
    zero = quantize_weight(torch.zeros(2, 3), "ternary", granularity="channel")
    assert not zero.dequantize().any() and not quantize_weight(torch.zeros(2, 3), 1).dequantize().any()


@pytest.mark.parametrize("bits", [1, 2, 4, 8, "ternary"])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_dequantized_weights_are_fixed_points(bits, granularity: str) -> None:
    grid = WeightGrid(bits, granularity, 4 if granularity == "group" else 0)
    w = torch.randn(6, 8, 3, generator=torch.Generator().manual_seed(1))
    projected = grid.project(w)
    assert torch.allclose(grid.project(projected), projected, atol=1e-6)
    assert len(torch.unique(grid.quantize(w).codes)) <= {1: 2, 2: 3, "ternary": 3, 4: 15, 8: 255}[bits]


@pytest.mark.parametrize("call", [
    lambda: quantize_weight(torch.ones(4, 6), 3),
    lambda: quantize_weight(torch.ones(4, 6), True),
    lambda: quantize_weight(torch.ones(4, 6), 4, granularity="group", group_size=4),  # 4 does not divide 6
    lambda: quantize_weight(torch.ones(4, 6), 4, granularity="channel", group_size=2),
    lambda: quantize_weight(torch.ones(4, 6), 1, symmetric=False),
    lambda: quantize_weight(torch.ones(6), 4, granularity="channel"),
])
def test_invalid_grids_are_refused(call) -> None:
    with pytest.raises(InvalidArgumentError):
        call()


# Straight-through estimators ---------------------------------------------------------------------

X = [-1.0, 0.5, 1.5, 3.0]


@pytest.mark.parametrize(("proxy", "expected"), [
    ("identity", [1.0, 1.0, 1.0, 1.0]), ("relu", [0.0, 1.0, 1.0, 1.0]), ("clipped_relu", [0.0, 1.0, 1.0, 0.0]),
])
def test_activation_ste_gradients(proxy: str, expected: list[float]) -> None:
    x = torch.tensor(X, requires_grad=True)
    y = quantize_activation(x, 2.0, 2, proxy)  # levels 0, 2/3, 4/3, 2
    assert y.tolist() == pytest.approx([0.0, 2 / 3, 4 / 3, 2.0])
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [e * g for e, g in zip(expected, [1.0, 2.0, 3.0, 4.0])]


@pytest.mark.parametrize(("proxy", "expected"), [
    ("identity", [1.0, 1.0, 1.0, 1.0]), ("relu", [0.0, 1.0, 1.0, 1.0]), ("clipped_relu", [0.0, 1.0, 1.0, 0.0]),
])
def test_signed_activation_ste_gradients(proxy: str, expected: list[float]) -> None:
    x = torch.tensor([-3.0, -1.0, 0.4, 2.5], requires_grad=True)
    y = quantize_activation(x, 2.0, 2, proxy, signed=True)  # levels -2, 0, 2 on [-alpha, alpha]
    assert y.tolist() == [-2.0, 0.0, 0.0, 2.0]
    y.sum().backward()
    assert x.grad.tolist() == expected


def test_weight_fake_quant_passes_the_gradient_straight_through() -> None:
    grid = WeightGrid(2, "tensor")
    w = torch.tensor([[0.3, -1.0], [0.6, 0.1]], requires_grad=True)
    y = WeightFakeQuant.apply(w, grid.project)
    assert y.tolist() == [[0.0, -1.0], [1.0, 0.0]]
    (y * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    assert w.grad.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_activation_quantizer_refuses_bad_settings() -> None:
    with pytest.raises(InvalidArgumentError):
        quantize_activation(torch.ones(2), 0.0, 4)
    with pytest.raises(InvalidArgumentError):
        quantize_activation(torch.ones(2), 1.0, 3)
    with pytest.raises(RecipeError):
        quantize_activation(torch.ones(2), 1.0, 4, "tanh")
    assert ActivationQuantSTE.apply(torch.ones(1), torch.tensor(1.0), 8, "identity", False).item() == 1.0


# BCGD --------------------------------------------------------------------------------------------

def test_bcgd_step_by_hand() -> None:
    grid = WeightGrid(1, "tensor")  # Q(w) = mean|w| sign(w) = 3.5 / 3 * (1, -1, 1)
    w = torch.tensor([0.5, -1.0, 2.0])
    g = torch.tensor([0.1, -0.2, 0.3])
    bcgd_step([w], [g], lr=0.1, rho=0.5, quantize_fn=grid.project)
    a = 3.5 / 3
    assert w.tolist() == pytest.approx([0.25 + 0.5 * a - 0.01, -0.5 - 0.5 * a + 0.02, 1.0 + 0.5 * a - 0.03])
    w = torch.tensor([0.5, -1.0, 2.0])
    bcgd_step([w], [g], lr=0.1, rho=0.0, quantize_fn=grid.project)  # BinaryConnect: w - lr g
    assert w.tolist() == pytest.approx([0.49, -0.98, 1.97])
    with pytest.raises(InvalidArgumentError):
        bcgd_step([w], [g], lr=0.1, rho=1.5, quantize_fn=grid.project)


# QATConfig ---------------------------------------------------------------------------------------

def test_qat_config_round_trips_through_json() -> None:
    config = QATConfig(bits_w=2, bits_a=2, granularity="group", group_size=8, ste="clipped_relu",
                       weight_update="bcgd", rho=1e-5, epochs=2, keep_fp=("0",))
    assert CompressionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    ternary = QATConfig(bits_w="ternary", bits_a=32)
    assert Recipe.from_json(Recipe((ternary,)).to_json()).steps == (ternary,)


@pytest.mark.parametrize("fields", [
    {"bits_w": 3}, {"bits_w": True}, {"bits_w": "binary"}, {"bits_a": 16}, {"bits_a": 1},
    {"granularity": "row"}, {"granularity": "group"}, {"group_size": 8}, {"symmetric": False, "bits_w": 1},
    {"symmetric": "yes"}, {"ste": "tanh"}, {"weight_update": "adam"}, {"rho": 1e-5},
    {"weight_update": "bcgd", "rho": -0.1}, {"epochs": 0}, {"lr": 0.0}, {"act_percentile": 40.0},
    {"keep_fp": ("(",)}, {"keep_fp": "fc"}, {"optimizer": "lbfgs"}, {"calibration_batches": 0},
])
def test_invalid_qat_configs_are_refused(fields: dict) -> None:
    with pytest.raises(RecipeError):
        QATConfig(**fields)


# apply_qat on a tiny MLP -------------------------------------------------------------------------

def _task(seed: int = 0) -> tuple[nn.Module, RecipeContext, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = (x[:, :4].sum(dim=1) > 0).long() + (x[:, 4:].sum(dim=1) > 0).long()  # 3 classes
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]), batch[1])

    context = RecipeContext(
        train_batches=lambda epoch: [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)],
        loss_fn=loss_fn, calibration_batches=lambda: (x[i:i + 64] for i in range(0, 256, 64)), progress=False,
    )
    return model, context, x, y


def test_qat_w4a4_lowers_the_loss_and_leaves_weights_on_the_grid() -> None:
    model, context, x, y = _task()
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    apply_qat(model, context, bits_w=4, bits_a=4, granularity="group", group_size=4, epochs=15, lr=0.1)
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert after < 0.6 * before, (before, after)
    first, last = model[0], model[2]
    assert isinstance(first, QATLinear) and isinstance(last, QATLinear)
    assert bool(first.act_signed) and not bool(last.act_signed), "the MLP's input is signed, the ReLU's output not"
    for layer, groups in ((first, 2), (last, 8)):
        assert layer.weight_scale.shape == (layer.out_features, groups)
        assert (int(layer.weight_bits), int(layer.act_bits)) == (4, 4)
        assert not hasattr(layer, "weight_zero_point"), "a symmetric grid stores no zero point"
        codes = torch.round(layer.weight.reshape(-1, 4) / layer.weight_scale.reshape(-1, 1))
        assert codes.abs().max() <= 7
        assert torch.equal(dequantize_weight(codes.to(torch.int8).reshape(layer.weight.shape), layer.weight_scale),
                           layer.weight.detach())
        assert float(layer.act_alpha) > 0


@pytest.mark.parametrize("rho", [0.0, 1e-5])
def test_bcgd_w2_runs(rho: float) -> None:
    model, context, x, y = _task()
    Recipe((QATConfig(bits_w=2, bits_a=32, weight_update="bcgd", rho=rho, epochs=3, lr=0.05),)).apply(model, context)
    for layer in (model[0], model[2]):
        assert len(torch.unique(layer.weight.detach().reshape(layer.out_features, -1)[0])) <= 3
        assert torch.isfinite(layer.weight).all()
    with torch.no_grad():
        assert torch.isfinite(F.cross_entropy(model(x), y))


def test_bcgd_through_train_hooks_is_the_hand_update() -> None:
    """One step (lr factor 1 at step 0), no activation quantization: the float weight after the step is
    (1 - rho) w + rho Q(w) - lr * grad at Q(w); the layer ends holding Q of it."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 2)
    w0 = layer.weight.detach().clone()
    x, target = torch.randn(8, 4), torch.randn(8, 2)
    grid, lr, rho = WeightGrid(1, "channel"), 0.1, 0.25
    wq = grid.project(w0).requires_grad_(True)
    F.mse_loss(F.linear(x, wq, layer.bias.detach()), target).backward()
    expected = (1 - rho) * w0 + rho * grid.project(w0) - lr * wq.grad
    model = nn.Sequential(layer)
    context = RecipeContext(train_batches=lambda epoch: [(x, target)],
                            loss_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]), progress=False)
    apply_qat(model, context, bits_w=1, bits_a=32, weight_update="bcgd", rho=rho, epochs=1, lr=lr)
    assert torch.allclose(model[0].weight.detach(), grid.project(expected), atol=1e-6)
    assert int(model[0].weight_bits) == 2 and model[0].weight_scale.shape == (2,)  # binary codes stored at 2 bits


def test_qat_refuses_layers_its_groups_do_not_fit_and_missing_data() -> None:
    model, context, _, _ = _task()
    with pytest.raises(RecipeError, match="keep_fp"):
        apply_qat(model, context, granularity="group", group_size=16)  # 16 does not divide 8 inputs
    with pytest.raises(RecipeError, match="calibration_batches"):
        apply_qat(model, RecipeContext(train_batches=context.train_batches, loss_fn=context.loss_fn), bits_a=8)
    with pytest.raises(RecipeError, match="no nn.Linear"):
        apply_qat(model, context, keep_fp=(".*",))


# Storage: a QAT model saved in the checkpoint format and rebuilt --------------------------------------

@pytest.mark.parametrize(("bits_w", "bits_a", "granularity", "group_size", "symmetric", "encoding"), [
    (4, 8, "group", 4, True, "int4"),
    (2, 2, "channel", 0, False, "uint2"),
    (1, 32, "channel", 0, True, "int2"),
    ("ternary", 4, "tensor", 0, True, "int2"),
    (8, 8, "channel", 0, True, "int8"),
])
def test_a_qat_model_round_trips_through_the_checkpoint_format(tmp_path, bits_w, bits_a, granularity, group_size,
                                                               symmetric, encoding) -> None:
    from zoo.compress.checkpoint import WEIGHTS_FILE, _read_weights, load_checkpoint, save_checkpoint
    from zoo.compress.lowbit import qat_layer_names, swap_to_qat_modules

    model, context, x, _ = _task()
    apply_qat(model, context, bits_w=bits_w, bits_a=bits_a, granularity=granularity, group_size=group_size,
              symmetric=symmetric, epochs=1, lr=0.05)
    model.eval()
    save_checkpoint(tmp_path, model.state_dict(), config={"name": "tiny", "base_model": "tiny", "arch": "mlp", "model_kwargs": {}, "recipe": None})
    state, config = load_checkpoint(tmp_path)
    assert sorted(qat_layer_names(state)) == ["0", "2"]
    _, metas = _read_weights(tmp_path / WEIGHTS_FILE, config["format_version"])
    assert metas["0.weight"].encoding.value.removesuffix("-zstd").endswith(encoding)
    assert config["format_version"] == (1 if encoding == "int8" else 4)
    rebuilt = swap_to_qat_modules(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)), state, ["0", "2"])
    rebuilt.load_state_dict(state, strict=True)
    rebuilt.eval()
    assert isinstance(rebuilt[0], QATLinear) and rebuilt[0].finalized
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x)), "the rebuilt model computes exactly what the trained one did"


def test_8bit_weights_are_stored_per_channel_symmetric_only() -> None:
    with pytest.raises(RecipeError, match="per tensor or per channel"):
        QATConfig(bits_w=8, granularity="group", group_size=4)
    with pytest.raises(RecipeError, match="per tensor or per channel"):
        QATConfig(bits_w=8, symmetric=False)


def _pruned_task() -> tuple[nn.Module, RecipeContext, torch.Tensor]:
    model, context, _, _ = _task()
    with torch.no_grad():
        model[0].weight[:, ::2] = 0.0
    return model, context, model[0].weight == 0


def test_qat_keeps_a_pruned_models_zeros() -> None:
    model, context, zeros = _pruned_task()
    apply_qat(model, context, bits_w=8, bits_a=8, epochs=2, lr=0.1)
    assert bool((model[0].weight[zeros] == 0).all())
    moved, context, zeros = _pruned_task()
    apply_qat(moved, context, bits_w=8, bits_a=8, epochs=2, lr=0.1, keep_zeros=False)
    assert bool((moved[0].weight[zeros] != 0).any()), "without keep_zeros the pruned weights move"
    binary, context, _ = _pruned_task()
    with pytest.raises(RecipeError, match="binary grid has no zero"):
        apply_qat(binary, context, bits_w=1, bits_a=32, epochs=1)


def test_mse_range_by_hand_and_never_worse_than_absmax() -> None:
    # 2 bits, levels {-s, 0, s}: absmax s = 1.2 leaves error 4 * 0.2^2 = 0.16; clipped to 0.85 (s = 1.02)
    # 4 * 0.02^2 + 0.18^2 = 0.034, the least over the ratios 0.10 ... 1.00 (0.9: 0.04, 0.8: 0.064)
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.2]])
    assert float(quantize_weight(w, 2).scale) == pytest.approx(1.2)
    clipped = quantize_weight(w, 2, weight_range="mse")
    assert float(clipped.scale) == pytest.approx(1.02) and clipped.codes.tolist() == [[1, 1, 1, 1, 1]]
    assert float((clipped.dequantize() - w).pow(2).sum()) == pytest.approx(0.034, abs=1e-6)
    generator = torch.Generator().manual_seed(0)
    for bits, symmetric in ((2, True), (4, True), (4, False), (2, False)):
        weights = torch.randn(8, 64, generator=generator) * torch.rand(8, 1, generator=generator)
        plain = quantize_weight(weights, bits, symmetric=symmetric).dequantize()
        mse = quantize_weight(weights, bits, symmetric=symmetric, weight_range="mse").dequantize()
        assert ((mse - weights) ** 2).sum(1).le(((plain - weights) ** 2).sum(1) + 1e-6).all()
    gaussian = torch.randn(16, 256, generator=generator)
    plain = quantize_weight(gaussian, 2).dequantize()
    mse = quantize_weight(gaussian, 2, weight_range="mse").dequantize()
    assert ((mse - gaussian) ** 2).sum() < 0.5 * ((plain - gaussian) ** 2).sum(), "at 2 bits absmax zeroes most weights"


def test_qat_with_mse_ranges_calibrates_them_once_and_ends_on_them() -> None:
    model, context, x, y = _task()
    start = model[0].weight.detach().clone()
    apply_qat(model, context, bits_w=2, bits_a=32, weight_range="mse", epochs=2, lr=0.05)
    expected = quantize_weight(start, 2, weight_range="mse").scale
    assert torch.equal(model[0].weight_scale, expected), "the range is the one calibrated on the starting weights"
    assert torch.equal(quantize_weight(model[0].weight, 2, scale=model[0].weight_scale).dequantize(),
                       model[0].weight.detach())
    with pytest.raises(RecipeError, match="own scale rule"):
        QATConfig(bits_w=1, weight_range="mse")
