"""Int8 post-training quantization: the per-channel weight grid, the module swap on timm's test_resnet,
closeness to the float model, and the quantized state dict through a checkpoint and back into a model."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo.api import instantiate
from zoo.compress import Int8PTQConfig, MagnitudePruningConfig, Recipe, RecipeContext, apply_int8_ptq
from zoo.compress.checkpoint import load_checkpoint, save_checkpoint
from zoo.compress.quantization import (
    QuantConv2d, QuantLinear, dequantize_per_channel, quantize_per_channel, quantized_layer_names,
)
from zoo.entry import ModelEntry
from zoo.errors import RecipeError
from zoo.models import build_model
from zoo.tasks import task_of

ENTRY_NAME = "test_resnet.zoo_digits"  # timm's test_resnet with num_classes=10 (and one input channel)
KEEP_FP = (r"conv1\.0", "fc")


# The weight grid ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 96), (4, 1, 1, 1)])
def test_per_channel_quantization_is_on_the_grid(shape: tuple[int, ...]) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, shape[0]).view(-1, *[1] * (len(shape) - 1))
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (shape[0],)
    assert int(q.abs().max()) <= 127
    flat_q = q.reshape(shape[0], -1)
    assert torch.equal(flat_q.abs().amax(dim=1), torch.full((shape[0],), 127, dtype=torch.int8)), \
        "symmetric absmax: each channel's largest weight maps to +-127"
    deq = dequantize_per_channel(q, scale)
    assert torch.equal(deq, q.float() * scale.view(-1, *[1] * (len(shape) - 1)))
    error = (deq - w).abs().reshape(shape[0], -1).amax(dim=1)
    assert (error <= scale / 2 * (1 + 1e-5)).all(), "rounding to nearest: at most half a step off"
    q2, scale2 = quantize_per_channel(deq)
    assert torch.equal(q2, q) and torch.allclose(scale2, scale), "dequantized weights are fixed points"


def test_a_zero_channel_stays_zero() -> None:
    w = torch.randn(4, 3, 3, 3)
    w[2] = 0.0
    q, scale = quantize_per_channel(w)
    assert scale[2] == 1.0 and not q[2].any()
    assert not dequantize_per_channel(q, scale)[2].any()
    assert torch.isfinite(scale).all() and (scale > 0).all()


# apply_int8_ptq on timm's test_resnet -------------------------------------------------------------

@pytest.fixture(scope="module")
def entry() -> ModelEntry:
    return zoo.get_entry(ENTRY_NAME)


@pytest.fixture(scope="module")
def calibration(entry: ModelEntry) -> list[torch.Tensor]:
    task = task_of(entry)
    batches = task.batches(entry, entry.train.data, batch_size=32, shuffle=True, seed=0)
    return [task.model_inputs(batch) for batch, _ in zip(batches.epoch(0), range(3))]


@pytest.fixture(scope="module")
def float_and_quantized(entry: ModelEntry, calibration) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    float_model = build_model(entry)
    quantized = apply_int8_ptq(copy.deepcopy(float_model), calibration, keep_fp=KEEP_FP)
    return float_model, quantized


def test_conv_and_linear_layers_are_swapped_and_keep_fp_is_honored(float_and_quantized) -> None:
    float_model, quantized = float_and_quantized
    float_types = dict(float_model.named_modules())
    swapped = 0
    for name, module in quantized.named_modules():
        original = type(float_types[name])
        if name in ("conv1.0", "fc"):
            assert type(module) is original, f"{name} is in keep_fp and must stay {original.__name__}"
        elif original is nn.Conv2d:
            assert type(module) is QuantConv2d, name
            swapped += 1
        elif original is nn.Linear:
            assert type(module) is QuantLinear, name
            swapped += 1
        else:
            assert type(module) is original, name
    assert swapped == sum(type(m) is nn.Conv2d for m in float_model.modules()) - 1
    assert sorted(quantized_layer_names(quantized.state_dict())) == sorted(
        n for n, m in quantized.named_modules() if isinstance(m, (QuantConv2d, QuantLinear)))


def observed_input_ranges(float_model: nn.Module, quantized: nn.Module, calibration) -> dict[str, tuple[float, float]]:
    """(min, max) of each quantized layer's input over the calibration batches, observed here on a copy
    of the float model whose weights are put on the int8 grid (what calibration runs: weights first)."""
    model = copy.deepcopy(float_model).eval()
    names = [n for n, m in quantized.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for name in names:
        layer = model.get_submodule(name)
        with torch.no_grad():
            layer.weight.copy_(dequantize_per_channel(*quantize_per_channel(layer.weight)))
        layer.register_forward_pre_hook(lambda module, args, name=name: seen[name].append(args[0].detach().flatten()))
    with torch.no_grad():
        for x in calibration:
            model(x)
    return {n: (float(torch.cat(v).min()), float(torch.cat(v).max())) for n, v in seen.items()}


def test_quantized_weights_and_input_grids(float_and_quantized, calibration) -> None:
    float_model, quantized = float_and_quantized
    float_modules = dict(float_model.named_modules())
    ranges = observed_input_ranges(float_model, quantized, calibration)
    for name, module in quantized.named_modules():
        if not isinstance(module, (QuantConv2d, QuantLinear)):
            continue
        q, scale = quantize_per_channel(float_modules[name].weight)
        assert torch.equal(module.weight, dequantize_per_channel(q, scale)), name
        assert torch.equal(module.weight_scale, scale), name
        # uint8 affine over the observed range widened to hold 0: 255 steps from min to max, 0 exact
        low, high = min(ranges[name][0], 0.0), max(ranges[name][1], 0.0)
        assert float(module.input_scale) == pytest.approx((high - low) / 255, rel=1e-5), name
        assert int(module.input_zero_point) == round(-low / ((high - low) / 255)), name
        assert not module.calibrating
    assert torch.equal(quantized.fc.weight, float_model.fc.weight), "keep_fp layers keep their float weights"


def test_quantized_outputs_are_close_to_the_float_model(float_and_quantized, calibration) -> None:
    float_model, quantized = float_and_quantized
    with torch.no_grad():
        reference = torch.cat([float_model(x) for x in calibration])
        output = torch.cat([quantized(x) for x in calibration])
    assert not torch.equal(output, reference), "int8 rounding must change the outputs a little"
    relative = float((output - reference).norm() / reference.norm())
    assert relative < 0.05, f"relative error {relative:.4f}"
    agreement = float((output.argmax(1) == reference.argmax(1)).float().mean())
    assert agreement >= 0.95, f"top-1 agreement {agreement:.3f}"


def test_percentile_observer_clips_outliers(entry: ModelEntry, calibration) -> None:
    torch.manual_seed(0)
    model = build_model(entry)
    minmax = apply_int8_ptq(copy.deepcopy(model), calibration[:1], observer="minmax")
    clipped = apply_int8_ptq(copy.deepcopy(model), calibration[:1], observer="percentile", percentile=99.0)
    scales = [(a.input_scale, b.input_scale) for a, b in zip(minmax.modules(), clipped.modules())
              if isinstance(a, QuantConv2d)]
    assert all(p <= m for m, p in scales) and any(p < m for m, p in scales)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def test_quantized_state_dict_round_trips_bit_for_bit(float_and_quantized, tmp_path: Path) -> None:
    _, quantized = float_and_quantized
    state = quantized.state_dict()
    config = {"name": "q", "base_model": ENTRY_NAME, "arch": "test_resnet", "model_kwargs": {}, "recipe": None}
    save_checkpoint(tmp_path / "ckpt", state, config=config)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        assert torch.equal(bits(loaded[key]), bits(value)), key


def test_instantiate_rebuilds_the_quantized_structure(entry: ModelEntry, float_and_quantized, calibration, tmp_path: Path) -> None:
    _, quantized = float_and_quantized
    config = {"name": "q", "base_model": ENTRY_NAME, "arch": "test_resnet", "model_kwargs": {}, "recipe": None}
    save_checkpoint(tmp_path / "ckpt", quantized.state_dict(), config=config)
    state, _ = load_checkpoint(tmp_path / "ckpt")
    rebuilt = instantiate(entry, state)
    assert not rebuilt.training
    assert {n: type(m) for n, m in rebuilt.named_modules()} == {n: type(m) for n, m in quantized.named_modules()}
    with torch.no_grad():
        for x in calibration[:2]:
            assert torch.equal(rebuilt(x), quantized(x))


# The recipe form ---------------------------------------------------------------------------------

def test_the_handler_draws_only_the_calibration_batches_it_uses(entry: ModelEntry, calibration) -> None:
    drawn: list[int] = []

    def batches():
        for i in range(100):
            drawn.append(i)
            yield calibration[i % len(calibration)]

    torch.manual_seed(0)
    model = Recipe((Int8PTQConfig(calibration_batches=2),)).apply(
        build_model(entry), RecipeContext(calibration_batches=batches, progress=False))
    assert isinstance(model.fc, QuantLinear)
    assert len(drawn) <= 3, f"calibration drew {len(drawn)} batches for a config asking for 2"


def test_pruned_then_quantized_weights_keep_their_zeros(entry: ModelEntry, calibration) -> None:
    torch.manual_seed(0)
    model = build_model(entry)
    recipe = Recipe((MagnitudePruningConfig(sparsity=0.5, scope="layer"), Int8PTQConfig(calibration_batches=1)))
    recipe.apply(model, RecipeContext(calibration_batches=lambda: iter(calibration), progress=False))
    for module in model.modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            assert int((module.weight == 0).sum()) >= module.weight.numel() // 2


def test_ptq_refuses_what_it_cannot_do(entry: ModelEntry, calibration) -> None:
    with pytest.raises(RecipeError, match="at least one calibration batch"):
        apply_int8_ptq(build_model(entry), [])
    with pytest.raises(RecipeError, match="no nn.Conv1d"):
        apply_int8_ptq(build_model(entry), calibration, keep_fp=(".*",))
    with pytest.raises(RecipeError, match="observer"):
        apply_int8_ptq(build_model(entry), calibration, observer="x")
