"""How the WMT-style Transformer (transformers' `MarianMTModel`) loses attention heads and FFN neurons,
and how the pruned model is described and rebuilt.

What transformers' Marian code allows (checked in transformers 5.24, `modeling_marian`):
`MarianAttention.forward` infers the number of heads from the width of its projections
(`view(..., -1, head_dim)`, `reshape(..., -1)` before `out_proj`); its stored `num_heads` is used only
in `__init__`, and the scaling depends on `head_dim` alone, which pruning keeps. The key/value cache
(`DynamicCache` / `EncoderDecoderCache`, self- and cross-attention) is created lazily per layer from
the first keys it receives, so every attention may have its own head count, and beam search only
reorders the cache along the batch axis: `generate()`, greedy and beam, runs unchanged. Each narrowed
attention's `num_heads` is set to its new count anyway, so that the module describes itself truly.
The FFN width is that of `fc1` / `fc2`. So a pruned model is exactly `MarianMTModel(config)` of the
base config with, in every attention sublayer, `q_proj`, `k_proj`, `v_proj` narrowed to `heads *
head_dim` outputs and `out_proj` to as many inputs, and in every layer `fc1` narrowed to the kept
neurons' outputs and `fc2` to as many inputs. `describe` saves those counts, per layer and attention,
under the transformers module names; `rebuild` applies them to the meta-device shell `zoo.load`
builds.

How the layers map onto `StructuredHooks.head_sizes` (one (heads, FFN neurons) pair per layer):
the encoder's layers, then the decoder's. A decoder layer has two attention sublayers (self and
encoder-decoder) and one FFN; its "heads" is the head count of *each* of its two attentions, which
start equal (`decoder_attention_heads`) and are pruned to equal counts, each keeping its own heads of
largest norm. A decoder layer whose two attentions hold different counts (only a hand-written
description makes one) has no single count: `head_sizes` refuses it rather than pick one.

Which heads and neurons stay: the largest by L1 norm, a head's over its query, key and value rows
and its columns of `out_proj`; a neuron's over its `fc1` row and `fc2` column.

MAT (`MultiBranchAttention`) is not narrowed: it splits the concatenated output of its N branches'
heads into N equal slices of d_model, one per branch's `out_proj`, so a branch with fewer heads would
misalign the slices, and the result is the zoo's own module, which plain transformers code cannot
build. Every hook raises `UnsupportedHeadPruningError` for it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import MarianMTModel
from transformers.models.marian.modeling_marian import MarianAttention

from zoo.compress.structured import StructuredHooks, narrow_linear
from zoo.errors import CheckpointError, InvalidArgumentError

FORMAT = "marian-narrowed"
STACKS = ("encoder", "decoder")
ATTENTIONS = {"encoder": ("self_attn",), "decoder": ("self_attn", "encoder_attn")}
PROJECTIONS = ("q_proj", "k_proj", "v_proj")


class UnsupportedHeadPruningError(InvalidArgumentError):
    """A translation model whose attention cannot be narrowed to fewer heads (MAT's multi-branch
    attention): see the module docstring for why."""


def transformer(model: nn.Module) -> MarianMTModel:
    """`model` as a `MarianMTModel` whose every attention sublayer is transformers' `MarianAttention`."""
    if not isinstance(model, MarianMTModel):
        raise InvalidArgumentError(f"{type(model).__name__} is not a MarianMTModel")
    from zoo.families.translation.model import MultiBranchAttention  # model.py imports this module

    for stack in STACKS:
        for i, layer in enumerate(_layers(model, stack)):
            for name in ATTENTIONS[stack]:
                attention = getattr(layer, name)
                where = f"model.{stack}.layers.{i}.{name}"
                if isinstance(attention, MultiBranchAttention):
                    raise UnsupportedHeadPruningError(
                        f"{where} is MAT's MultiBranchAttention, whose heads cannot be pruned: it splits the "
                        f"concatenated heads of its {attention.num_branches} branches into equal slices of d_model, "
                        "one per branch's out_proj, so a narrowed branch would misalign them, and no plain "
                        "transformers model could be built from the result; prune MAT's weights instead (gmp, oneshot)")
                if not isinstance(attention, MarianAttention):
                    raise UnsupportedHeadPruningError(
                        f"{where} is a {type(attention).__name__}, not transformers' MarianAttention: only "
                        "MarianAttention is narrowed to fewer heads")
    return model


def _layers(model: MarianMTModel, stack: str) -> nn.ModuleList:
    return getattr(model.model, stack).layers


