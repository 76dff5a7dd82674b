"""Sparse kernels where they pay: Linear and 1x1 Conv2d layers whose zeros are skipped, chosen per layer
by measuring on this machine.

A sparse weight multiplies its zeros in torch's dense kernels, so pruning alone is not faster. Torch has
kernels that skip them (CSR and BSR through MKL, `SparseLinear` / `SparseConv1x1`), and a block format of
its own (`blocks16x1`: the non-zero 16x1 blocks of Sparse WaveRNN's recurrent matrix, gathered and
scattered with index operations, since MKL's BSR takes square blocks only). Whether any of them beats
the dense kernel depends on the layer's shape, its sparsity and its pattern, the rows it multiplies at a
time (1 for a recurrent step, the tokens for a transformer), the CPU and the thread count: measured on an
AVX2 EPYC, CSR pays for BERT-base's linears from ~80 % sparsity, and loses 2-3x to dense on a 384x128
WaveRNN matrix at 90 %. So `use_sparse_kernels` times dense and every candidate format on each layer's
real weight at the shape the model runs it with (`example_input`), and swaps in the fastest only where it
beats dense by `MARGIN`. The times are kept in a JSON file (`cache_path`) keyed by the machine
(`compress.selection.machine_key`: CPU model, torch and numpy versions, threads) and by the layer (shape,
rows, dtype and a digest of its pattern of zeros), so the choice given the file is deterministic
(`choose`) and later loads skip the measuring.

Layers under `MIN_SPARSITY` zeros are not measured: CSR stores a value and a column index per non-zero,
so at half zeros it moves as many bytes as the dense weight and cannot be faster.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from zoo.compress.selection import machine_key, read_cache

from zoo.atomic import atomic_write_json
from zoo.errors import InvalidArgumentError

DENSE = "dense"
# Candidate formats, in the order that breaks ties between equal times: torch CSR, torch BSR with square
# blocks (MKL refuses others on CPU), and the gathered 16x1 blocks of Sparse WaveRNN.
FORMATS: tuple[str, ...] = ("csr", "bsr4x4", "blocks16x1")
MARGIN = 1.1  # a sparse format must be this many times faster than dense to be chosen
MIN_SPARSITY = 0.5
ROUND_SECONDS = 2e-3  # each timing round calls a kernel for about this long
ROUNDS = 5  # rounds per kernel; the fastest round counts (a passing load only ever slows a round down)

_BSR = re.compile(r"bsr(\d+)x(\d+)$")
_BLOCKS = re.compile(r"blocks(\d+)x1$")


def _parse(layout: str) -> tuple[str, tuple[int, int]]:
    if layout == "csr":
        return "csr", (1, 1)
    for kind, pattern in (("bsr", _BSR), ("blocks", _BLOCKS)):
        match = pattern.fullmatch(layout)
        if match:
            groups = [int(g) for g in match.groups()]
            shape = (groups[0], groups[1] if kind == "bsr" else 1)
            if min(shape) < 1:
                break
            return kind, shape
    raise InvalidArgumentError(f"unknown sparse layout {layout!r}: 'csr', 'bsr<h>x<w>' or 'blocks<h>x1'")


def _fits(layout: str, weight: torch.Tensor) -> bool:
    """Whether `layout` can hold a [rows, columns] weight (blocks must tile it)."""
    _, (bh, bw) = _parse(layout)
    rows, columns = weight.shape
    return rows % bh == 0 and columns % bw == 0


class _SparseMatrix(nn.Module):
    """A [out, in] weight in one sparse layout, multiplying [in, n] columns: `matmul(x)` -> [out, n]."""

    def __init__(self, weight: torch.Tensor, layout: str) -> None:
        super().__init__()
        if weight.dim() != 2 or not weight.dtype.is_floating_point:
            raise InvalidArgumentError(f"a sparse weight must be a 2-D float matrix, got {tuple(weight.shape)} "
                                       f"{weight.dtype}")
        if not _fits(layout, weight):
            raise InvalidArgumentError(f"layout {layout} does not tile a weight of shape {tuple(weight.shape)}")
        self.layout = layout
        self.out_features, self.in_features = weight.shape
        kind, (bh, bw) = _parse(layout)
        self.kind, self.block = kind, (bh, bw)
        weight = weight.detach()
        with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state", on every conversion
            warnings.filterwarnings("ignore", message=".*[Ss]parse .* support is in beta")
            if kind == "csr":
                self.register_buffer("weight", weight.to_sparse_csr(), persistent=False)
            elif kind == "bsr":
                self.register_buffer("weight", weight.to_sparse_bsr((bh, bw)), persistent=False)
            else:
                # blocks[k] = weight[rows_of[k] * bh : (rows_of[k] + 1) * bh, columns[k]]: every block with a non-zero
                grid = weight.reshape(self.out_features // bh, bh, self.in_features).transpose(1, 2)  # [R/bh, C, bh]
                row_block, column = (grid != 0).any(-1).nonzero(as_tuple=True)
                self.register_buffer("values", grid[row_block, column].contiguous(), persistent=False)  # [nb, bh]
                self.register_buffer("columns", column.contiguous(), persistent=False)
                self.register_buffer("row_blocks", row_block.contiguous(), persistent=False)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """weight @ x for x [in, n] -> [out, n]."""
        if self.kind == "blocks":
            bh = self.block[0]
            contributions = self.values[:, :, None] * x.index_select(0, self.columns)[:, None, :]  # [nb, bh, n]
            out = x.new_zeros(self.out_features // bh, bh, x.shape[1])
            return out.index_add_(0, self.row_blocks, contributions).reshape(self.out_features, x.shape[1])
        return torch.sparse.mm(self.weight, x)

    def linear(self, rows: torch.Tensor) -> torch.Tensor:
        """rows @ weight.T for rows [n, in] -> [n, out]. One row is a matrix-vector product (`torch.mv`:
        the fastest call measured for CSR, and `F.linear` on a CSR weight fails in inference mode)."""
        if rows.shape[0] != 1:
            return self.matmul(rows.T).T
        if self.kind != "blocks":
            return torch.mv(self.weight, rows[0])[None]
        contributions = self.values * rows[0].index_select(0, self.columns)[:, None]  # [nb, bh]
        out = rows.new_zeros(self.out_features // self.block[0], self.block[0])
        return out.index_add_(0, self.row_blocks, contributions).reshape(1, self.out_features)


class SparseLinear(nn.Module):
    """`nn.Linear` with its weight in a sparse `layout` ('csr', 'bsr<h>x<w>' or 'blocks<h>x1'); the same
    outputs as the dense layer within float rounding (the sums run in another order)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: str) -> None:
        super().__init__()
        self.matrix = _SparseMatrix(weight, layout)
        self.in_features, self.out_features = self.matrix.in_features, self.matrix.out_features
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)

    @classmethod
    def from_dense(cls, layer: nn.Linear, layout: str) -> SparseLinear:
        return cls(layer.weight, layer.bias, layout)

    @property
    def layout(self) -> str:
        return self.matrix.layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.matrix.linear(x.reshape(-1, self.in_features))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}"


