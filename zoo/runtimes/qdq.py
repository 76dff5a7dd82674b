"""Quantized variants as runtime graphs: QuantizeLinear / DequantizeLinear (QDQ) where a layer's arithmetic
is int8, dequantized fp32 weights where it is not.

The zoo's quantized layers simulate their arithmetic in fp32 ("fake-quant"): weights hold dequantized grid
values, inputs are rounded to their grid. For export each one is replaced by an `ExportLayer` twin:

- int8 layers: the int8 PTQ layers (`zoo.compress.quantization`) and the QAT layers (`zoo.compress.lowbit`)
  with 8-bit weights (symmetric, per tensor or per output channel) and 8-bit inputs. The weight is the int8
  code tensor itself, dequantized in the graph with one scale per output channel (zero point 0); the input
  goes through quantize -> dequantize on the layer's own grid: uint8 with the calibrated scale and zero
  point (PTQ); for QAT, [0, alpha] with 255 levels as uint8 with scale alpha / 255, [-alpha, alpha] with
  127 levels as int8 with scale alpha / 127, zero point 0 (QuantizeLinear saturates to [-128, 127]: the
  signed input is first clamped to [-alpha, alpha], so that its codes stay in [-127, 127]). A runtime sees
  where int8 is meant and may run integer kernels there (OpenVINO's low-precision transformations do for
  convolutions and matrix products; ONNX Runtime fuses only the patterns it knows, with the bias in int32
  at scale input_scale x weight_scale, as integer kernels hold it).
- every other QAT layer (4- or 2-bit weights, 4- or 2-bit inputs, or inputs not quantized): its
  dequantized float weight, and its input rounded by plain operations (Div, Round, Clip, Mul: the
  computation of `ActivationQuantSTE`), not QDQ. No runtime here has a 4- or 2-bit convolution kernel;
  ONNX Runtime's MatMulNBits (weight-only 4-bit MatMul) is not used; and a QDQ input in front of a float
  weight is not neutral: ONNX Runtime then quantizes the weight itself to int8 per tensor (its QGemm
  fusion), which is another model. These layers run fp32 kernels; `low_bit_layers` says which and why,
  for the text of the measured path.

Numerically a twin computes what the fake-quant layer computes: the same grids, the same rounding (half to
even in torch.round, ONNX Round and QuantizeLinear).
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed before
from torch import nn                         # the ONNX exporter builds its op registry, which it then caches)
from torch.nn import functional as F

from zoo.compress.lowbit import NO_ACT_QUANT, QAT_LAYERS, activation_levels
from zoo.compress.quantization import ACT_QMAX, ACT_QMIN, WEIGHT_QMAX, QuantConv1d, QuantConv2d, QuantLinear

_PTQ_TYPES = (QuantConv1d, QuantConv2d, QuantLinear)
_QUANT_TYPES = (*_PTQ_TYPES, *QAT_LAYERS)


@dataclass(frozen=True)
class InputGrid:
    """A layer's input quantizer as QuantizeLinear / DequantizeLinear of `dtype` (uint8 or int8) with codes
    in [qmin, qmax]; `clamp` (low, high) is applied to the input first where [qmin, qmax] is narrower than
    the type's range (QuantizeLinear saturates to the type's range, not to the grid's)."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    dtype: torch.dtype
    clamp: tuple[float, float] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        if self.clamp is not None:
            x = torch.clamp(x, *self.clamp)
        q = qd.quantize_per_tensor(x, self.scale, self.zero_point, self.qmin, self.qmax, self.dtype)
        return qd.dequantize_per_tensor(q, self.scale, self.zero_point, self.qmin, self.qmax, self.dtype)


def _act_bits(layer: nn.Module) -> int:
    return 8 if isinstance(layer, _PTQ_TYPES) else int(layer.act_bits)


def weight_bits(layer: nn.Module) -> int:
    """Bits per stored weight code: 8 for int8 PTQ layers and QAT layers without `weight_bits`."""
    return int(layer.weight_bits) if hasattr(layer, "weight_bits") else 8


def runs_as_int8(layer: nn.Module) -> bool:
    """Whether a quantized layer exports as an int8 (QDQ) layer: int8 PTQ, or QAT at 8-bit weights with one
    scale per output channel (or one in all), zero point 0, and 8-bit inputs."""
    if isinstance(layer, _PTQ_TYPES):
        return True
    return (weight_bits(layer) == 8 and layer.weight_scale.ndim <= 1 and not hasattr(layer, "weight_zero_point")
            and _act_bits(layer) == 8)


def input_grid(layer: nn.Module) -> InputGrid:
    """The input quantizer of an int8 layer (`runs_as_int8`) as a QDQ pair."""
    if isinstance(layer, _PTQ_TYPES):
        return InputGrid(float(layer.input_scale), int(layer.input_zero_point), ACT_QMIN, ACT_QMAX, torch.uint8)
    signed = bool(layer.act_signed)
    levels = activation_levels(8, signed)
    alpha = layer.act_alpha.detach().float()
    step = float(alpha / levels)  # float32, as ActivationQuantSTE computes it
    if signed:
        return InputGrid(step, 0, -levels, levels, torch.int8, (-float(alpha), float(alpha)))
    return InputGrid(step, 0, 0, levels, torch.uint8)


