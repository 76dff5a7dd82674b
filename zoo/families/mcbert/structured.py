"""How the BERT-style models' main encoder (`model.bert`, transformers' `BertModel`) loses attention
heads and FFN neurons, and how the pruned encoder is described and rebuilt.

transformers 5 builds every layer of a `BertModel` with the config's `num_attention_heads` and
`intermediate_size` (head pruning through `BertConfig.pruned_heads` is gone), but its forward infers
the number of heads from the width of the query/key/value projections (`view(..., -1, head_size)`)
and the FFN width from its two linears. So a pruned encoder is exactly: `BertModel(BertConfig(...))`
of the base's config, with, in layer i, `attention.self.{query,key,value}` narrowed to
`heads[i] * head_size` outputs, `attention.output.dense` to as many inputs, `intermediate.dense` to
`intermediate[i]` outputs and `output.dense` to as many inputs. `describe` saves those two lists and
the head size; `narrow_encoder` applies them (what `zoo.load` does to the meta-device shell).

Which heads and neurons stay: the largest by L1 norm, a head's over its query, key and value rows and
its columns of the attention output; a neuron's over its intermediate row and output column.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import BertModel

from zoo.compress.structured import StructuredHooks, narrow_linear
from zoo.errors import CheckpointError, InvalidArgumentError

FORMAT = "bert-narrowed"


def encoder(model: nn.Module) -> BertModel:
    bert = getattr(model, "bert", None)
    if not isinstance(bert, BertModel):
        raise InvalidArgumentError(f"{type(model).__name__} has no BERT encoder at .bert")
    return bert


def head_size(bert: BertModel) -> int:
    return bert.config.hidden_size // bert.config.num_attention_heads


def head_sizes(model: nn.Module) -> list[tuple[int, int]]:
    """(heads, FFN neurons) of every layer of the main encoder."""
    bert = encoder(model)
    size = head_size(bert)
    return [(layer.attention.self.query.out_features // size, layer.intermediate.dense.out_features)
            for layer in bert.encoder.layer]


def _set_layer(layer: nn.Module, heads: torch.Tensor | int, ffn: torch.Tensor | int, size: int) -> None:
    """Narrows one `BertLayer` in place to the given head and neuron indices (or counts)."""
    attention = layer.attention.self
    rows = heads * size if isinstance(heads, int) else (heads[:, None] * size + torch.arange(size)).reshape(-1)
    for name in ("query", "key", "value"):
        setattr(attention, name, narrow_linear(getattr(attention, name), rows, 0))
    layer.attention.output.dense = narrow_linear(layer.attention.output.dense, rows, 1)
    count = attention.query.out_features // size
    attention.num_attention_heads, attention.all_head_size = count, count * size
    layer.intermediate.dense = narrow_linear(layer.intermediate.dense, ffn, 0)
    layer.output.dense = narrow_linear(layer.output.dense, ffn, 1)


def _l1(weight: torch.Tensor, dim: int) -> torch.Tensor:
    return weight.detach().abs().sum(dim=dim)


def prune_heads(model: nn.Module, heads: list[int], ffn: list[int]) -> None:
    """Keeps, in layer i of the main encoder, its `heads[i]` heads and `ffn[i]` FFN neurons of
    largest L1 norm (in their original order)."""
    bert = encoder(model)
    size = head_size(bert)
    layers = bert.encoder.layer
    if len(heads) != len(layers) or len(ffn) != len(layers):
        raise InvalidArgumentError(f"need one head and one FFN count per layer ({len(layers)})")
    for layer, n_heads, n_ffn in zip(layers, heads, ffn):
        attention = layer.attention.self
        per_row = sum(_l1(getattr(attention, name).weight, 1) for name in ("query", "key", "value"))
        per_row = per_row + _l1(layer.attention.output.dense.weight, 0)
        head_scores = per_row.reshape(-1, size).sum(1)
        neuron_scores = _l1(layer.intermediate.dense.weight, 1) + _l1(layer.output.dense.weight, 0)
        if not 1 <= n_heads <= len(head_scores) or not 1 <= n_ffn <= len(neuron_scores):
            raise InvalidArgumentError(f"cannot keep {n_heads} of {len(head_scores)} heads and {n_ffn} of "
                                       f"{len(neuron_scores)} FFN neurons")
        keep_heads = torch.sort(torch.argsort(head_scores, descending=True, stable=True)[:n_heads]).values
        keep_ffn = torch.sort(torch.argsort(neuron_scores, descending=True, stable=True)[:n_ffn]).values
        _set_layer(layer, keep_heads, keep_ffn, size)


def describe(model: nn.Module) -> dict[str, Any]:
    sizes = head_sizes(model)
    return {"format": FORMAT, "head_size": head_size(encoder(model)), "heads": [h for h, _ in sizes],
            "intermediate": [f for _, f in sizes]}


def narrow_encoder(bert: BertModel, heads: list[int], intermediate: list[int]) -> BertModel:
    """A `BertModel` of the base config (a shell: its weights are about to be assigned) narrowed in
    place to `heads[i]` heads and `intermediate[i]` FFN neurons in layer i."""
    size = head_size(bert)
    layers = bert.encoder.layer
    if len(heads) != len(layers) or len(intermediate) != len(layers):
        raise CheckpointError(f"the saved architecture lists {len(heads)} head and {len(intermediate)} FFN "
                              f"sizes for an encoder of {len(layers)} layers")
    for layer, n_heads, n_ffn in zip(layers, heads, intermediate):
        if (isinstance(n_heads, bool) or not isinstance(n_heads, int) or isinstance(n_ffn, bool)
                or not isinstance(n_ffn, int) or not 1 <= n_heads * size <= layer.attention.self.query.out_features
                or not 1 <= n_ffn <= layer.intermediate.dense.out_features):
            raise CheckpointError(f"saved sizes {n_heads} heads / {n_ffn} FFN neurons do not fit the encoder")
        _set_layer(layer, n_heads, n_ffn, size)
    return bert


def rebuild(model: nn.Module, architecture: dict[str, Any]) -> nn.Module:
    if architecture.get("format") != FORMAT:
        raise CheckpointError(f"a {type(model).__name__} architecture must be {FORMAT!r}, got {architecture!r}")
    bert = encoder(model)
    if architecture.get("head_size") != head_size(bert):
        raise CheckpointError(f"saved head size {architecture.get('head_size')} != the encoder's {head_size(bert)}")
    narrow_encoder(bert, list(architecture.get("heads", ())), list(architecture.get("intermediate", ())))
    return model


# `model` registers these for its classes (the classifier, the MLM baseline, MC-BERT's main encoder).
HOOKS = StructuredHooks(describe=describe, rebuild=rebuild, head_sizes=head_sizes, prune_heads=prune_heads)
