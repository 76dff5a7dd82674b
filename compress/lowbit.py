"""Low-bit quantization-aware training: weight grids at 8, 4 and 2 bits (and binary / ternary),
straight-through estimators for quantized activations, and BCGD (Yin et al. 2018) for the weights.
Functional form `apply_qat`, config form `QATConfig`. The core knows no family: any model whose
conv (1-d, 2-d) and linear layers are plain torch modules.

Weight grids (`quantize` / `dequantize`), each over a "unit" of weights that shares one scale:
granularity "tensor" (the whole weight), "channel" (one output channel, dim 0) or "group"
(`group_size` consecutive input channels, dim 1, of one output channel, with all their kernel
positions: a weight [out, in, *k] is viewed as [out, in / group_size, group_size * prod(k)]).

- b in {2, 4, 8} bits, symmetric: codes in [-(2^(b-1) - 1), 2^(b-1) - 1], scale = absmax / qmax.
  The most negative code -2^(b-1) is not used: the grid stays symmetric (w and -w quantize to opposite
  codes, zero is exact) and the int8 grid is the one of `zoo.compress.quantization` ([-127, 127]). At 2
  bits that leaves three levels {-s, 0, s}.
- b in {2, 4, 8} bits, affine (`symmetric=False`): codes in [0, 2^b - 1], w ~ (code - zero_point) * scale
  with scale = (max - min) / (2^b - 1) over the unit's range widened to contain 0, and zero_point =
  round(-min / scale), so that zero is exact.
- binary (`bits=1`, BinaryConnect / XNOR-Net): codes in {-1, +1} (sign, +1 at 0), scale a = mean |w|
  of the unit (the L2-optimal scale of sign(w)).
- ternary (`bits="ternary"`, TWN, Li & Liu 2016): threshold d = 0.7 mean |w|; codes sign(w) where
  |w| > d, else 0; scale a = mean |w| over the weights above the threshold (the L2-optimal scale for that
  support). Its codes are those of the 2-bit symmetric grid; only the scale rule differs.

A unit of zeros gets scale 1 (zero point 0) on the b-bit grids and scale 0 on the binary one, so it stays
exactly zero. Rounding is to nearest, ties to even (torch.round).

Weight ranges (`weight_range`, b-bit grids only): "absmax" uses the unit's whole range as above; "mse"
shrinks it (absmax, or min and max, times the ratio of `MSE_CLIP_RATIOS`) to the one with the least
squared rounding error of the unit, clipping its largest weights: at 2 bits the whole range rounds most
weights of a unit to zero. QAT calibrates an "mse" range once, on the weights it starts from, and keeps it.

Activations (`ActivationQuant`): the input of every quantized layer, b bits uniform on [0, alpha] (levels
k alpha / (2^b - 1)) when calibration saw no negative input, else on [-alpha, alpha] (levels
k alpha / (2^(b-1) - 1), |k| <= 2^(b-1) - 1), alpha the `act_percentile` percentile of |x| over the
calibration batches. The backward pass uses the derivative of a proxy (Yin et al. 2019) aligned with the
quantizer's range [lo, hi] (lo = 0 or -alpha, hi = alpha): "identity" passes the gradient, "relu" passes
it where x > lo, "clipped_relu" where lo < x < hi. On the unsigned range these are the paper's proxies.

The layers left by `apply_qat` (`QATLinear`, `QATConv1d`, `QATConv2d`) hold their final weights on the
grid (dequantized floats: `weight == dequantize_weight(codes, weight_scale, weight_zero_point)`) and the
buffers of the checkpoint format's low-bit contract (`zoo.compress.formats`), so that saving one stores its
codes packed and loading it rebuilds the layer (`swap_to_qat_modules`):

- `weight_scale` float32: shape [] (tensor), [out] (channel) or [out, in / group_size] (group); the
  granularity and group size are read back from this shape.
- `weight_zero_point` int32, the shape of `weight_scale`: on affine grids only.
- `weight_bits` int32 []: bits per stored code, 4 or 2 (binary and ternary codes are stored as 2-bit
  ones); absent at 8 bits, whose weights are the format's int8 ones (per tensor or per channel,
  symmetric: `STORED_8BIT` says why the other 8-bit grids cannot be stored).
- `act_bits` int32 [] (32: input not quantized), `act_alpha` float32 [] and `act_signed` bool []: the
  input quantizer. `act_bits` marks a layer as a QAT layer in a state dict (int8 PTQ layers carry
  `input_scale` instead).
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from zoo.compress.config import (
    CompressionConfig, check_choice, check_patterns, check_positive, register_config,
)
from zoo.compress.quantization import calibration_pass
from zoo.compress.recipe import RecipeContext, handles
from zoo.errors import InvalidArgumentError, RecipeError
from zoo.training import train

WeightBits = int | str
WEIGHT_BITS: tuple[WeightBits, ...] = (1, 2, 4, 8, "ternary")
ACT_BITS = (2, 4, 8, 32)
GRANULARITIES = ("tensor", "channel", "group")
STE_PROXIES = ("identity", "relu", "clipped_relu")
WEIGHT_UPDATES = ("ste", "bcgd")
TERNARY_THRESHOLD = 0.7
WEIGHT_RANGES = ("absmax", "mse")
# "mse" ranges: each unit's range (absmax, or [min, max] widened to 0) times the ratio of these that gives
# the least squared rounding error; at 2 bits the full range rounds most weights of a unit to zero.
MSE_CLIP_RATIOS = tuple(k / 20 for k in range(2, 21))  # 0.10, 0.15, ..., 1.00
NO_ACT_QUANT = 32


# Weight grids ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes (int8 on symmetric, binary and ternary grids; uint8 on affine ones, same shape as
    the weight), one scale per unit and, on an affine grid, one zero point per unit (else None).
    `scale` has shape [] (tensor), [out] (channel) or [out, in / group_size] (group)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None

    def dequantize(self) -> torch.Tensor:
        return dequantize_weight(self.codes, self.scale, self.zero_point)


def check_weight_bits(bits: Any, *, error: type[Exception] = InvalidArgumentError) -> None:
    if isinstance(bits, bool) or bits not in WEIGHT_BITS:
        raise error(f"weight bits must be one of {', '.join(map(repr, WEIGHT_BITS))} (1: binary); got {bits!r}")


def check_grid(bits: WeightBits, granularity: str, group_size: int, symmetric: bool, weight_range: str = "absmax",
               *, error: type[Exception] = InvalidArgumentError) -> None:
    """Validates a grid's settings (raises `error`): group_size >= 1 with granularity 'group', 0 else."""
    check_weight_bits(bits, error=error)
    if weight_range not in WEIGHT_RANGES:
        raise error(f"weight_range must be one of {', '.join(map(repr, WEIGHT_RANGES))}; got {weight_range!r}")
    if weight_range != "absmax" and bits in (1, "ternary"):
        raise error(f"binary and ternary grids have their own scale rule: weight_range {weight_range!r} does not apply")
    if granularity not in GRANULARITIES:
        raise error(f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}; got {granularity!r}")
    if not isinstance(symmetric, bool):
        raise error(f"symmetric must be True or False, got {symmetric!r}")
    if not symmetric and bits in (1, "ternary"):
        raise error(f"binary and ternary grids are symmetric: {bits!r} with symmetric=False is not a grid")
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise error(f"group_size must be an integer, got {group_size!r}")
    if granularity == "group" and group_size < 1:
        raise error(f"granularity 'group' needs group_size >= 1, got {group_size}")
    if granularity != "group" and group_size != 0:
        raise error(f"group_size is only used with granularity 'group' (got {group_size} with {granularity!r}); "
                    "leave it 0")


