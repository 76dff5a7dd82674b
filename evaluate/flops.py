"""FLOPs of one forward pass at batch 1: dense, and counting only multiply-accumulates whose weight is
non-zero (what a sparse kernel could skip), with a per-module breakdown.

Both counts come from torch's `FlopCounterMode` (2 x multiply-accumulates, exact for convolutions and
matrix products) in one forward pass: an outer counter keeps torch's dense formulas; an inner one
replaces the formulas of the weight-bearing ops by `_get_raw` formulas that see the real tensors and
scale torch's dense count by the fraction of multiply-accumulates whose weight operand is non-zero.
A weight operand is a tensor sharing storage with a parameter or buffer of the model (so `w.t()`
inside `F.linear` is one); zeros in activations (after a ReLU, say) never count as sparsity.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from zoo.errors import InvalidArgumentError
from zoo.evaluate.report import LayerFlops

aten = torch.ops.aten

# Op packets (not overloads: FlopCounterMode looks formulas up by packet) whose dense formula we scale.
_CONV_OPS = (aten.convolution, aten._convolution, aten.cudnn_convolution, aten._slow_conv2d_forward,
             aten.convolution_overrideable)
_SDPA_OPS = (aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention,
             aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_cudnn_attention)
# Position of the two operands of a matrix product in each op's arguments.
_MATMUL_OPERANDS = {aten.mm: (0, 1), aten.addmm: (1, 2), aten.bmm: (0, 1), aten.baddbmm: (1, 2)}


@dataclass(frozen=True)
class FlopReport:
    """FLOPs for one example (2 x multiply-accumulates). `layers` has one entry per (module, op) that
    counted FLOPs, attributed to the innermost module running the op (the root model is named '');
    their dense and sparse columns sum to the totals."""

    dense: int
    sparse: int
    layers: list[LayerFlops] = field(default_factory=list)


def count_flops(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> FlopReport:
    """Count the FLOPs of `model(*example_input)` for the first example of the batch (dim 0), in eval
    mode without autograd; the model's training flag is restored afterwards."""
    _refuse_reparametrized(model)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    inputs = tuple(x[:1] if isinstance(x, torch.Tensor) else x for x in inputs)
    mapping = _sparse_mapping(_weight_storages(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as dense, \
                FlopCounterMode(display=False, custom_mapping=mapping) as sparse:
            model(*inputs)
    finally:
        model.train(was_training)
    dense_counts, sparse_counts = dense.get_flop_counts(), sparse.get_flop_counts()
    layers = _own_layers(model, dense_counts, sparse_counts)
    return FlopReport(dense=dense.get_total_flops(), sparse=sparse.get_total_flops(), layers=layers)


def _refuse_reparametrized(model: nn.Module) -> None:
    """Weights recomputed in forward (pruning masks, parametrizations) are new tensors at each call and
    would be counted as dense: refuse rather than under-report sparsity."""
    if prune.is_pruned(model) or any(parametrize.is_parametrized(m) for m in model.modules()):
        raise InvalidArgumentError(
            "the model computes weights in forward (a pruning mask or a parametrization); make them permanent "
            "(prune.remove / parametrize.remove_parametrizations) before counting FLOPs"
        )


def _weight_storages(model: nn.Module) -> frozenset[int]:
    """Addresses of the storages of the model's parameters and buffers: an op operand sharing one is a
    weight (or a view of it)."""
    tensors = [*model.parameters(), *model.buffers()]
    return frozenset(t.untyped_storage().data_ptr() for t in tensors if t.numel() > 0)


def _sparse_mapping(weights: frozenset[int]) -> dict[Any, Callable[..., int]]:
    """custom_mapping for FlopCounterMode: raw formulas returning the sparse count of each weighted op."""

    def is_weight(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.numel() > 0 and t.untyped_storage().data_ptr() in weights

    def conv(packet: Any) -> Callable[..., int]:
        def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            dense_flops = _dense(packet, args, kwargs, out_val)
            weight = args[1]
            if not is_weight(weight):
                return dense_flops
            # Every weight element takes part in the same number of multiply-accumulates.
            return dense_flops * int(torch.count_nonzero(weight)) // weight.numel()

        return formula

    def matmul(packet: Any) -> Callable[..., int]:
        first, second = _MATMUL_OPERANDS[packet]

        def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            dense_flops = _dense(packet, args, kwargs, out_val)
            a, b = args[first], args[second]
            if not (is_weight(a) or is_weight(b)):
                return dense_flops
            # a: (..., m, k), b: (..., k, n): per k, the rows of a times the columns of b that are non-zero.
            nonzero = _contract(_count(a, -2, is_weight(a)), _count(b, -1, is_weight(b)))
            return dense_flops * nonzero // _contract(_count(a, -2, False), _count(b, -1, False))

        return formula

    def attention(packet: Any) -> Callable[..., int]:
        def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            dense_flops = _dense(packet, args, kwargs, out_val)
            q, k, v = args[:3]
            if not any(is_weight(t) for t in (q, k, v)):
                return dense_flops
            return dense_flops * _attention_macs(q, k, v, is_weight) // _attention_macs(q, k, v, lambda t: False)

        return formula

    mapping: dict[Any, Callable[..., int]] = {}
    for packet in _CONV_OPS:
        mapping[packet] = conv(packet)
    for packet in _MATMUL_OPERANDS:
        mapping[packet] = matmul(packet)
    for packet in _SDPA_OPS:
        mapping[packet] = attention(packet)
    for formula in mapping.values():
        formula._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode passes raw tensors
    return mapping


def _dense(packet: Any, args: tuple, kwargs: Mapping[str, Any], out_val: Any) -> int:
    """torch's own (dense) formula for `packet`, on the same arguments."""
    return flop_registry[packet](*args, out_val=out_val, **kwargs)


def _count(t: torch.Tensor, dim: int, weighted: bool) -> torch.Tensor:
    """Along `dim`, how many entries take part in multiply-accumulates: the non-zero ones of a weight,
    all of an activation."""
    if weighted:
        return (t != 0).sum(dim)
    shape = t.shape[:dim % t.dim()] + t.shape[dim % t.dim() + 1:]
    return torch.full(shape, t.shape[dim], dtype=torch.int64, device=t.device)


def _contract(a_counts: torch.Tensor, b_counts: torch.Tensor) -> int:
    """Multiply-accumulates of a matrix product given, per inner index, the participating rows of the
    left operand and columns of the right one."""
    return int((a_counts.to(torch.int64) * b_counts.to(torch.int64)).sum())


def _attention_macs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_weight: Callable[[Any], bool]) -> int:
    """Multiply-accumulates of softmax(q k^T) v, (batch, heads, seq, dim) operands; key/value heads are
    repeated to match the query heads (grouped-query attention)."""
    repeat = q.shape[1] // k.shape[1]
    keys, values = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    scores = _contract(_count(q, -2, is_weight(q)), _count(keys, -2, is_weight(k)))
    # The attention probabilities are activations: every query row meets each counted value entry.
    value_entries = int(torch.count_nonzero(values)) if is_weight(v) else values.numel()
    return scores + q.shape[-2] * value_entries


def _own_layers(model: nn.Module, dense: Mapping[str, Mapping[Any, int]],
                sparse: Mapping[str, Mapping[Any, int]]) -> list[LayerFlops]:
    """Per (module, op) FLOPs done by the module itself, not by modules inside it, in `named_modules`
    order. FlopCounterMode credits an op to every module running at the time, under names prefixed
    with the root's class name (the root's count, "Global", is the total). A module's own count is its
    count less those of the outermost modules inside it that counted the op: not necessarily its
    children, since containers such as a ModuleList never run themselves."""
    prefix = type(model).__name__ + "."
    names = {"": "Global", **{key[len(prefix):]: key for key in dense if key.startswith(prefix)}}

    def outer(name: str, op: Any) -> str | None:
        """The nearest enclosing module of `name` that counted `op` ("" is the root)."""
        while name:
            name = name.rpartition(".")[0]
            if op in dense.get(names.get(name, ""), {}) or name == "":
                return name
        return None

    inner_dense: dict[tuple[str, Any], int] = {}
    inner_sparse: dict[tuple[str, Any], int] = {}
    for name, key in names.items():
        for op, count in dense.get(key, {}).items():
            parent = outer(name, op)
            if parent is not None:
                inner_dense[parent, op] = inner_dense.get((parent, op), 0) + count
                inner_sparse[parent, op] = inner_sparse.get((parent, op), 0) + sparse.get(key, {}).get(op, 0)
    order = [name for name, _ in model.named_modules()]
    order += sorted(set(names) - set(order))  # a module shared under two names counts under one of them
    layers = []
    for name in order:
        key = names.get(name)
        for op, count in (dense.get(key, {}) if key else {}).items():
            own_dense = count - inner_dense.get((name, op), 0)
            own_sparse = sparse.get(key, {}).get(op, 0) - inner_sparse.get((name, op), 0)
            if own_dense or own_sparse:
                layers.append(LayerFlops(name=name, op=str(op), dense=own_dense, sparse=own_sparse))
    return layers
