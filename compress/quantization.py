"""Int8 post-training quantization: weights per output channel, symmetric (int8 in [-127, 127] times a
float scale); activations (the input of every quantized layer) affine uint8 with a scale and zero point
found by a calibration pass. Functional form `apply_int8_ptq`, config form `Int8PTQConfig`.

Execution is simulated ("fake-quant"): weights hold exactly the dequantized int8 values and inputs are
rounded to their uint8 grid, so accuracy is what an int8 kernel computes; the checkpoint stores the
weights as int8 + scales (see zoo.compress.formats). Latency is that of fp32 kernels.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from zoo.compress.config import (
    CompressionConfig, check_choice, check_patterns, check_positive, register_config,
)
from zoo.compress.recipe import RecipeContext, handles
from zoo.errors import RecipeError

QUANT_SCHEMES = ("int8",)
OBSERVERS = ("minmax", "percentile")
WEIGHT_QMAX = 127
ACT_QMIN, ACT_QMAX = 0, 255


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: returns (q int8, scale float32 [out_channels]).
    An all-zero channel (fully pruned) gets scale 1 so that it stays exactly zero."""
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    absmax = flat.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / WEIGHT_QMAX, torch.ones_like(absmax))
    q = torch.clamp(torch.round(flat / scale[:, None]), -WEIGHT_QMAX, WEIGHT_QMAX).to(torch.int8)
    return q.reshape(weight.shape), scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.reshape(-1, *([1] * (q.ndim - 1)))


class _InputQuantMixin:
    """Adds the buffers of a quantized layer and fake-quantizes its input once calibrated."""

    weight: nn.Parameter

    def _init_quant_buffers(self) -> None:
        out_channels = self.weight.shape[0]
        self.register_buffer("weight_scale", torch.ones(out_channels))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))
        self.calibrating = False
        self._observed: list[torch.Tensor] = []

    def quantize_weight(self) -> None:
        q, scale = quantize_per_channel(self.weight)
        with torch.no_grad():
            self.weight.copy_(dequantize_per_channel(q, scale))
            self.weight_scale.copy_(scale)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self._observed.append(x.detach().reshape(-1))
            return x
        return torch.fake_quantize_per_tensor_affine(
            x, self.input_scale, self.input_zero_point, ACT_QMIN, ACT_QMAX
        )

    def finish_calibration(self, observer: str, percentile: float) -> None:
        if not self._observed:
            raise RecipeError("a quantized layer saw no input during calibration")
        values = torch.cat(self._observed)
        self._observed = []
        if observer == "minmax":
            low, high = values.min(), values.max()
        else:
            sample = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
            low, high = torch.quantile(sample, torch.tensor([1 - percentile / 100, percentile / 100]))  # one sort
        low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
        scale = torch.clamp((high - low) / (ACT_QMAX - ACT_QMIN), min=1e-8)
        zero_point = torch.clamp(torch.round(-low / scale), ACT_QMIN, ACT_QMAX).to(torch.int32)
        self.input_scale.copy_(scale)
        self.input_zero_point.copy_(zero_point)
        self.calibrating = False


class _QuantConvMixin(_InputQuantMixin):
    """A conv of any dimension (mixed in before nn.ConvNd) with the quantization buffers, whose input
    is fake-quantized before the conv's own forward."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant_buffers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.quantize_input(x))


class QuantConv1d(_QuantConvMixin, nn.Conv1d):
    """nn.Conv1d whose weight is on a per-channel int8 grid and whose input is uint8 fake-quantized."""


class QuantConv2d(_QuantConvMixin, nn.Conv2d):
    """nn.Conv2d whose weight is on a per-channel int8 grid and whose input is uint8 fake-quantized."""


class QuantLinear(_InputQuantMixin, nn.Linear):
    """nn.Linear whose weight is on a per-channel int8 grid and whose input is uint8 fake-quantized."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant_buffers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.weight, self.bias)


