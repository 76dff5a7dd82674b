"""The dense form of a quantized model: what `zoo export` writes, and the model that file loads into.

A quantized layer (int8 PTQ, `zoo.compress.quantization`; QAT, `zoo.compress.lowbit`) holds its weight as
the dequantized grid values, plus buffers the plain architecture does not have: the weight's scales, zero
points and bits, and its input quantizer (`input_scale` / `input_zero_point`, `act_bits` / `act_alpha` /
`act_signed`). The dense form keeps the weight and bias and drops those buffers: its state dict has exactly
the plain model's keys, so timm, transformers and `load_state_dict` read it unchanged. What it loses is the
input quantization: a dense model computes what the quantized one does only where no layer rounds its input
(weight-only quantization, `act_bits` 32); the evaluator measures the difference (zoo.evaluation).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

# Buffers of a quantized layer that the plain layer does not have.
QUANT_BUFFERS = ("weight_scale", "weight_zero_point", "weight_bits", "input_scale", "input_zero_point",
                 "act_bits", "act_alpha", "act_signed")
_PLAIN_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def quantized_prefixes(keys: Mapping[str, object] | list[str]) -> set[str]:
    """Module names (with their trailing dot; "" for a root layer) that a state dict marks as quantized:
    they carry a `weight_scale` (int8 PTQ and QAT) or an `act_bits` (QAT)."""
    prefixes = set()
    for key in keys:
        for marker in ("weight_scale", "act_bits"):
            if key == marker or key.endswith("." + marker):
                prefixes.add(key[: -len(marker)])
    return prefixes


def dense_state_dict(state_dict: Mapping[str, torch.Tensor],
                     drop: tuple[str, ...] = QUANT_BUFFERS) -> dict[str, torch.Tensor]:
    """`state_dict` without the quantization buffers (`drop`) of its quantized layers; every other entry,
    the weights (already dequantized) included, as it is. A buffer of that name outside a quantized layer
    (a plain model's own) is kept."""
    prefixes = quantized_prefixes(list(state_dict))
    dense = {}
    for name, tensor in state_dict.items():
        module, dot, leaf = name.rpartition(".")
        if not (leaf in drop and module + dot in prefixes):
            dense[name] = tensor
    return dense


def _plain_twin(layer: nn.Module) -> nn.Module:
    """The plain torch layer (nn.Linear / nn.Conv1d / nn.Conv2d) a quantized one specializes, sharing its
    weight and bias."""
    base = next(t for t in type(layer).__mro__ if t in _PLAIN_TYPES)
    with torch.device("meta"):
        if base is nn.Linear:
            plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
        else:
            plain = base(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
    plain.weight, plain.bias = layer.weight, layer.bias
    return plain.train(layer.training)


def dense_model(model: nn.Module) -> nn.Module:
    """A copy of `model` in which every quantized layer is its plain torch layer with the same (dequantized)
    weight and bias: the model that `dense_state_dict(model.state_dict())` loads into (`model` unchanged)."""
    model = copy.deepcopy(model)
    names = [name for name, module in model.named_modules()
             if isinstance(module, _PLAIN_TYPES) and type(module) not in _PLAIN_TYPES
             and (hasattr(module, "act_bits") or hasattr(module, "input_scale"))]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _plain_twin(getattr(parent, child)))
    return model


def has_quantized_layers(model: nn.Module) -> bool:
    """Whether `model` has a layer whose state carries quantization buffers (its dense form differs)."""
    return bool(quantized_prefixes([name for name, _ in model.named_buffers()]))