def _units(weight: torch.Tensor, granularity: str, group_size: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The weight as a 2-D [units, elements] float32 view and the shape of its scale."""
    w = weight.detach().float()
    if granularity == "tensor":
        return w.reshape(1, -1), ()
    if w.ndim < 2:
        raise InvalidArgumentError(f"granularity {granularity!r} needs a weight of at least 2 dimensions, "
                                   f"got shape {list(w.shape)}")
    out = w.shape[0]
    if granularity == "channel":
        return w.reshape(out, -1), (out,)
    if w.shape[1] % group_size:
        raise InvalidArgumentError(f"group_size {group_size} does not divide the {w.shape[1]} input channels "
                                   f"of a weight of shape {list(w.shape)}")
    groups = w.shape[1] // group_size
    return w.reshape(out * groups, -1), (out, groups)


def quantize_weight(weight: torch.Tensor, bits: WeightBits, *, granularity: str = "channel", group_size: int = 0,
                    symmetric: bool = True, weight_range: str = "absmax", scale: torch.Tensor | None = None,
                    zero_point: torch.Tensor | None = None) -> QuantizedWeight:
    """Projects `weight` onto a grid (see the module docstring); returns its codes, scales and zero points.
    `weight_range` "mse" clips each unit's range (see `MSE_CLIP_RATIOS`) where that lowers the unit's
    squared rounding error; a given `scale` (and, affine, `zero_point`) is used as it is instead."""
    check_grid(bits, granularity, group_size, symmetric, weight_range)
    units, scale_shape = _units(weight, granularity, group_size)
    if scale is not None:
        if tuple(scale.shape) != scale_shape or (zero_point is None) != symmetric or bits in (1, "ternary"):
            raise InvalidArgumentError(f"a given scale must have shape {list(scale_shape)}, with a zero point exactly "
                                       "on affine grids, and binary / ternary grids take none")
        scale_u = scale.detach().float().reshape(-1).to(units.device)
        zero_u = None if zero_point is None else zero_point.reshape(-1).to(units.device).float()
        codes = _round_to_grid(units, bits, symmetric, scale_u, zero_u)
        return _quantized(codes, scale_u, zero_u, weight.shape, scale_shape, symmetric)
    if bits == 1:
        scale_u = units.abs().mean(dim=1)
        codes = torch.where(units >= 0, 1, -1)
        return _quantized(codes, scale_u, None, weight.shape, scale_shape, symmetric)
    if bits == "ternary":
        absw = units.abs()
        above = absw > TERNARY_THRESHOLD * absw.mean(dim=1, keepdim=True)
        count = above.sum(dim=1)
        scale_u = torch.where(count > 0, (absw * above).sum(dim=1) / count.clamp(min=1),
                              torch.ones_like(count, dtype=units.dtype))
        return _quantized(torch.sign(units) * above, scale_u, None, weight.shape, scale_shape, symmetric)
    ratios = MSE_CLIP_RATIOS if weight_range == "mse" else (1.0,)
    best_error = best_scale = best_zero = None
    for ratio in ratios:
        scale_u, zero_u = _range_scale(units, bits, symmetric, ratio)
        codes = _round_to_grid(units, bits, symmetric, scale_u, zero_u)
        if len(ratios) == 1:
            return _quantized(codes, scale_u, zero_u, weight.shape, scale_shape, symmetric)
        error = ((_dequantize_units(codes, scale_u, zero_u) - units) ** 2).sum(dim=1)
        if best_error is None:
            best_error, best_scale, best_zero = error, scale_u, zero_u
            continue
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, scale_u, best_scale)
        best_zero = None if zero_u is None else torch.where(better, zero_u, best_zero)
    codes = _round_to_grid(units, bits, symmetric, best_scale, best_zero)
    return _quantized(codes, best_scale, best_zero, weight.shape, scale_shape, symmetric)


def _range_scale(units: torch.Tensor, bits: int, symmetric: bool, ratio: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each unit's scale (and, affine, zero point as a float) for its range shrunk by `ratio`."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        absmax = units.abs().amax(dim=1) * ratio
        return torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax)), None
    qmax = 2 ** bits - 1
    low = units.amin(dim=1).clamp(max=0.0) * ratio
    high = units.amax(dim=1).clamp(min=0.0) * ratio
    scale = torch.where(high > low, (high - low) / qmax, torch.ones_like(high))
    return scale, torch.clamp(torch.round(-low / scale), 0, qmax)


def _round_to_grid(units: torch.Tensor, bits: WeightBits, symmetric: bool, scale: torch.Tensor,
                   zero: torch.Tensor | None) -> torch.Tensor:
    """Codes of `units` [U, E] on a b-bit grid of per-unit `scale` (and `zero`), rounded to nearest, clamped."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    if symmetric:
        qmax = 1 if bits in (1, "ternary") else 2 ** (bits - 1) - 1
        return torch.clamp(torch.round(units / safe), -qmax, qmax)
    return torch.clamp(torch.round(units / safe) + zero[:, None], 0, 2 ** bits - 1)


def _dequantize_units(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    return ((codes if zero is None else codes - zero[:, None]) * scale[:, None])


def _quantized(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, shape: torch.Size,
               scale_shape: tuple[int, ...], symmetric: bool) -> QuantizedWeight:
    dtype = torch.int8 if symmetric else torch.uint8
    zero_point = None if zero is None else zero.to(torch.int32).reshape(scale_shape)
    return QuantizedWeight(codes.to(dtype).reshape(shape), scale.float().reshape(scale_shape), zero_point)


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 weights `(codes - zero_point) * scale`; the granularity is read from `scale`'s shape."""
    q = codes.float()
    if zero_point is not None and zero_point.shape != scale.shape:
        raise InvalidArgumentError(f"zero_point has shape {list(zero_point.shape)}, scale {list(scale.shape)}")
    if scale.ndim == 0:
        return (q - (0 if zero_point is None else zero_point.float())) * scale
    if scale.ndim == 1:
        units = q.reshape(scale.shape[0], -1)
    elif scale.ndim == 2 and codes.ndim >= 2 and codes.shape[1] % scale.shape[1] == 0:
        units = q.reshape(scale.numel(), -1)
    else:
        raise InvalidArgumentError(f"a scale of shape {list(scale.shape)} does not fit codes of shape {list(codes.shape)}")
    if scale.shape[0] != codes.shape[0]:
        raise InvalidArgumentError(f"a scale of shape {list(scale.shape)} does not fit codes of shape {list(codes.shape)}")
    if zero_point is not None:
        units = units - zero_point.reshape(-1, 1).float()
    return (units * scale.reshape(-1, 1)).reshape(codes.shape)


def code_range(bits: WeightBits, symmetric: bool) -> tuple[int, int, int]:
    """(bits per stored code, smallest code, largest code) of a grid: binary and ternary codes are stored
    in the checkpoint format's 2-bit fields (its narrowest)."""
    check_weight_bits(bits)
    if bits in (1, "ternary"):
        return 2, -1, 1
    return (bits, -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (bits, 0, 2 ** bits - 1)


@dataclasses.dataclass(frozen=True)
class WeightGrid:
    """The settings of a weight grid, validated once; `project(w)` is `dequantize_weight(quantize_weight(w))`."""

    bits: WeightBits
    granularity: str = "channel"
    group_size: int = 0
    symmetric: bool = True
    weight_range: str = "absmax"

    def __post_init__(self) -> None:
        check_grid(self.bits, self.granularity, self.group_size, self.symmetric, self.weight_range)

    def quantize(self, weight: torch.Tensor, scale: torch.Tensor | None = None,
                 zero_point: torch.Tensor | None = None) -> QuantizedWeight:
        return quantize_weight(weight, self.bits, granularity=self.granularity, group_size=self.group_size,
                               symmetric=self.symmetric, weight_range=self.weight_range, scale=scale,
                               zero_point=zero_point)

    def project(self, weight: torch.Tensor) -> torch.Tensor:
        return self.quantize(weight).dequantize().to(weight.dtype)


# Straight-through estimators ---------------------------------------------------------------------

class WeightFakeQuant(torch.autograd.Function):
    """Forward: the weight projected by `project` (a `WeightGrid.project`, or a QAT layer's own with its
    calibrated range); backward: the identity (straight-through), so the gradient of the float weight is
    the coarse gradient taken at the quantized weight."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return project(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def activation_levels(bits: int, signed: bool) -> int:
    """The largest code of a b-bit activation grid: 2^b - 1 on [0, alpha], 2^(b-1) - 1 on [-alpha, alpha]."""
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


class ActivationQuantSTE(torch.autograd.Function):
    """Forward: x rounded to the b-bit uniform grid on [0, alpha] (or [-alpha, alpha] when `signed`),
    clamped to it. Backward: the derivative of the proxy `proxy` on that range [lo, hi] (module docstring);
    alpha gets no gradient (it is calibrated)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, bits: int, proxy: str, signed: bool) -> torch.Tensor:
        levels = activation_levels(bits, signed)
        step = alpha / levels
        low = -levels if signed else 0
        ctx.save_for_backward(x, alpha)
        ctx.proxy, ctx.signed = proxy, signed
        return torch.clamp(torch.round(x / step), low, levels) * step

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        x, alpha = ctx.saved_tensors
        low = -alpha if ctx.signed else torch.zeros_like(alpha)
        if ctx.proxy == "identity":
            return grad, None, None, None, None
        if ctx.proxy == "relu":
            return grad * (x > low), None, None, None, None
        return grad * ((x > low) & (x < alpha)), None, None, None, None


def quantize_activation(x: torch.Tensor, alpha: torch.Tensor | float, bits: int, proxy: str = "clipped_relu",
                        *, signed: bool = False) -> torch.Tensor:
    """`ActivationQuantSTE` with its arguments checked."""
    if isinstance(bits, bool) or bits not in ACT_BITS[:-1]:
        raise InvalidArgumentError(f"activation bits must be one of {ACT_BITS[:-1]}, got {bits!r}")
    check_choice("proxy", proxy, STE_PROXIES)
    alpha_t = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
    if not bool(alpha_t > 0):
        raise InvalidArgumentError(f"alpha must be > 0, got {float(alpha_t)}")
    return ActivationQuantSTE.apply(x, alpha_t, bits, proxy, signed)


# BCGD --------------------------------------------------------------------------------------------

@torch.no_grad()
def bcgd_step(float_weights: Iterable[torch.Tensor], grads_at_quantized: Iterable[torch.Tensor], lr: float,
              rho: float, quantize_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """One BCGD update of each float weight, in place (Yin et al. 2018):
    w <- (1 - rho) w + rho Q(w) - lr * g, with Q = `quantize_fn` (the projection, returning dequantized
    floats) and g the coarse gradient taken at Q(w). rho = 0 is BinaryConnect."""
    weights, grads = list(float_weights), list(grads_at_quantized)
    if len(weights) != len(grads):
        raise InvalidArgumentError(f"{len(weights)} weights but {len(grads)} gradients")
    if not 0.0 <= rho <= 1.0:
        raise InvalidArgumentError(f"rho must be in [0, 1], got {rho}")
    for w, g in zip(weights, grads):
        if g.shape != w.shape:
            raise InvalidArgumentError(f"a gradient of shape {list(g.shape)} for a weight of shape {list(w.shape)}")
        projected = quantize_fn(w)
        w.mul_(1.0 - rho).add_(projected, alpha=rho).add_(g, alpha=-lr)


# Fake-quant layers -------------------------------------------------------------------------------

def check_storable(grid: WeightGrid, *, error: type[Exception] = InvalidArgumentError) -> None:
    """Raises `error` for a grid the checkpoint format cannot store packed (see `STORED_8BIT`)."""
    if grid.bits == 8 and (grid.granularity == "group" or not grid.symmetric):
        raise error(f"8-bit weights are stored per tensor or per channel, symmetric ({STORED_8BIT}); "
                    f"got granularity {grid.granularity!r}, symmetric={grid.symmetric}")


STORED_8BIT = ("the checkpoint format's int8 encoding and the int8 kernels of the runtimes take one scale per "
               "output channel and zero point 0; per-group and affine grids are stored packed at 4 and 2 bits")


class _QATMixin:
    """Weight fake-quant (identity STE) and input quantization (`ActivationQuantSTE`) around a layer's
    own computation; buffers as in the module docstring. `finalize()` puts the weight on its grid and
    stops re-quantizing it in the forward pass. A layer rebuilt from a checkpoint (`frozen`) has no grid:
    its weight stays as loaded."""

    weight: nn.Parameter

    def _setup(self, grid: WeightGrid | None, act_bits: int, proxy: str, *, scale_shape: tuple[int, ...],
               stored_bits: int, affine: bool) -> None:
        device = self.weight.device
        self.grid, self.proxy = grid, proxy
        self.register_buffer("weight_scale", torch.ones(scale_shape, device=device))
        if affine:
            self.register_buffer("weight_zero_point", torch.zeros(scale_shape, dtype=torch.int32, device=device))
        if stored_bits < 8:
            self.register_buffer("weight_bits", torch.tensor(stored_bits, dtype=torch.int32, device=device))
        self.register_buffer("act_bits", torch.tensor(act_bits, dtype=torch.int32, device=device))
        self.register_buffer("act_alpha", torch.ones((), device=device))
        self.register_buffer("act_signed", torch.zeros((), dtype=torch.bool, device=device))
        self.calibrating = False
        self.finalized = grid is None
        self._observed: list[torch.Tensor] = []
        self._saw_negative = False
        self.fixed_range = grid is not None and grid.weight_range != "absmax"
        if self.fixed_range:  # ranges calibrated once, on the weights QAT starts from
            q = grid.quantize(self.weight)
            with torch.no_grad():
                self.weight_scale.copy_(q.scale)
                if q.zero_point is not None:
                    self.weight_zero_point.copy_(q.zero_point)

    def quantize_current(self, weight: torch.Tensor) -> QuantizedWeight:
        """`weight` on this layer's grid: with its own range, or the one calibrated at the start."""
        if self.fixed_range:
            return self.grid.quantize(weight, self.weight_scale, getattr(self, "weight_zero_point", None))
        return self.grid.quantize(weight)

    def project(self, weight: torch.Tensor) -> torch.Tensor:
        return self.quantize_current(weight).dequantize().to(weight.dtype)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight if self.finalized else WeightFakeQuant.apply(self.weight, self.project)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if int(self.act_bits) == NO_ACT_QUANT:
            return x
        if self.calibrating:
            self._observed.append(x.detach().abs().reshape(-1))
            self._saw_negative = self._saw_negative or bool((x < 0).any())
            return x
        return ActivationQuantSTE.apply(x, self.act_alpha.to(x.dtype), int(self.act_bits), self.proxy,
                                        bool(self.act_signed))

    def finish_calibration(self, percentile: float, name: str) -> None:
        if not self._observed:
            raise RecipeError(f"QAT: layer {name!r} saw no input during calibration")
        values = torch.cat(self._observed)
        self._observed = []
        sample = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000].to(values.device)]
        alpha = torch.quantile(sample.float(), percentile / 100.0)
        self.act_alpha.copy_(torch.clamp(alpha, min=1e-8))
        self.act_signed.fill_(self._saw_negative)
        self.calibrating = False

    @torch.no_grad()
    def finalize(self, quantized: QuantizedWeight | None = None) -> None:
        """Puts the weight on its grid (`quantized`, e.g. chosen by GPTQ, or the nearest grid point) and
        fills the weight buffers; the layer stops re-quantizing its weight."""
        if self.grid is None:
            raise RecipeError("a QAT layer loaded from a checkpoint is frozen on its grid")
        q = self.quantize_current(self.weight) if quantized is None else quantized
        if q.scale.shape != self.weight_scale.shape:
            raise InvalidArgumentError(f"a quantized weight with scales of shape {list(q.scale.shape)} for a layer "
                                       f"whose grid has {list(self.weight_scale.shape)}")
        self.weight.copy_(q.dequantize().to(self.weight.dtype))
        self.weight_scale.copy_(q.scale)
        if q.zero_point is not None:
            self.weight_zero_point.copy_(q.zero_point)
        self.finalized = True


class QATLinear(_QATMixin, nn.Linear):
    """nn.Linear with fake-quantized weight and input (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


class QATConv1d(_QATMixin, nn.Conv1d):
    """nn.Conv1d with fake-quantized weight and input (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


class QATConv2d(_QATMixin, nn.Conv2d):
    """nn.Conv2d with fake-quantized weight and input (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


_TWINS: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: QATLinear, nn.Conv1d: QATConv1d, nn.Conv2d: QATConv2d}
QAT_LAYERS = (QATLinear, QATConv1d, QATConv2d)


def _qat_twin(module: nn.Module, grid: WeightGrid | None, act_bits: int, proxy: str, *,
              scale_shape: tuple[int, ...] | None = None, stored_bits: int = 0, affine: bool = False) -> nn.Module:
    """A QAT* module sharing the parameters of a plain conv / linear module (built on meta, no init), on
    `grid`, or frozen (`grid` None) with the weight buffers' shape and kind given."""
    with torch.device("meta"):
        if isinstance(module, nn.Linear):
            twin: nn.Module = QATLinear(module.in_features, module.out_features, module.bias is not None)
        else:
            twin = _TWINS[type(module)](
                module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, module.padding_mode,
            )
    twin.weight, twin.bias = module.weight, module.bias
    if grid is not None:
        _, scale_shape = _units(module.weight, grid.granularity, grid.group_size)
        stored_bits, affine = code_range(grid.bits, grid.symmetric)[0], not grid.symmetric
    twin._setup(grid, act_bits, proxy, scale_shape=scale_shape, stored_bits=stored_bits, affine=affine)
    return twin.train(module.training)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def qat_layer_names(state_dict_keys: Iterable[str]) -> list[str]:
    """Module names that a state dict marks as QAT layers (they carry an `act_bits`)."""
    suffix = ".act_bits"
    return [key[: -len(suffix)] for key in state_dict_keys if key.endswith(suffix)]


def swap_to_qat_modules(model: nn.Module, state_dict: dict[str, torch.Tensor], names: Iterable[str]) -> nn.Module:
    """Replaces the named plain conv / linear modules by frozen QAT twins whose buffers have the shapes
    `state_dict` gives them (loading a checkpoint; the proxy of their activation STE is clipped ReLU)."""
    for name in names:
        module = model.get_submodule(name)
        if type(module) not in _TWINS:
            raise RecipeError(f"the state dict has a QAT layer {name!r}, the model a {type(module).__name__} there")
        bits = state_dict.get(f"{name}.weight_bits")
        scale = state_dict.get(f"{name}.weight_scale")
        act_bits = state_dict.get(f"{name}.act_bits")
        if scale is None or act_bits is None or act_bits.numel() != 1:
            raise RecipeError(f"QAT layer {name!r}: the state dict lacks its weight_scale or a one-element act_bits")
        _replace(model, name, _qat_twin(module, None, int(act_bits.reshape(())), "clipped_relu",
                                        scale_shape=tuple(scale.shape), stored_bits=8 if bits is None else int(bits),
                                        affine=f"{name}.weight_zero_point" in state_dict))
    return model


def qat_layers(model: nn.Module, keep_fp: tuple[str, ...] = ()) -> list[str]:
    """Names of the plain nn.Linear / nn.Conv1d / nn.Conv2d modules not matched by a `keep_fp` pattern."""
    patterns = [re.compile(p) for p in keep_fp]
    return [name for name, module in model.named_modules()
            if type(module) in _TWINS and not any(p.fullmatch(name) for p in patterns)]


def to_qat_layers(model: nn.Module, grid: WeightGrid, bits_a: int, proxy: str, keep_fp: tuple[str, ...] = (),
                  *, step: str) -> dict[str, _QATMixin]:
    """Swaps every plain conv / linear layer not matched by `keep_fp` for its QAT twin on `grid` (inputs
    at `bits_a` bits, STE `proxy`), in place; returns the twins by name. RecipeError naming `step` when
    there is no such layer or one whose weight does not split into the grid's groups."""
    names = qat_layers(model, keep_fp)
    if not names:
        raise RecipeError(f"{step} found no nn.Linear / nn.Conv1d / nn.Conv2d layer to quantize")
    for name in names:
        try:
            _units(model.get_submodule(name).weight, grid.granularity, grid.group_size)
        except InvalidArgumentError as err:
            raise RecipeError(f"{step} cannot quantize layer {name!r}: {err} (keep it in float with keep_fp)") from None
    for name in names:
        _replace(model, name, _qat_twin(model.get_submodule(name), grid, bits_a, proxy))
    return {name: model.get_submodule(name) for name in names}


@torch.no_grad()
def calibrate_inputs(model: nn.Module, layers: dict[str, _QATMixin], batches: Iterable[Any], percentile: float,
                     progress: bool) -> None:
    """Sets each layer's `act_alpha` / `act_signed` from its inputs over `batches` (weights as the
    layers compute them now: fake-quantized, or final once finalized)."""
    for layer in layers.values():
        layer.calibrating = True
    calibration_pass(model, batches, desc="calibrate low-bit inputs", step="quantizing activations",
                     progress=progress)
    for name, layer in layers.items():
        layer.finish_calibration(percentile, name)


def apply_qat(
    model: nn.Module,
    context: RecipeContext,
    *,
    bits_w: WeightBits = 4,
    bits_a: int = 8,
    granularity: str = "channel",
    group_size: int = 0,
    symmetric: bool = True,
    weight_range: str = "absmax",
    ste: str = "clipped_relu",
    weight_update: str = "ste",
    rho: float = 0.0,
    epochs: int = 3,
    lr: float = 0.01,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    optimizer: str = "sgd",
    calibration_batches: int = 8,
    act_percentile: float = 99.99,
    keep_fp: tuple[str, ...] = (),
    keep_zeros: bool = True,
) -> nn.Module:
    """Quantization-aware training of `model` in place; returns it.

    Every nn.Linear / nn.Conv1d / nn.Conv2d not matched by `keep_fp` becomes a QAT* layer: its weight is
    projected on the grid (`bits_w`, `granularity`, `group_size`, `symmetric`) in the forward pass, with
    an identity STE: with `weight_range` "absmax" each step's own range, with "mse" the least-error
    clipped range calibrated once on the weights QAT starts from, then fixed; with `bits_a` < 32 its input is quantized by `ActivationQuantSTE` (proxy `ste`) with
    alpha calibrated on the first `calibration_batches` of `context.calibration_batches()` (float
    activations, fake-quantized weights). Then `zoo.training.train` fine-tunes the float weights:

    - `weight_update="ste"`: the optimizer steps the float weights with the coarse gradient (BinaryConnect,
      with the optimizer's momentum and weight decay); `rho` must be 0.
    - `weight_update="bcgd"`: train's `before_step` hook applies `bcgd_step` to the quantized layers'
      weights with the scheduled learning rate and then clears their gradients, so that the optimizer
      (which steps biases and every other parameter) leaves them alone: plain BCGD, no momentum or weight
      decay on those weights; rho = 0 is BinaryConnect.

    With `keep_zeros` (the default) the weights that are exactly zero when QAT starts (a pruned model's)
    stay zero: they are zeroed again after every optimizer step and quantize to an exact zero, so a sparse
    variant stays as sparse at low bits (a binary grid has no zero: refused for a model with zeros).
    Finally each layer's weight is put on its grid and the buffers are filled (module docstring).
    """
    check_storable(WeightGrid(bits_w, granularity, group_size, symmetric, weight_range))
    _check_qat(bits_a=bits_a, ste=ste, weight_update=weight_update, rho=rho, epochs=epochs, lr=lr,
               weight_decay=weight_decay, momentum=momentum, calibration_batches=calibration_batches,
               act_percentile=act_percentile, keep_fp=keep_fp, error=InvalidArgumentError)
    context.require("train_batches", "loss_fn", step="quantization-aware training")
    if bits_a != NO_ACT_QUANT:
        context.require("calibration_batches", step="quantization-aware training with quantized activations")
    grid = WeightGrid(bits_w, granularity, group_size, symmetric, weight_range)
    layers = to_qat_layers(model, grid, bits_a, ste, keep_fp, step="QAT")
    if bits_a != NO_ACT_QUANT:
        calibrate_inputs(model, layers, itertools.islice(context.calibration_batches(), calibration_batches),
                         act_percentile, context.progress)

    before_step = None
    if weight_update == "bcgd":
        def before_step(step: int, opt: torch.optim.Optimizer) -> None:
            lrs = {id(p): group["lr"] for group in opt.param_groups for p in group["params"]}
            for layer in layers.values():
                w = layer.weight
                if w.grad is not None:
                    bcgd_step([w], [w.grad], lrs[id(w)], rho, layer.project)
                    w.grad = None

    after_step = _zero_keeper(layers, bits_w) if keep_zeros else None
    label = f"QAT w{bits_w}a{bits_a}" + (f" BCGD rho={rho:g}" if weight_update == "bcgd" else "")
    train(model, context.train_batches, context.loss_fn, epochs=epochs, lr=lr, weight_decay=weight_decay,
          momentum=momentum, optimizer=optimizer, before_step=before_step, after_step=after_step,
          progress=context.progress, desc=label)
    for layer in layers.values():
        layer.finalize()
    return model


def _zero_keeper(layers: dict[str, _QATMixin], bits_w: WeightBits) -> Callable[[int], None] | None:
    """An `after_step` hook re-zeroing the weights that are zero now (None when no layer has any)."""
    masks = {name: layer.weight.detach() != 0 for name, layer in layers.items()}
    masks = {name: mask for name, mask in masks.items() if not bool(mask.all())}
    if not masks:
        return None
    if bits_w == 1:
        raise RecipeError(f"a binary grid has no zero, and layers {sorted(masks)[:3]} have pruned (zero) weights: "
                          "quantize a sparse model to ternary or 2-bit weights, or pass keep_zeros=False")

    @torch.no_grad()
    def after_step(step: int) -> None:
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)

    return after_step


def _check_qat(*, bits_a: Any, ste: Any, weight_update: Any, rho: Any, epochs: Any, lr: Any, weight_decay: Any,
               momentum: Any, calibration_batches: Any, act_percentile: Any, keep_fp: Any,
               error: type[Exception]) -> None:
    with errors_as(error):
        check_input_quantization(bits_a, act_percentile, keep_fp)
        check_choice("ste", ste, STE_PROXIES)
        check_choice("weight_update", weight_update, WEIGHT_UPDATES)
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
            raise RecipeError(f"rho must be a number in [0, 1], got {rho!r}")
        if weight_update == "ste" and rho != 0:
            raise RecipeError(f"rho = {rho} is a BCGD setting: use weight_update='bcgd' (rho = 0 there is BinaryConnect)")
        check_positive("epochs", epochs, integer=True)
        check_positive("lr", lr)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        check_positive("momentum", momentum, allow_zero=True)
        check_positive("calibration_batches", calibration_batches, integer=True)


def check_input_quantization(bits_a: Any, act_percentile: Any, keep_fp: Any) -> None:
    """RecipeError unless `bits_a` is an activation width (32: inputs float), `act_percentile` in (50, 100]
    and `keep_fp` a tuple of regular expressions: the settings QAT and PTQ share."""
    if isinstance(bits_a, bool) or bits_a not in ACT_BITS:
        raise RecipeError(f"bits_a must be one of {ACT_BITS} (32: activations not quantized), got {bits_a!r}")
    p = act_percentile
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 50.0 < p <= 100.0:
        raise RecipeError(f"act_percentile must be in (50, 100], got {act_percentile!r}")
    check_patterns("keep_fp", keep_fp)


@contextmanager
def errors_as(error: type[Exception]) -> Iterator[None]:
    """Re-raises a RecipeError from the block as `error` (validation shared by a functional form, which
    raises InvalidArgumentError, and its config, which raises RecipeError)."""
    try:
        yield
    except RecipeError as err:
        if error is RecipeError:
            raise
        raise error(str(err)) from None


@register_config
@dataclasses.dataclass(frozen=True)
class QATConfig(CompressionConfig):
    """Quantization-aware training (`apply_qat`): weights at `bits_w` (1 binary, 2, 4, 8 or "ternary"),
    layer inputs at `bits_a` (32: not quantized) with the STE proxy `ste`, weights updated by plain STE
    or BCGD with `rho`. `group_size` is set only with granularity "group"."""

    VERSION = 1
    bits_w: WeightBits = 4
    bits_a: int = 8
    granularity: str = "channel"
    group_size: int = 0
    symmetric: bool = True
    weight_range: str = "absmax"
    ste: str = "clipped_relu"
    weight_update: str = "ste"
    rho: float = 0.0
    epochs: int = 3
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9
    optimizer: str = "sgd"
    calibration_batches: int = 8
    act_percentile: float = 99.99
    keep_fp: tuple[str, ...] = ()
    keep_zeros: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.keep_zeros, bool):
            raise RecipeError(f"keep_zeros must be True or False, got {self.keep_zeros!r}")
        check_grid(self.bits_w, self.granularity, self.group_size, self.symmetric, self.weight_range,
                   error=RecipeError)
        check_storable(WeightGrid(self.bits_w, self.granularity, self.group_size, self.symmetric, self.weight_range),
                       error=RecipeError)
        _check_qat(bits_a=self.bits_a, ste=self.ste, weight_update=self.weight_update, rho=self.rho,
                   epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, momentum=self.momentum,
                   calibration_batches=self.calibration_batches, act_percentile=self.act_percentile,
                   keep_fp=self.keep_fp, error=RecipeError)
        check_choice("optimizer", self.optimizer, ("sgd", "adamw"))


@handles(QATConfig)
def _qat(model: nn.Module, config: QATConfig, context: RecipeContext) -> nn.Module:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return apply_qat(model, context, **fields)