class RoundedInput(nn.Module):
    """A QAT layer's input quantizer in plain operations: clamp(round(x / step), low, levels) * step, as
    `ActivationQuantSTE` computes it (step = alpha / levels)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        signed = bool(layer.act_signed)
        self.levels = activation_levels(int(layer.act_bits), signed)
        self.low = -self.levels if signed else 0
        self.register_buffer("step", layer.act_alpha.detach().float() / self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x / self.step), self.low, self.levels) * self.step


class ExportLayer(nn.Module):
    """A quantized conv (1-d or 2-d) or linear layer for export (module docstring): an int8 layer as int8
    weight codes dequantized per output channel in the graph and its input through its QDQ pair; any other
    as its dequantized float weight and its input (if quantized) rounded by `RoundedInput`."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        weight = layer.weight.detach().float()
        self.integer = runs_as_int8(layer)
        self.grid: nn.Module | InputGrid | None = None
        if self.integer:
            self.grid = input_grid(layer)
            scale = layer.weight_scale.detach().float()
            scale = scale.expand(weight.shape[0]).clone() if scale.ndim == 0 else scale.clone()
            q = torch.round(weight / scale.reshape(-1, *([1] * (weight.ndim - 1))))
            self.register_buffer("weight_int8", q.clamp(-WEIGHT_QMAX, WEIGHT_QMAX).to(torch.int8))
            self.register_buffer("weight_scale", scale)
            self.register_buffer("weight_zero_point", torch.zeros_like(scale, dtype=torch.int64))
        else:
            self.register_buffer("weight", weight.clone())
            if _act_bits(layer) != NO_ACT_QUANT:
                self.grid = RoundedInput(layer)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.linear = isinstance(layer, nn.Linear)
        if not self.linear:
            self.conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
            self.stride, self.dilation, self.groups = layer.stride, layer.dilation, layer.groups
            self.padding_mode = layer.padding_mode
            self.padding = layer.padding
            self.pad = layer._reversed_padding_repeated_twice  # F.pad's order, for non-zero padding modes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grid is not None:
            x = self.grid(x)
        if self.integer:
            weight = torch.ops.quantized_decomposed.dequantize_per_channel(
                self.weight_int8, self.weight_scale, self.weight_zero_point, 0, -WEIGHT_QMAX, WEIGHT_QMAX, torch.int8)
        else:
            weight = self.weight
        if self.linear:
            return F.linear(x, weight, self.bias)
        if self.padding_mode != "zeros":  # as nn.ConvNd._conv_forward
            x = F.pad(x, self.pad, mode=self.padding_mode)
            return self.conv(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return self.conv(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The int8 PTQ and QAT layers of `model`, by name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, _QUANT_TYPES)}


def has_int8_layers(model: nn.Module) -> bool:
    """Whether `model` has a layer that exports as an integer (QDQ) layer (`runs_as_int8`)."""
    return any(runs_as_int8(layer) for layer in quantized_layers(model).values())


def has_quantized_layers(model: nn.Module) -> bool:
    """Whether `model` has an int8 PTQ or QAT layer (it exports through `to_qdq`)."""
    return bool(quantized_layers(model))


def quantizes_inputs(model: nn.Module) -> bool:
    """Whether some layer of `model` rounds its input to a grid, at any bit width: its graph is held to the
    agreement rule of quantized graphs (zoo.runtimes.agreement), a runtime's float arithmetic flipping
    roundings as an int8 kernel's does."""
    return any(_act_bits(layer) != NO_ACT_QUANT for layer in quantized_layers(model).values())


def low_bit_layers(model: nn.Module) -> Counter[str]:
    """Why the quantized layers that do not export as int8 layers run fp32 kernels (one reason per layer,
    counted), e.g. "4-bit weights dequantized to fp32, 8-bit inputs rounded in fp32 (no 4-bit kernel in
    this runtime)"."""
    reasons: Counter[str] = Counter()
    for layer in quantized_layers(model).values():
        if runs_as_int8(layer):
            continue
        w, a = weight_bits(layer), _act_bits(layer)
        if a == NO_ACT_QUANT:
            why = f"{w}-bit weights dequantized to fp32, inputs not quantized (no weight-only kernel in this runtime)"
        elif w < 8:
            why = (f"{w}-bit weights dequantized to fp32, {a}-bit inputs rounded in fp32 (no {w}-bit kernel in "
                   "this runtime)")
        else:
            why = f"8-bit weights, {a}-bit inputs rounded in fp32 (no {a}-bit input kernel in this runtime)"
        reasons[why] += 1
    return reasons


def to_qdq(model: nn.Module) -> nn.Module:
    """A copy of `model` with every quantized layer replaced by its `ExportLayer` twin (the model is
    unchanged)."""
    model = copy.deepcopy(model)
    for name in quantized_layers(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, ExportLayer(getattr(parent, child)))
    return model
