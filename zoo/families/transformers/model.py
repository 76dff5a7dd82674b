"""Sequence classifiers of transformers, built from a repo's `config.json` (the entry's `model_kwargs`).

`build` makes the architecture `config.json` names, as `AutoModelForSequenceClassification.from_config`
does, of a subclass (`ZooBertForSequenceClassification`, ...) whose `forward(input_ids)` returns the
logits: padding (`pad_token_id`) masked out of attention, positions 0..L-1 and token type 0, which are
what the transformers model uses by default. Its parameter names are transformers' own (the names
`save_pretrained` writes), so a repo's `model.safetensors` loads into it unchanged, and every layer is a
plain nn.Linear / nn.Embedding that pruning and quantization act on.

The embeddings' two index buffers (`position_ids`, `token_type_ids`: not saved, `persistent=False`) are
removed: `forward` passes both, so a model built on the meta device (what `zoo.load` does before
assigning weights) has no tensor left without a value.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import CONFIG_MAPPING, BertForSequenceClassification, PretrainedConfig

from zoo.entry import ModelEntry
from zoo.errors import CheckpointError
from zoo.families.transformers.entries import MODEL_FAMILIES, SUPPORTED, architecture_of
from zoo.models import FAMILIES

INDEX_BUFFERS = ("position_ids", "token_type_ids")


class _LogitsFromIds:
    """Mixed in before a transformers `*ForSequenceClassification`: called with token ids, returns logits."""

    config: PretrainedConfig

    def forward(self, input_ids: Tensor) -> Tensor:  # type: ignore[override]
        pad = self.config.pad_token_id
        mask = torch.ones_like(input_ids) if pad is None else (input_ids != pad).long()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
        return super().forward(input_ids=input_ids, attention_mask=mask, position_ids=positions,  # type: ignore[misc]
                               token_type_ids=torch.zeros_like(input_ids)).logits


class ZooBertForSequenceClassification(_LogitsFromIds, BertForSequenceClassification):
    """transformers' BertForSequenceClassification, called with token ids, returning logits."""


CLASSES: dict[str, type[nn.Module]] = {"BertForSequenceClassification": ZooBertForSequenceClassification}
if set(CLASSES) != set(SUPPORTED):
    raise RuntimeError("zoo.families.transformers: entries.SUPPORTED and model.CLASSES disagree")


def transformers_config(entry: ModelEntry) -> PretrainedConfig:
    """The transformers config object of the entry's `config.json` (`model_kwargs["config"]`)."""
    config: dict[str, Any] = dict(entry.model_kwargs["config"])
    architecture_of(config)
    return CONFIG_MAPPING[config["model_type"]].from_dict(config)


def build(entry: ModelEntry) -> nn.Module:
    """The entry's architecture (random init; on the meta device when built in that context)."""
    config = transformers_config(entry)
    name, _ = architecture_of(entry.model_kwargs["config"])
    model = CLASSES[name]._from_config(config)
    if model.num_labels != entry.num_classes:
        raise CheckpointError(f"{entry.name}: config.json has {model.num_labels} labels, the entry {entry.num_classes}")
    for module in model.modules():
        for buffer in INDEX_BUFFERS:
            if buffer in module._buffers and buffer in module._non_persistent_buffers_set:
                delattr(module, buffer)
    return model


for _family in MODEL_FAMILIES:
    FAMILIES.register(_family, build)
