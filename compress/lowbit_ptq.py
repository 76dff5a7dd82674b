"""Low-bit post-training weight quantization (4 and 2 bits, per group, per channel or per tensor) with the
rounding chosen to minimize each layer's output error on calibration data: GPTQ (Frantar, Ashkboos,
Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
ICLR 2023, arXiv 2210.17323), or plain round-to-nearest. Functional form `apply_lowbit_ptq`, config
form `LowBitPTQConfig`. No training: a 4-bit variant of any entry from a few calibration batches.

Usage::

    from zoo.compress.lowbit_ptq import apply_lowbit_ptq
    apply_lowbit_ptq(model, batches, bits_w=4, granularity="group", group_size=32, keep_fp=("conv1", "fc"))

    # as a recipe step (calibration batches from the RecipeContext)
    LowBitPTQConfig(bits_w=4, granularity="group", group_size=32, calibration_batches=16)

Suggested settings: 4 bits per group of 32 (the default; a group spans `group_size` input channels with
all their kernel positions, so a 3x3 conv's group holds 288 weights) loses little; 2 bits needs small
groups (8 or 16) and usually keeps the first and last layers in float (`keep_fp`), as the QAT papers do.
16 to 128 calibration batches; `damp` 0.01 (the paper's) and higher when a layer's Cholesky fails.

The result is exactly what `zoo.compress.lowbit.apply_qat` leaves: every nn.Linear / nn.Conv1d /
nn.Conv2d not matched by `keep_fp` becomes a QAT layer (`to_qat_layers`) finalized on its grid, with the
checkpoint format's low-bit buffers (`weight_scale`, `weight_zero_point` on affine grids, `weight_bits`),
so the checkpoint stores its codes packed and `zoo.api` rebuilds it. With `bits_a` < 32 the layers'
inputs are then calibrated (`calibrate_inputs`, the `act_percentile` percentile of |x|) on the final
weights; the weights are chosen with float activations.

GPTQ, per layer (`gptq_quantize`), with W the weight flattened to [out, columns]:

- H = 2 X X^T / n over the n calibration input vectors x of the layer (`input_columns`): a Linear's
  inputs; a conv's unfolded patches (`F.unfold` order, so the columns are (input channel, kernel position)
  as in `weight.reshape(out, -1)`), after the conv's own padding (any `padding_mode`, "same" included).
- Grouped and depthwise convs (`groups` > 1) are quantized per conv group: output channels of group g
  only see the columns of input group g, so each group has its own H (a [groups, c, c] stack), and the
  same algorithm runs on all groups at once. Nothing falls back to nearest rounding.
- Dead inputs (H_jj = 0: an input that is zero over the whole calibration set) get H_jj = 1 and their
  weights are set to 0, as in the paper: they never contribute to the output.
- Dampening: H += damp * mean(diag H) * I. U = the upper Cholesky factor of H^-1.
- Columns are quantized in order j = 0, 1, ...: q_j = the grid's rounding of w_j with the unit's scale,
  err = (w_j - q_j) / U_jj, and the not yet quantized columns absorb it: w_k -= err * U_jk (k > j). This
  is computed with the paper's lazy batch updates (blocks of 128 columns, aligned to the groups), which
  give the numbers of the column-by-column sweep. Columns are not reordered (no "act-order").
- Scales (and zero points) follow the grid's own rule (`zoo.compress.lowbit.quantize_weight`): per tensor
  and per channel, computed once on the original weights; per group, computed when the sweep reaches the
  group's first column, from the group's error-updated weights (GPTQ's group quantization). So the final
  weights lie exactly on the grid of the layer's stored `weight_scale` (what the checkpoint checks), but
  re-quantizing them from scratch may pick other scales (a group whose largest code is below the maximum).
- Binary and ternary grids are refused with rounding="gptq" (their codes are not the nearest grid point of
  a fixed scale); use rounding="nearest" for them.

Hessians are collected sequentially, as in the paper: the layers are processed in the order the model
first calls them, and each layer's H comes from a pass over the calibration batches through the model
whose earlier layers are already quantized (layers not yet reached run on their nearest-rounded weights),
so each layer compensates the error of those before it. That costs one forward pass over the calibration
batches per layer (the batches are kept in memory); one H ([c, c] floats) is held at a time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from zoo.compress.config import CompressionConfig, check_choice, check_positive, register_config
from zoo.compress.lowbit import (
    NO_ACT_QUANT, QuantizedWeight, WeightBits, WeightGrid, calibrate_inputs, check_grid, check_input_quantization,
    check_storable, errors_as,
    quantize_weight, to_qat_layers,
)
from zoo.compress.quantization import calibration_pass
from zoo.compress.recipe import RecipeContext, handles
from zoo.errors import InvalidArgumentError, RecipeError

ROUNDINGS = ("gptq", "nearest")
_STEP = "low-bit PTQ"


# Calibration inputs and Hessians -----------------------------------------------------------------

def input_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input vectors the layer multiplies its flattened weight with, as [groups, columns, n]: a
    Linear's inputs (groups 1); a Conv1d / Conv2d's unfolded patches, columns ordered (input channel,
    kernel position) as in `weight.reshape(out, -1)`, split by conv group."""
    x = x.detach().float()
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features).t().unsqueeze(0)
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        raise InvalidArgumentError(f"input_columns takes nn.Linear / nn.Conv1d / nn.Conv2d, got {type(layer).__name__}")
    conv1d = isinstance(layer, nn.Conv1d)
    if x.ndim == (2 if conv1d else 3):  # unbatched input
        x = x.unsqueeze(0)
    if conv1d:
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *layer.kernel_size), (1, *layer.stride), (1, *layer.dilation)
    else:
        kernel, stride, dilation = layer.kernel_size, layer.stride, layer.dilation
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        pad = list(layer._reversed_padding_repeated_twice) + ([0, 0] if conv1d else [])
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = F.pad(x, pad, mode=mode) if any(pad) else x
        padding: tuple[int, ...] = (0, 0)
    else:
        padding = (0, *layer.padding) if conv1d else tuple(layer.padding)
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, C * K, L]
    cols = patches.shape[1]
    return patches.transpose(0, 1).reshape(layer.groups, cols // layer.groups, -1)


class HessianAccumulator:
    """Accumulates H = 2 X X^T / n of one layer's inputs (`add`), per conv group: [groups, c, c]."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.sum: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        cols = input_columns(self.layer, x)
        outer = (cols @ cols.transpose(1, 2)).double()  # summed in float64
        self.sum = outer if self.sum is None else self.sum + outer
        self.count += cols.shape[2]

    def hessian(self, name: str) -> torch.Tensor:
        if self.sum is None or self.count == 0:
            raise RecipeError(f"{_STEP}: layer {name!r} saw no input during calibration")
        return (2.0 * self.sum / self.count).float()


# GPTQ --------------------------------------------------------------------------------------------

def _unit_params(block: torch.Tensor, grid: WeightGrid) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (and zero point) of each row of a 2-D block by the grid's own rule; float32, [rows]."""
    q = quantize_weight(block, grid.bits, granularity="channel", symmetric=grid.symmetric,
                        weight_range=grid.weight_range)
    return q.scale, None if q.zero_point is None else q.zero_point.float()


def _round_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, grid: WeightGrid) -> torch.Tensor:
    """Codes of `w` on the grid of `scale` / `zero`, as floats (the arithmetic of `quantize_weight`)."""
    if zero is None:
        qmax = 2 ** (grid.bits - 1) - 1
        return torch.clamp(torch.round(w / scale), -qmax, qmax)
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** grid.bits - 1)