_QUANT_CONVS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d}
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _quant_twin(module: nn.Module) -> nn.Module:
    """A Quant* module sharing the parameters of a plain conv / linear module (built on meta, no init)."""
    with torch.device("meta"):
        if type(module) in _QUANT_CONVS:
            twin: nn.Module = _QUANT_CONVS[type(module)](
                module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, module.padding_mode,
            )
        else:
            twin = QuantLinear(module.in_features, module.out_features, module.bias is not None)
    twin.weight, twin.bias = module.weight, module.bias
    for name in ("weight_scale", "input_scale", "input_zero_point"):
        buffer = getattr(twin, name)
        twin.register_buffer(name, torch.zeros_like(buffer, device=module.weight.device))
    twin.weight_scale.fill_(1.0)
    twin.input_scale.fill_(1.0)
    return twin.train(module.training)


def quantizable_layers(model: nn.Module, keep_fp: tuple[str, ...] = ()) -> list[str]:
    """Names of the plain nn.Conv1d / nn.Conv2d / nn.Linear modules not matched by a `keep_fp` pattern."""
    patterns = [re.compile(p) for p in keep_fp]
    return [
        name for name, module in model.named_modules()
        if type(module) in QUANTIZABLE and not any(p.fullmatch(name) for p in patterns)
    ]


def swap_to_quant_modules(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Replaces the named modules by their Quant* twins in place (also used when loading a checkpoint
    whose state dict has `<name>.weight_scale` entries)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _quant_twin(getattr(parent, child)))
    return model


def quantized_layer_names(state_dict_keys: Iterable[str]) -> list[str]:
    """Module names that a state dict marks as int8-quantized (they carry a `weight_scale`)."""
    suffix = ".weight_scale"
    return [key[: -len(suffix)] for key in state_dict_keys if key.endswith(suffix)]


@torch.no_grad()
def calibration_pass(model: nn.Module, batches: Iterable[Any], *, desc: str, step: str, progress: bool) -> None:
    """Runs `model` in eval mode once over every batch of model inputs (a mapping as keyword arguments, a
    tuple as positional arguments, anything else as the one argument), then restores its training mode;
    RecipeError naming `step` when there was no batch."""
    was_training = model.training
    model.eval()
    seen = 0
    for inputs in tqdm(batches, desc=desc, disable=not progress, leave=False):
        if isinstance(inputs, dict):
            model(**inputs)
        elif isinstance(inputs, tuple):
            model(*inputs)
        else:
            model(inputs)
        seen += 1
    model.train(was_training)
    if seen == 0:
        raise RecipeError(f"{step} needs at least one calibration batch")


def apply_int8_ptq(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]],
    *,
    keep_fp: tuple[str, ...] = (),
    observer: str = "minmax",
    percentile: float = 99.99,
    progress: bool = False,
) -> nn.Module:
    """Quantizes weights (int8 per channel, symmetric) and calibrates input (uint8 affine) of every
    conv (1-d, 2-d) / linear layer not matched by `keep_fp`; returns the model, modified in place."""
    check_choice("observer", observer, OBSERVERS)
    names = quantizable_layers(model, keep_fp)
    if not names:
        raise RecipeError("int8 PTQ found no nn.Conv1d / nn.Conv2d / nn.Linear layer to quantize")
    swap_to_quant_modules(model, names)
    layers = [model.get_submodule(n) for n in names]
    for layer in layers:
        layer.quantize_weight()
        layer.calibrating = True
    calibration_pass(model, calibration_batches, desc="calibrate int8", step="int8 PTQ", progress=progress)
    for layer in layers:
        layer.finish_calibration(observer, percentile)
    return model


@register_config
@dataclasses.dataclass(frozen=True)
class Int8PTQConfig(CompressionConfig):
    """Post-training int8: per-channel symmetric weights, calibrated uint8 activations."""

    VERSION = 1
    calibration_batches: int = 8
    observer: str = "minmax"
    percentile: float = 99.99
    keep_fp: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_positive("calibration_batches", self.calibration_batches, integer=True)
        check_choice("observer", self.observer, OBSERVERS)
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 50.0 < p <= 100.0:
            raise RecipeError(f"percentile must be in (50, 100], got {self.percentile}")
        check_patterns("keep_fp", self.keep_fp)


@handles(Int8PTQConfig)
def _int8_ptq(model: nn.Module, config: Int8PTQConfig, context: RecipeContext) -> nn.Module:
    context.require("calibration_batches", step="int8 post-training quantization")
    batches = itertools.islice(context.calibration_batches(), config.calibration_batches)  # stop early
    return apply_int8_ptq(model, batches, keep_fp=config.keep_fp, observer=config.observer,
                          percentile=config.percentile, progress=context.progress)