class SparseConv1x1(nn.Module):
    """A 1x1 `nn.Conv2d` (stride 1, no padding, one group) as a sparse [out, in] weight times each image's
    [in, height * width] activations: the layout of Fast Sparse ConvNets (Elsen et al., 2020)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: str) -> None:
        super().__init__()
        self.matrix = _SparseMatrix(weight.reshape(weight.shape[0], weight.shape[1]), layout)
        self.in_channels, self.out_channels = self.matrix.in_features, self.matrix.out_features
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, layout: str) -> SparseConv1x1:
        if not is_pointwise(layer):
            raise InvalidArgumentError(f"not a 1x1 convolution with stride 1, no padding and one group: {layer}")
        return cls(layer.weight, layer.bias, layout)

    @property
    def layout(self) -> str:
        return self.matrix.layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        images = [self.matrix.matmul(image.reshape(channels, height * width)) for image in x]
        out = torch.stack(images).reshape(batch, self.out_channels, height, width)
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(1, 1), layout={self.layout}"


def is_pointwise(layer: nn.Module) -> bool:
    """Whether `layer` is a plain Conv2d (not a subclass, such as a fake-quant one, whose forward does more)
    that is a matrix product over channels."""
    return (type(layer) is nn.Conv2d and layer.kernel_size == (1, 1) and layer.stride == (1, 1)
            and layer.padding in ((0, 0), "valid") and layer.dilation == (1, 1) and layer.groups == 1)


def sparse_module(layer: nn.Module, layout: str) -> nn.Module:
    """`layer` (nn.Linear or a pointwise nn.Conv2d) with its weight in `layout`; `layer` itself for 'dense'."""
    if layout == DENSE:
        return layer
    if type(layer) is nn.Linear:
        return SparseLinear.from_dense(layer, layout)
    if is_pointwise(layer):
        return SparseConv1x1.from_dense(layer, layout)
    raise InvalidArgumentError(f"no sparse kernel for {type(layer).__name__}: only plain Linear and 1x1 Conv2d")


# Measuring and choosing -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KernelChoice:
    """The format chosen for one layer, the seconds per call of every format measured (dense included)
    and whether they were measured in this call (`source` "measured") or read from the cache file."""

    layer: str
    signature: str
    layout: str
    seconds: dict[str, float]
    source: str

    @property
    def speedup(self) -> float:
        """Dense time over the chosen format's time (1.0 where dense is kept)."""
        return self.seconds[DENSE] / self.seconds[self.layout]


