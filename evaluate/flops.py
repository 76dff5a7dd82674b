"""FLOPs of one forward pass at batch 1: dense, and counting only multiply-accumulates whose weight is
non-zero (what a sparse kernel could skip), with a per-module breakdown.

Both counts come from torch's `FlopCounterMode` (2 x multiply-accumulates, exact for convolutions and
matrix products) in one forward pass: an outer counter keeps the dense formulas (torch's, and the
attention one below); an inner one replaces the formulas of the weight-bearing ops by `_get_raw` formulas
that see the real tensors and scale the dense count by the fraction of multiply-accumulates whose weight
operand is non-zero.
A weight operand is a tensor sharing storage with a parameter or buffer of the model (so `w.t()`
inside `F.linear` is one); zeros in activations (after a ReLU, say) never count as sparsity.

Scaled dot-product attention is counted here, the same way whichever kernel runs it (torch's registry
lacks some, such as the CPU flash kernel): 2 x (Lq Lk E + Lq Lk Ev) per batch entry and query head, torch's
own `sdpa_flop` where torch has one. The math kernel is not one op: it runs as matrix products, counted as
such, and since it scales the query and key first, a weight among them counts as dense there.

A count never raises for want of a formula: an op that does products of tensors but that neither torch
nor this module has a formula for (`_PRODUCTS_WITHOUT_FORMULA`), an op of any namespace but aten's (whose
work is unknown), and an op whose formula raises on its arguments count 0 FLOPs and are named, with their
number of calls, in `FlopReport.uncounted`. Other aten ops (element-wise ops, normalizations, softmax,
copies and views) count 0 by torch's convention.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from zoo.errors import InvalidArgumentError
from zoo.evaluate.report import LayerFlops

aten = torch.ops.aten

# Op packets (not overloads: FlopCounterMode looks formulas up by packet) whose dense formula we scale.
_CONV_OPS = (aten.convolution, aten._convolution, aten.cudnn_convolution, aten._slow_conv2d_forward,
             aten.convolution_overrideable)
# The fused kernels `aten.scaled_dot_product_attention` dispatches to (those this torch has), all taking
# query, key and value first; counted by `_attention_flops`, not torch's registry.
_SDPA_OPS = tuple(getattr(aten, name) for name in (
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
) if hasattr(aten, name))
# Position of the two operands of a matrix product in each op's arguments.
_MATMUL_OPERANDS = {aten.mm: (0, 1), aten.addmm: (1, 2), aten.bmm: (0, 1), aten.baddbmm: (1, 2)}
# aten ops doing products of tensors that torch's FLOP registry has no formula for (as of torch 2.14),
# nor this module: quantized and semi-structured sparse products, in-place and vector products, fused
# recurrent cells, convolutions torch does not route through `aten.convolution`. Names, not packets, so
# that ops an older torch lacks need no care; one a later torch counts is counted (its formula wins).
_PRODUCTS_WITHOUT_FORMULA = frozenset(f"aten.{name}" for name in (
    "_int_mm", "_weight_int8pack_mm", "_weight_int4pack_mm", "_weight_int4pack_mm_for_cpu",
    "_weight_int4pack_mm_with_scales_and_zeros", "_dyn_quant_matmul_4bit", "_scaled_mm_v2", "_grouped_mm",
    "_scaled_grouped_mm", "_scaled_grouped_mm_v2", "_cslt_sparse_mm", "_sparse_semi_structured_linear",
    "_sparse_semi_structured_mm", "_sparse_semi_structured_addmm", "_sparse_mm", "_sparse_addmm",
    "_addmm_activation", "addmm_", "baddbmm_", "addbmm", "addbmm_", "addmv", "addmv_", "addr", "addr_", "mv",
    "dot", "vdot", "mkldnn_linear", "mkldnn_convolution", "mkldnn_rnn_layer", "_thnn_fused_lstm_cell",
    "_thnn_fused_gru_cell", "_cudnn_rnn", "miopen_rnn", "miopen_convolution", "miopen_depthwise_convolution",
    "cudnn_convolution_transpose", "cudnn_convolution_relu", "cudnn_convolution_add_relu",
    "slow_conv3d_forward", "slow_conv_dilated2d", "slow_conv_dilated3d", "slow_conv_transpose2d",
    "slow_conv_transpose3d", "_conv_depthwise2d", "conv_depthwise3d", "_nnpack_spatial_convolution",
    "_native_multi_head_attention", "_scaled_dot_product_attention_math_for_mps",
    "_flash_attention_forward_no_dropout_inplace",
))
# Namespaces of bookkeeping ops (devices, profiler ranges) that do no arithmetic.
_BOOKKEEPING_NAMESPACES = frozenset({"prim", "profiler"})


@dataclass(frozen=True)
class FlopReport:
    """FLOPs for one example (2 x multiply-accumulates). `layers` has one entry per (module, op) that
    counted FLOPs, attributed to the innermost module running the op (the root model is named '');
    their dense and sparse columns sum to the totals. `uncounted` names the ops left out of both counts
    (see the module's docstring), op name -> number of calls, in name order; empty when none was."""

    dense: int
    sparse: int
    layers: list[LayerFlops] = field(default_factory=list)
    uncounted: dict[str, int] = field(default_factory=dict)


def count_flops(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> FlopReport:
    """Count the FLOPs of `model(*example_input)` for the first example of the batch (dim 0), in eval
    mode without autograd; the model's training flag is restored afterwards."""
    _refuse_reparametrized(model)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    inputs = tuple(x[:1] if isinstance(x, torch.Tensor) else x for x in inputs)
    formulas = _dense_formulas()
    dense_failures: Counter[str] = Counter()
    sparse_failures: Counter[str] = Counter()
    running = _RunningModules(model)
    dense_mapping = _guarded(formulas, dense_failures, running.counter("dense"))
    sparse_mapping = {**_guarded(formulas, sparse_failures, running.counter("sparse")),
                      **_guarded(_sparse_mapping(_weight_storages(model), formulas), sparse_failures,
                                 running.counter("sparse"))}
    was_training = model.training
    model.eval()
    try:
        # The op recorder is entered first so that it sees the ops the counters run, after they decomposed
        # those they have no formula for.
        with torch.no_grad(), running, _OpRecorder() as ran, \
                FlopCounterMode(display=False, custom_mapping=dense_mapping) as dense, \
                FlopCounterMode(display=False, custom_mapping=sparse_mapping) as sparse:
            model(*inputs)
    finally:
        model.train(was_training)
    layers = running.layers()
    without_formula = Counter({_op_name(op): calls for op, calls in ran.calls.items()
                               if op not in formulas and _does_products(op)})
    uncounted = without_formula + (dense_failures | sparse_failures)
    return FlopReport(dense=dense.get_total_flops(), sparse=sparse.get_total_flops(), layers=layers,
                      uncounted=dict(sorted(uncounted.items())))


class _OpRecorder(TorchDispatchMode):
    """Counts the calls of each op (by packet) that reaches it, then runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[Any] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        self.calls[func._overloadpacket] += 1
        return func(*args, **(kwargs or {}))


def _op_name(op: Any) -> str:
    """"aten.mm" for `torch.ops.aten.mm` (a packet), the object's own string for other formula keys."""
    return str(op)


def _does_products(op: Any) -> bool:
    """Whether an op with no formula is left out of the counts rather than counted 0 by convention."""
    name = _op_name(op)
    namespace = name.partition(".")[0]
    if namespace == "aten":
        return name in _PRODUCTS_WITHOUT_FORMULA
    return namespace not in _BOOKKEEPING_NAMESPACES


def _dense_formulas() -> dict[Any, Callable[..., int]]:
    """Raw dense formulas (taking the op's tensors, `out_val` by keyword): torch's registry as it stands
    now (formulas registered after import included), with attention counted by `_attention_flops`."""
    return {**flop_registry, **{packet: _attention_flops for packet in _SDPA_OPS}}


def _guarded(mapping: Mapping[Any, Callable[..., int]], failures: Counter[str],
             on_count: Callable[[Any, int], None] | None = None) -> dict[Any, Callable[..., int]]:
    """custom_mapping entries for FlopCounterMode: `mapping`'s raw formulas, each counting 0 and adding
    its op to `failures` where it raises; `on_count(op, flops)` is told every count."""

    def guard(op: Any, formula: Callable[..., int]) -> Callable[..., int]:
        def counted(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            try:
                flops = formula(*args, out_val=out_val, **kwargs)
            except Exception:  # any error of a formula on these arguments: the op is reported uncounted
                failures[_op_name(op)] += 1
                return 0
            if on_count is not None:
                on_count(op, flops)
            return flops

        counted._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode passes raw tensors
        return counted

    return {op: guard(op, formula) for op, formula in mapping.items()}


def _attention_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                     out_val: Any = None, **kwargs: Any) -> int:
    """Dense FLOPs of softmax(q k^T) v for (..., L, E) operands: 2 Lq Lk E for the scores and 2 Lq Lk Ev
    for the weighted values, per entry of the query's leading dimensions (batch, heads); the key's and
    value's leading dimensions divide the query's (grouped-query attention repeats their heads)."""
    *batch, queries, dim = query.shape
    *key_batch, keys, key_dim = key.shape
    *value_batch, values, value_dim = value.shape
    if key_dim != dim or values != keys or key_batch != value_batch or len(key_batch) != len(batch):
        raise ValueError(f"attention operands do not match: query {tuple(query.shape)}, key "
                         f"{tuple(key.shape)}, value {tuple(value.shape)}")
    if any(kv == 0 or q % kv for q, kv in zip(batch, key_batch)):
        raise ValueError(f"the key's leading dimensions {key_batch} do not divide the query's {batch}")
    return 2 * math.prod(batch) * queries * keys * (dim + value_dim)


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


def _sparse_mapping(weights: frozenset[int],
                    formulas: Mapping[Any, Callable[..., int]]) -> dict[Any, Callable[..., int]]:
    """Raw formulas returning the sparse count of each weighted op: its dense count from `formulas`,
    scaled by the share of its multiply-accumulates whose weight operand is non-zero."""

    def is_weight(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.numel() > 0 and t.untyped_storage().data_ptr() in weights

    def conv(packet: Any) -> Callable[..., int]:
        def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            dense_flops = formulas[packet](*args, out_val=out_val, **kwargs)
            weight = args[1]
            if not is_weight(weight):
                return dense_flops
            # Every weight element takes part in the same number of multiply-accumulates.
            return dense_flops * int(torch.count_nonzero(weight)) // weight.numel()

        return formula

    def matmul(packet: Any) -> Callable[..., int]:
        first, second = _MATMUL_OPERANDS[packet]

        def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            dense_flops = formulas[packet](*args, out_val=out_val, **kwargs)
            a, b = args[first], args[second]
            if not (is_weight(a) or is_weight(b)):
                return dense_flops
            # a: (..., m, k), b: (..., k, n): per k, the rows of a times the columns of b that are non-zero.
            nonzero = _contract(_count(a, -2, is_weight(a)), _count(b, -1, is_weight(b)))
            return dense_flops * nonzero // _contract(_count(a, -2, False), _count(b, -1, False))

        return formula

    def attention(packet: Any) -> Callable[..., int]:
        def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            dense_flops = formulas[packet](*args, out_val=out_val, **kwargs)
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
    return mapping


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


class _RunningModules:
    """Which of the model's modules runs each counted op: the innermost one running at the time (global
    forward hooks keep the stack of running modules), so each op's FLOPs count once, for the module that
    ran it. A module shared under two names counts under the first `named_modules` gives; an op no module
    of the model runs inside (a function called on the root's behalf) counts for the root, ""."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(module): name for name, module in model.named_modules()}
        self.order = list(self.names.values())
        self.stack: list[str] = []
        self.counts: dict[str, dict[tuple[str, Any], int]] = {"dense": Counter(), "sparse": Counter()}
        self._handles: list[Any] = []

    def counter(self, kind: str) -> Callable[[Any, int], None]:
        counts = self.counts[kind]

        def count(op: Any, flops: int) -> None:
            counts[self.stack[-1] if self.stack else "", op] += flops

        return count

    def __enter__(self) -> _RunningModules:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def enter(module: nn.Module, args: Any) -> None:
            if id(module) in self.names:
                self.stack.append(self.names[id(module)])

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            if id(module) in self.names and self.stack:
                self.stack.pop()

        self._handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self.stack.clear()

    def layers(self) -> list[LayerFlops]:
        """Per (module, op) FLOPs the module ran itself, in `named_modules` order."""
        dense, sparse = self.counts["dense"], self.counts["sparse"]
        rank = {name: i for i, name in enumerate(self.order)}
        keys = sorted(set(dense) | set(sparse), key=lambda key: (rank.get(key[0], len(rank)), str(key[1])))
        return [LayerFlops(name=name, op=str(op), dense=dense.get((name, op), 0), sparse=sparse.get((name, op), 0))
                for name, op in keys if dense.get((name, op), 0) or sparse.get((name, op), 0)]
