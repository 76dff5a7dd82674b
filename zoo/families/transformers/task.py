"""The transformers family's task is the zoo's `text-classification` (token ids in, logits out, accuracy),
registered by the mcbert family's task module: imported here so that this family's modules bring it. What
differs is how the user's sentences become token ids (the repo's own tokenizer) and how the classifier is
replaced for the data's classes (the transformers config says how many labels): this family's adapter.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from zoo.entry import ModelEntry
from zoo.families.mcbert.task import TEXT_CLASSIFICATION  # noqa: F401  (registers the task)
from zoo.userdata import USER_DATA_ADAPTERS, UserDataAdapter


def _sentences(entry: ModelEntry, texts: Sequence[Any], labels: list[int], training: bool) -> Dataset:
    """`(input_ids, label)` rows, the texts (strings: `zoo.userdata.read` checked) tokenized by the repo's
    tokenizer as its calibration text is."""
    from zoo.families.transformers.data import encode

    return TensorDataset(encode(entry, list(texts)), torch.tensor(labels, dtype=torch.long))


def _with_classes(entry: ModelEntry, num_classes: int) -> ModelEntry:
    """The entry whose config.json names `num_classes` labels (generic names: the data's are in the variant's
    config), which is what the family's builder makes."""
    labels = {str(i): f"LABEL_{i}" for i in range(num_classes)}
    config = {k: v for k, v in entry.model_kwargs["config"].items() if k != "num_labels"}
    config.update(id2label=labels, label2id={v: int(k) for k, v in labels.items()})
    return dataclasses.replace(entry, num_classes=num_classes, label_set="",
                               model_kwargs={**entry.model_kwargs, "config": config})


def _reset_classifier(model: nn.Module, num_classes: int) -> None:
    """A freshly initialized classifier of `num_classes` outputs, initialized as transformers initializes it,
    and the model's config saying so."""
    old = model.classifier
    model.classifier = nn.Linear(old.in_features, num_classes)
    model._init_weights(model.classifier)
    model.num_labels = model.config.num_labels = num_classes


USER_DATA_ADAPTERS.register("transformers/text-classification", UserDataAdapter(
    column="text", dataset=_sentences, with_classes=_with_classes, reset_classifier=_reset_classifier))