def _head_dims(model: MarianMTModel) -> dict[str, int]:
    config = model.config
    return {"encoder": config.d_model // config.encoder_attention_heads,
            "decoder": config.d_model // config.decoder_attention_heads}


def _heads_of(attention: MarianAttention) -> int:
    return attention.q_proj.out_features // attention.head_dim


def layer_sizes(model: nn.Module) -> dict[str, list[dict[str, Any]]]:
    """Per stack and layer: {"heads": {attention name: head count}, "ffn": FFN neurons}."""
    marian = transformer(model)
    return {stack: [{"heads": {name: _heads_of(getattr(layer, name)) for name in ATTENTIONS[stack]},
                     "ffn": layer.fc1.out_features} for layer in _layers(marian, stack)]
            for stack in STACKS}


def head_sizes(model: nn.Module) -> list[tuple[int, int]]:
    """(heads, FFN neurons) of every encoder layer, then every decoder layer (see the module docstring)."""
    out = []
    for stack, layers in layer_sizes(model).items():
        for i, layer in enumerate(layers):
            counts = set(layer["heads"].values())
            if len(counts) != 1:
                raise InvalidArgumentError(f"{stack} layer {i} has {layer['heads']} heads: head pruning needs its "
                                           "attentions to hold one count")
            out.append((counts.pop(), layer["ffn"]))
    return out


def _set_attention(attention: MarianAttention, heads: torch.Tensor | int) -> None:
    """Narrows one attention in place to the given head indices (or the first `heads`, for a shell)."""
    size = attention.head_dim
    rows = heads * size if isinstance(heads, int) else (heads[:, None] * size + torch.arange(size)).reshape(-1)
    for name in PROJECTIONS:
        setattr(attention, name, narrow_linear(getattr(attention, name), rows, 0))
    attention.out_proj = narrow_linear(attention.out_proj, rows, 1)
    attention.num_heads = _heads_of(attention)


def _set_ffn(layer: nn.Module, neurons: torch.Tensor | int) -> None:
    layer.fc1 = narrow_linear(layer.fc1, neurons, 0)
    layer.fc2 = narrow_linear(layer.fc2, neurons, 1)


def _l1(weight: torch.Tensor, dim: int) -> torch.Tensor:
    return weight.detach().abs().sum(dim=dim)


def _largest(scores: torch.Tensor, count: int, what: str) -> torch.Tensor:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(scores):
        raise InvalidArgumentError(f"cannot keep {count!r} of {len(scores)} {what}")
    return torch.sort(torch.argsort(scores, descending=True, stable=True)[:count]).values


def _prune_attention(attention: MarianAttention, count: int) -> None:
    per_row = sum(_l1(getattr(attention, name).weight, 1) for name in PROJECTIONS) + _l1(attention.out_proj.weight, 0)
    _set_attention(attention, _largest(per_row.reshape(-1, attention.head_dim).sum(1), count, "heads"))


def prune_heads(model: nn.Module, heads: list[int], ffn: list[int]) -> None:
    """Keeps, in layer i (the encoder's, then the decoder's), `heads[i]` heads of each attention and
    `ffn[i]` FFN neurons, those of largest L1 norm (in their original order)."""
    marian = transformer(model)
    layers = [(stack, layer) for stack in STACKS for layer in _layers(marian, stack)]
    if len(heads) != len(layers) or len(ffn) != len(layers):
        raise InvalidArgumentError(f"need one head and one FFN count per layer ({len(layers)}: encoder, then decoder)")
    for (stack, layer), n_heads, n_ffn in zip(layers, heads, ffn):
        for name in ATTENTIONS[stack]:
            _prune_attention(getattr(layer, name), n_heads)
        _set_ffn(layer, _largest(_l1(layer.fc1.weight, 1) + _l1(layer.fc2.weight, 0), n_ffn, "FFN neurons"))


def describe(model: nn.Module) -> dict[str, Any]:
    """The pruned architecture: head size per stack, and per layer the head count of each attention
    (by its transformers attribute name) and the FFN width. JSON-able."""
    marian = transformer(model)
    return {"format": FORMAT, "head_dim": _head_dims(marian), **layer_sizes(marian)}


def _count(value: Any, largest: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
        raise CheckpointError(f"saved {what} {value!r} does not fit the model (1 to {largest})")
    return value


def narrow(model: MarianMTModel, architecture: dict[str, Any]) -> MarianMTModel:
    """`model` (the base config's architecture, a shell whose weights are about to be assigned)
    narrowed in place to a description `describe` saved: the first heads and neurons of each layer
    (their weights are what the checkpoint then assigns)."""
    if architecture.get("head_dim") != _head_dims(model):
        raise CheckpointError(f"saved head sizes {architecture.get('head_dim')!r} != the model's {_head_dims(model)}")
    for stack in STACKS:
        layers, saved = _layers(model, stack), architecture.get(stack)
        if not isinstance(saved, list) or len(saved) != len(layers):
            raise CheckpointError(f"the saved architecture must list the {len(layers)} {stack} layers, got {saved!r}")
        for i, (layer, sizes) in enumerate(zip(layers, saved)):
            heads = sizes.get("heads") if isinstance(sizes, dict) else None
            if not isinstance(heads, dict) or set(heads) != set(ATTENTIONS[stack]) or set(sizes) != {"heads", "ffn"}:
                raise CheckpointError(f"saved {stack} layer {i} must be {{'heads': {{{', '.join(ATTENTIONS[stack])}}}, "
                                      f"'ffn'}}, got {sizes!r}")
            for name in ATTENTIONS[stack]:
                attention = getattr(layer, name)
                _set_attention(attention, _count(heads[name], _heads_of(attention), f"{stack} {i} {name} heads"))
            _set_ffn(layer, _count(sizes["ffn"], layer.fc1.out_features, f"{stack} {i} FFN width"))
    return model


def rebuild(model: nn.Module, architecture: dict[str, Any]) -> nn.Module:
    if architecture.get("format") != FORMAT:
        raise CheckpointError(f"a {type(model).__name__} architecture must be {FORMAT!r}, got {architecture!r}")
    return narrow(transformer(model), architecture)


# `model` registers these for MarianMTModel (the Transformer; MAT, the same class, is refused).
HOOKS = StructuredHooks(describe=describe, rebuild=rebuild, head_sizes=head_sizes, prune_heads=prune_heads)
