"""Int8 variants as real integer graphs: QuantizeLinear / DequantizeLinear (QDQ) around weights and inputs.

The zoo's int8 layers (`zoo.compress.quantization`) simulate int8 in fp32: weights hold the dequantized
int8 values, inputs are fake-quantized to their uint8 grid. For export each one is replaced by a twin
whose weight is the int8 tensor itself (per output channel, symmetric: zero point 0) dequantized in the
graph, and whose input goes through quantize -> dequantize with the layer's own calibrated scale and zero
point. torch's `quantized_decomposed` ops export as ONNX QuantizeLinear / DequantizeLinear, so a runtime
sees where int8 is meant and may run integer kernels there (OpenVINO's low-precision transformations
do for convolutions and matrix products; ONNX Runtime fuses only the patterns it knows). Numerically the
twin computes what the fake-quant layer computes: the same grids, the same rounding (half to even).
"""
from __future__ import annotations

import copy

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed before
from torch import nn                         # the ONNX exporter builds its op registry, which it then caches)
from torch.nn import functional as F

from zoo.compress.quantization import ACT_QMAX, ACT_QMIN, WEIGHT_QMAX, QuantConv1d, QuantConv2d, QuantLinear

_QUANT_TYPES = (QuantConv1d, QuantConv2d, QuantLinear)


class QDQLayer(nn.Module):
    """An int8 conv (1-d or 2-d) or linear layer for export: int8 weight + per-channel scale dequantized in
    the graph, input quantized to uint8 and dequantized with the calibrated scale and zero point."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        scale = layer.weight_scale.detach().float()
        shape = (-1, *([1] * (layer.weight.ndim - 1)))
        q = torch.round(layer.weight.detach().float() / scale.reshape(shape))
        self.register_buffer("weight_int8", q.clamp(-WEIGHT_QMAX, WEIGHT_QMAX).to(torch.int8))
        self.register_buffer("weight_scale", scale.clone())
        self.register_buffer("weight_zero_point", torch.zeros_like(scale, dtype=torch.int64))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.input_scale = float(layer.input_scale)
        self.input_zero_point = int(layer.input_zero_point)
        self.linear = isinstance(layer, QuantLinear)
        if not self.linear:
            self.conv = F.conv1d if isinstance(layer, QuantConv1d) else F.conv2d
            self.stride, self.dilation, self.groups = layer.stride, layer.dilation, layer.groups
            self.padding_mode = layer.padding_mode
            self.padding = layer.padding
            self.pad = layer._reversed_padding_repeated_twice  # F.pad's order, for non-zero padding modes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        xq = qd.quantize_per_tensor(x, self.input_scale, self.input_zero_point, ACT_QMIN, ACT_QMAX, torch.uint8)
        x = qd.dequantize_per_tensor(xq, self.input_scale, self.input_zero_point, ACT_QMIN, ACT_QMAX, torch.uint8)
        weight = qd.dequantize_per_channel(self.weight_int8, self.weight_scale, self.weight_zero_point, 0,
                                           -WEIGHT_QMAX, WEIGHT_QMAX, torch.int8)
        if self.linear:
            return F.linear(x, weight, self.bias)
        if self.padding_mode != "zeros":  # as nn.ConvNd._conv_forward
            x = F.pad(x, self.pad, mode=self.padding_mode)
            return self.conv(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return self.conv(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def has_int8_layers(model: nn.Module) -> bool:
    return any(isinstance(module, _QUANT_TYPES) for module in model.modules())


def to_qdq(model: nn.Module) -> nn.Module:
    """A copy of `model` with every int8 layer replaced by its `QDQLayer` twin (the model is unchanged)."""
    model = copy.deepcopy(model)
    names = [name for name, module in model.named_modules() if isinstance(module, _QUANT_TYPES)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, QDQLayer(getattr(parent, child)))
    return model
