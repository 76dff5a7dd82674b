"""Text for transformers-repo entries, tokenized by the repo's own tokenizer.

`transformers_text` (the entries' `eval_data`):

- split "train": calibration text for post-training quantization, which needs inputs but no labels:
  the first `CALIBRATION_PARAGRAPHS` paragraphs of Python's own documentation (`pydoc_data.topics`, the
  mcbert family's pre-training text, which ships with Python), each tokenized by the repo's tokenizer
  (its special tokens added), truncated and padded to the entry's `max_length`: `(input_ids,)` rows.
- split "test": labelled evaluation data, which a Hub repo does not bring: `NoEvaluationDataError`, so
  the report says the task metric was not measured, as for an upstream ImageNet checkpoint without
  its evaluation folder.

The tokenizer is `AutoTokenizer.from_pretrained` of the repo's snapshot folder (`snapshot_folder`): the
local hub's copy when it has the entry's revision, else the Hugging Face cache's (never the network:
the base model was downloaded before anything asks for its data).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from zoo.data import DATASET_DESCRIPTIONS, DATASETS
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError, NoEvaluationDataError
from zoo.families.transformers.entries import TokenizedTextInput

CALIBRATION_PARAGRAPHS = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "added_tokens.json")

DATASET_DESCRIPTIONS.register(
    "transformers_text", "for a transformers Hub repo: calibration text (Python's documentation topics, tokenized "
                         "by the repo's tokenizer) and no labelled evaluation data")


def snapshot_folder(entry: ModelEntry) -> Path:
    """The folder holding the files of the entry's repo at its revision (local hub, else HF cache)."""
    from zoo.hub import download
    from zoo.store import Store

    hub = Store().hub
    if hub.has(entry.repo_id, entry.revision):
        return hub.snapshot(entry.repo_id, entry.revision)
    return download(entry.repo_id, revision=entry.revision, local_files_only=True)


@lru_cache(maxsize=8)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def tokenizer(entry: ModelEntry):
    """The repo's tokenizer (transformers' AutoTokenizer of its snapshot folder)."""
    return _tokenizer(str(snapshot_folder(entry)))


def encode(entry: ModelEntry, texts: list[str]) -> torch.Tensor:
    """(len(texts), max_length) token ids of `texts`, special tokens added, truncated and padded."""
    spec = _text_input(entry)
    tok = tokenizer(entry)
    if tok.pad_token_id is None:
        raise InvalidArgumentError(f"{entry.name}: its tokenizer has no pad token to pad a batch with")
    ids = tok(texts, truncation=True, max_length=spec.max_length, padding="max_length", return_tensors="pt")
    return ids["input_ids"]


@DATASETS.decorator("transformers_text")
def transformers_text(split: str, entry: ModelEntry) -> Dataset:
    """Calibration token ids ("train") or NoEvaluationDataError ("test"): see the module docstring."""
    if split == "test":
        raise NoEvaluationDataError(f"{entry.name} is a Hub repo that brings no labelled evaluation data")
    if split != "train":
        raise InvalidArgumentError(f"transformers_text has splits 'train' (calibration) and 'test', not {split!r}")
    from zoo.families.mcbert.data import pydoc_split

    return TensorDataset(encode(entry, list(pydoc_split("train")[:CALIBRATION_PARAGRAPHS])))


def _text_input(entry: ModelEntry) -> TokenizedTextInput:
    if not isinstance(entry.input, TokenizedTextInput):
        raise InvalidArgumentError(f"{entry.name} is not a transformers-repo entry (its input is "
                                   f"{type(entry.input).__name__})")
    return entry.input