def choose(seconds: dict[str, float], formats: tuple[str, ...] = FORMATS, margin: float = MARGIN) -> str:
    """The fastest of `formats` measured in `seconds` if it beats dense by `margin`, else 'dense'; ties go
    to the earlier format. Deterministic given the times."""
    if DENSE not in seconds:
        raise InvalidArgumentError("the measurements lack the dense time")
    known = [name for name in formats if name in seconds]
    if not known:
        return DENSE
    best = min(known, key=lambda name: (seconds[name], formats.index(name)))
    return best if seconds[DENSE] >= margin * seconds[best] else DENSE


def cache_path() -> Path | None:
    """The JSON file of kernel times: `$ZOO_KERNEL_CACHE`, or `~/.cache/zoo/sparse_kernels.json` (beside the
    selection cache) when it is unset; None (no file) when it is set to an empty string."""
    setting = os.environ.get("ZOO_KERNEL_CACHE")
    if setting == "":
        return None
    return Path(setting or "~/.cache/zoo/sparse_kernels.json").expanduser()


def signature(layer: nn.Module, rows: int) -> str:
    """What a layer's kernel times depend on: kind, weight shape and dtype, rows per call and a digest of
    its pattern of zeros (the values do not matter, the pattern does)."""
    weight = layer.weight.detach()
    mask = np.packbits((weight != 0).reshape(-1).numpy())
    digest = hashlib.blake2b(mask.tobytes(), digest_size=8).hexdigest()
    kind = "linear" if isinstance(layer, nn.Linear) else "conv1x1"
    shape = "x".join(str(s) for s in weight.shape[:2])
    return f"{kind} {shape} {str(weight.dtype).removeprefix('torch.')} rows {rows} zeros {digest}"


def _seconds_per_call(function: Callable[[], Any]) -> float:
    """The fastest of ROUNDS rounds, each calling `function` for about ROUND_SECONDS, per call."""
    function()
    start = time.perf_counter()
    function()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, min(10_000, round(ROUND_SECONDS / once)))
    best = math.inf
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def measure(layer: nn.Module, example: torch.Tensor, formats: tuple[str, ...] = FORMATS) -> dict[str, float]:
    """Seconds per call of `layer` dense and in each of `formats` that tiles its weight, on a random input
    of `example`'s shape (the values do not change the time)."""
    x = torch.randn(example.shape, dtype=example.dtype)
    candidates = {DENSE: layer}
    for layout in formats:
        if _fits(layout, layer.weight.reshape(layer.weight.shape[0], -1)):
            candidates[layout] = sparse_module(layer, layout)
    with torch.inference_mode():
        return {name: _seconds_per_call(lambda module=module: module(x)) for name, module in candidates.items()}


def _rows(layer: nn.Module, x: torch.Tensor) -> int:
    """Rows the layer multiplies per call: tokens for a Linear, pixels of all images for a 1x1 conv."""
    return x.numel() // (layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels)