def check_gptq_grid(grid: WeightGrid, *, error: type[Exception] = InvalidArgumentError) -> None:
    if grid.bits in (1, "ternary"):
        raise error(f"rounding 'gptq' takes the 2-, 4- and 8-bit grids; {grid.bits!r} weights have their own "
                    "projection, not a nearest grid point of a fixed scale: use rounding='nearest'")


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, grid: WeightGrid, *, damp: float = 0.01,
                  block_size: int = 128, name: str = "weight", start: QuantizedWeight | None = None,
                  zeros: torch.Tensor | None = None) -> QuantizedWeight:
    """GPTQ (module docstring) of `weight` [out, ...] given the Hessian of its inputs, [c, c] or, for a
    conv with `groups` > 1, [groups, c, c] with c = weight.reshape(out, -1).shape[1]; returns the codes,
    scales and zero points (the weight itself is not modified). `block_size` columns are swept at a time
    (the paper's lazy batch updates; per group, a multiple of the group's columns): it changes the speed,
    not the result. RecipeError naming `name` when H + damping is not positive definite. `start` is
    `grid.quantize(weight)` when the caller already has it (a QAT layer's range calibrated on these
    weights): per tensor and per channel its scales are kept; computed here when None. `zeros`, a boolean
    mask shaped like `weight`, names weights that stay exactly zero (a pruned model's): their code is the
    grid's zero and their rounding error, the whole weight, is spread over the later columns like any other
    (SparseGPT's masked sweep), so the quantized model keeps the pruned one's sparsity."""
    check_gptq_grid(grid)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InvalidArgumentError(f"block_size must be an integer >= 1, got {block_size!r}")
    if hessian.ndim == 2:
        hessian = hessian.unsqueeze(0)
    groups, out = hessian.shape[0], weight.shape[0]
    flat = weight.detach().float().reshape(out, -1)
    cols = flat.shape[1]
    if hessian.shape[1:] != (cols, cols) or out % groups:
        raise InvalidArgumentError(f"a Hessian of shape {list(hessian.shape)} for a weight of shape {list(weight.shape)}")
    grid_q = grid.quantize(weight) if start is None else start  # checks the groups fit, gives the scale shape
    rows = out // groups
    w = flat.reshape(groups, rows, cols).clone()
    if zeros is not None and zeros.shape != weight.shape:
        raise InvalidArgumentError(f"a zeros mask of shape {list(zeros.shape)} for a weight of shape {list(weight.shape)}")
    pruned = None if zeros is None else zeros.reshape(groups, rows, cols)
    h = hessian.float().clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0
    diag[dead] = 1.0
    w.masked_fill_(dead[:, None, :], 0.0)
    diag += damp * diag.mean(dim=1, keepdim=True)
    chol, info = torch.linalg.cholesky_ex(h)
    if not bool((info != 0).any()):
        # H^-1 from the Cholesky factor (batched cholesky_inverse is much slower than cholesky_solve on CPU)
        h_inv = (torch.cholesky_inverse(chol[0])[None] if groups == 1
                 else torch.cholesky_solve(torch.eye(cols, device=h.device).expand_as(h), chol))
        u, info = torch.linalg.cholesky_ex(h_inv, upper=True)
    if bool((info != 0).any()):
        raise RecipeError(f"{_STEP}: the Hessian of {name!r} is not positive definite with damp={damp}; "
                          "raise damp (or give more calibration data)")

    group_cols = cols if grid.granularity != "group" else cols // (weight.shape[1] // grid.group_size)
    if grid.granularity == "group":
        scale = zero = None
    else:  # per tensor / channel: the grid's scales of the original weights, one per row
        scale = grid_q.scale.expand(out).reshape(groups, rows).clone() if grid_q.scale.ndim == 0 else grid_q.scale.reshape(groups, rows)
        zero = None if grid_q.zero_point is None else grid_q.zero_point.float().expand(out).reshape(groups, rows)
    codes = torch.empty_like(w)
    scales, zeros = [], []
    # lazy batch updates: a block of columns is swept on its own copy, then the later columns take the
    # block's errors in one product; blocks start at group boundaries, so a group's scale is computed from
    # columns that have taken every earlier column's update (the same numbers as column by column)
    block = group_cols * max(1, block_size // group_cols) if grid.granularity == "group" else block_size
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, :, i1:i2].clone(), u[:, i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for jj in range(i2 - i1):
            if grid.granularity == "group" and (i1 + jj) % group_cols == 0:
                s, z = _unit_params(w1[:, :, jj:jj + group_cols].reshape(out, group_cols), grid)
                scale, zero = s.reshape(groups, rows), None if z is None else z.reshape(groups, rows)
                scales.append(s)
                zeros.append(z)
            col = w1[:, :, jj]
            code = _round_column(col, scale, zero, grid)
            if pruned is not None:  # the grid's zero: code 0, or the (integer) zero point
                code = torch.where(pruned[:, :, i1 + jj], 0.0 if zero is None else zero, code)
            codes[:, :, i1 + jj] = code
            q = (code - (0 if zero is None else zero)) * scale
            err = (col - q) / u1[:, jj, jj].unsqueeze(1)
            w1[:, :, jj + 1:] -= err.unsqueeze(2) * u1[:, jj, jj + 1:].unsqueeze(1)
            err1[:, :, jj] = err
        w[:, :, i2:] -= err1 @ u[:, i1:i2, i2:]

    dtype = torch.int8 if grid.symmetric else torch.uint8
    codes = codes.reshape(out, cols).to(dtype).reshape(weight.shape)
    if grid.granularity != "group":
        return QuantizedWeight(codes, grid_q.scale, grid_q.zero_point)
    scale_t = torch.stack(scales, dim=1)  # [out, weight groups]
    zero_t = None if grid.symmetric else torch.stack(zeros, dim=1).to(torch.int32)
    return QuantizedWeight(codes, scale_t, zero_t)


# Model-level -------------------------------------------------------------------------------------

def _execution_order(model: nn.Module, layers: dict[str, nn.Module], batch: Any) -> list[str]:
    """The layers' names in the order the model first calls them on `batch` (those not called: after,
    in module order)."""
    seen: list[str] = []
    handles_ = [layer.register_forward_pre_hook(lambda m, args, name=name: seen.append(name) if name not in seen else None)
                for name, layer in layers.items()]
    try:
        calibration_pass(model, [batch], desc="order layers", step=_STEP, progress=False)
    finally:
        for h in handles_:
            h.remove()
    return seen + [name for name in layers if name not in seen]


@contextlib.contextmanager
def _float_inputs(layers: dict[str, nn.Module]) -> Iterator[None]:
    """The layers' inputs unquantized while the weights are chosen (their ranges are calibrated after)."""
    saved = {name: int(layer.act_bits) for name, layer in layers.items()}
    for layer in layers.values():
        layer.act_bits.fill_(NO_ACT_QUANT)
    try:
        yield
    finally:
        for name, layer in layers.items():
            layer.act_bits.fill_(saved[name])


def apply_lowbit_ptq(
    model: nn.Module,
    calibration_batches: Iterable[Any],
    *,
    bits_w: WeightBits = 4,
    bits_a: int = NO_ACT_QUANT,
    granularity: str = "group",
    group_size: int = 32,
    symmetric: bool = True,
    weight_range: str = "absmax",
    rounding: str = "gptq",
    damp: float = 0.01,
    act_percentile: float = 99.99,
    keep_fp: tuple[str, ...] = (),
    keep_zeros: bool = True,
    progress: bool = False,
) -> nn.Module:
    """Post-training quantization of `model`'s weights in place (module docstring); returns it.

    Every nn.Linear / nn.Conv1d / nn.Conv2d not matched by `keep_fp` becomes a QAT layer on the grid
    (`bits_w`, `granularity`, `group_size`, `symmetric`; scales by `weight_range`: "absmax", or "mse" the
    least-error clipped range of each unit's original weights) whose weight is rounded by `rounding`: "gptq"
    (sequential GPTQ on the calibration batches, with dampening `damp`) or "nearest" (the grid's
    round-to-nearest; the batches are then only used for activations). With `bits_a` < 32 the layers'
    inputs are calibrated afterwards. `calibration_batches` is iterated into memory once (a batch is a
    model input: a tensor, a tuple of positional or a mapping of keyword arguments). With `keep_zeros`
    (the default) weights that are exactly zero stay zero (GPTQ's `zeros` mask; round to nearest keeps
    them anyway), so a pruned model keeps its sparsity.
    """
    _check(bits_w=bits_w, bits_a=bits_a, granularity=granularity, group_size=group_size, symmetric=symmetric,
           weight_range=weight_range, rounding=rounding, damp=damp, act_percentile=act_percentile, keep_fp=keep_fp,
           error=InvalidArgumentError)
    grid = WeightGrid(bits_w, granularity, group_size, symmetric, weight_range)
    batches = list(calibration_batches)
    if not batches and (rounding == "gptq" or bits_a != NO_ACT_QUANT):
        raise RecipeError(f"{_STEP} needs at least one calibration batch")
    layers = to_qat_layers(model, grid, bits_a, "clipped_relu", keep_fp, step=_STEP)
    if rounding == "nearest":
        for layer in layers.values():
            layer.finalize()
    else:
        with _float_inputs(layers):
            order = _execution_order(model, layers, batches[0])
            for name in tqdm(order, desc=f"GPTQ w{bits_w}", disable=not progress):
                layer = layers[name]
                acc = HessianAccumulator(layer)
                hook = layer.register_forward_pre_hook(lambda m, args, acc=acc: acc.add(args[0]))
                try:
                    calibration_pass(model, batches, desc=name, step=_STEP, progress=False)
                finally:
                    hook.remove()
                zeros = (layer.weight == 0) if keep_zeros else None
                layer.finalize(gptq_quantize(layer.weight, acc.hessian(name), grid, damp=damp, name=name,
                                             start=layer.quantize_current(layer.weight), zeros=zeros))
    if bits_a != NO_ACT_QUANT:
        calibrate_inputs(model, layers, batches, act_percentile, progress)
    return model


def _check(*, bits_w: Any, bits_a: Any, granularity: Any, group_size: Any, symmetric: Any, weight_range: Any,
           rounding: Any, damp: Any, act_percentile: Any, keep_fp: Any, error: type[Exception]) -> None:
    check_grid(bits_w, granularity, group_size, symmetric, weight_range, error=error)
    grid = WeightGrid(bits_w, granularity, group_size, symmetric, weight_range)
    check_storable(grid, error=error)
    with errors_as(error):
        check_input_quantization(bits_a, act_percentile, keep_fp)
        check_choice("rounding", rounding, ROUNDINGS)
        check_positive("damp", damp, allow_zero=True)
    if rounding == "gptq":
        check_gptq_grid(grid, error=error)


@register_config
@dataclasses.dataclass(frozen=True)
class LowBitPTQConfig(CompressionConfig):
    """Low-bit post-training weight quantization (`apply_lowbit_ptq`): weights at `bits_w` (2, 4 or 8; 1
    binary and "ternary" with rounding "nearest" only) rounded by GPTQ or to nearest on the first
    `calibration_batches` of the recipe's calibration data; layer inputs at `bits_a` (32: not quantized).
    `group_size` is set only with granularity "group". `keep_zeros` keeps exactly-zero (pruned) weights
    zero; version 1 had no such field and ran without it."""

    VERSION = 2
    UPGRADES = {1: {"keep_zeros": False}}
    bits_w: WeightBits = 4
    bits_a: int = NO_ACT_QUANT
    granularity: str = "group"
    group_size: int = 32
    symmetric: bool = True
    weight_range: str = "absmax"
    rounding: str = "gptq"
    damp: float = 0.01
    calibration_batches: int = 16
    act_percentile: float = 99.99
    keep_fp: tuple[str, ...] = ()
    keep_zeros: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.keep_zeros, bool):
            raise RecipeError(f"keep_zeros must be True or False, got {self.keep_zeros!r}")
        _check(bits_w=self.bits_w, bits_a=self.bits_a, granularity=self.granularity, group_size=self.group_size,
               symmetric=self.symmetric, weight_range=self.weight_range, rounding=self.rounding, damp=self.damp,
               act_percentile=self.act_percentile, keep_fp=self.keep_fp, error=RecipeError)
        check_positive("calibration_batches", self.calibration_batches, integer=True)


@handles(LowBitPTQConfig)
def _lowbit_ptq(model: nn.Module, config: LowBitPTQConfig, context: RecipeContext) -> nn.Module:
    if config.rounding == "gptq" or config.bits_a != NO_ACT_QUANT:
        context.require("calibration_batches", step="low-bit post-training quantization")
        batches: Iterable[Any] = itertools.islice(context.calibration_batches(), config.calibration_batches)
    else:
        batches = ()
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "calibration_batches"}
    return apply_lowbit_ptq(model, batches, progress=context.progress, **fields)