def _inputs(model: nn.Module, example_input: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The first input each named layer sees when the model runs `example_input` (in inference mode)."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            seen.setdefault(name, args[0].detach())
        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    try:
        with torch.inference_mode():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def candidate_layers(model: nn.Module, min_sparsity: float = MIN_SPARSITY) -> list[str]:
    """The float32 plain Linear and pointwise Conv2d layers (`is_pointwise`) with at least `min_sparsity`
    zeros in their weight."""
    names = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear or is_pointwise(module):
            weight = module.weight.detach()
            if weight.dtype == torch.float32 and float((weight == 0).float().mean()) >= min_sparsity:
                names.append(name)
    return names


def _cached_seconds(content: dict, key: str, sig: str, needed: list[str]) -> dict[str, float] | None:
    """The times stored for this machine and layer if they cover every needed format; None otherwise (then
    it is measured again), with a warning when the entry is malformed."""
    entry = content.get(key, {}).get(sig)
    if entry is None:
        return None
    try:
        seconds = {str(name): float(s) for name, s in entry.items()}
    except (AttributeError, TypeError, ValueError) as err:
        warnings.warn(f"ignoring a malformed entry of the kernel cache: {err!r}", stacklevel=3)
        return None
    if not all(name in seconds and math.isfinite(seconds[name]) and seconds[name] > 0 for name in needed):
        return None
    return seconds


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def use_sparse_kernels(model: nn.Module, example_input: Any, *, formats: tuple[str, ...] = FORMATS,
                       margin: float = MARGIN, min_sparsity: float = MIN_SPARSITY) -> dict[str, KernelChoice]:
    """Swaps each sparse enough Linear / 1x1 Conv2d of `model` for its fastest kernel on this machine, in
    place, and returns the choice per layer (also kept as `model.kernel_choices`). Each layer is timed
    dense and in every format of `formats` at the input shape it sees when the model runs `example_input`
    (a tensor or a tuple of positional arguments), unless the cache file has its times; a sparse format
    replaces the layer only where it is `margin` times faster than dense. Layers that `example_input`
    does not reach are left dense."""
    for layout in formats:
        _parse(layout)
    if not margin >= 1.0:
        raise InvalidArgumentError(f"margin must be >= 1, got {margin}")
    names = candidate_layers(model, min_sparsity)
    inputs = _inputs(model, example_input, names) if names else {}
    path, key = cache_path(), machine_key()
    content = read_cache(path, "kernel") if path is not None else {}
    modules = dict(model.named_modules())
    choices: dict[str, KernelChoice] = {}
    measured: dict[str, dict[str, float]] = {}
    for name in names:
        if name not in inputs:
            continue
        layer, x = modules[name], inputs[name]
        sig = signature(layer, _rows(layer, x))
        needed = [DENSE, *(f for f in formats if _fits(f, layer.weight.reshape(layer.weight.shape[0], -1)))]
        seconds = _cached_seconds(content, key, sig, needed) or measured.get(sig)
        source = "cache file"
        if seconds is None:
            seconds, source = measure(layer, x, formats), "measured"
            measured[sig] = seconds
        layout = choose(seconds, formats, margin)
        choices[name] = KernelChoice(name, sig, layout, seconds, source)
    if measured and path is not None:
        content = read_cache(path, "kernel")  # again: another process may have added to it meanwhile
        content.setdefault(key, {}).update(measured)
        atomic_write_json(path, content, indent=1, sort_keys=True)
    for name, choice in choices.items():
        if choice.layout != DENSE:
            _set_module(model, name, sparse_module(modules[name], choice.layout))
    model.kernel_choices = choices
    return choices


def summary(choices: dict[str, KernelChoice]) -> str:
    """One line per layer: its format and speed-up over dense, and the median speed-up of the swapped ones."""
    lines = [f"{c.layer}: {c.layout} ({c.speedup:.2f}x, {c.source})" for c in choices.values()]
    swapped = [c.speedup for c in choices.values() if c.layout != DENSE]
    lines.append(f"{len(swapped)} of {len(choices)} layers sparse"
                 + (f", median {statistics.median(swapped):.2f}x" if swapped else ""))
    return "\n".join(lines)
