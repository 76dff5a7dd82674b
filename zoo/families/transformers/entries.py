"""Hugging Face transformers checkpoints as zoo entries: the repo reader (light: no torch, no transformers).

A repo whose `config.json` is a transformers config (`model_type`, `architectures`) of a supported
architecture becomes an entry through `read_transformers_repo`, registered in `zoo.repo_readers`:

- name `hf-hub:org/name`, `repo_id` the repo, `revision` the commit it was read at, source "upstream";
- family "transformers", task "text-classification" (the zoo's sentence classification task: the
  model is called with token ids and returns logits);
- `model_kwargs["config"]`: the repo's `config.json` as read (plain data), from which `model.build`
  makes the architecture; its weights are the repo's `model.safetensors`, under save_pretrained's names;
- `input`: a `TokenizedTextInput` (sequence length and vocabulary from the config), the tokenizer being
  the repo's own files (`tokenizer.json`, ...), loaded from its snapshot folder by transformers;
- `keep_dense`: the embeddings and the classifier; `eval_data`: `transformers_text`, whose test split is
  not on any machine (the report says "not measured") and whose train split is calibration text.

Supported: the architectures of `SUPPORTED` (tested offline here). A transformers config of another
architecture raises `UnsupportedArchitectureError`; a repo that is not a transformers one is not this
reader's (it returns None, so another reader may take it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.entry import DataSpec, ModelEntry, register_input_type
from zoo.errors import CheckpointError, InvalidArgumentError
from zoo.families.mcbert.entries import TextInput
from zoo.repo_readers import REPO_READERS, RepoSnapshot

if TYPE_CHECKING:
    import torch

MODEL_FAMILIES = ("transformers",)
TASKS = ("text-classification",)  # the mcbert family's task (token ids in, logits out), which `task` imports
DATASETS = ("transformers_text",)
WEIGHTS_FILE = "model.safetensors"
MAX_LENGTH = 128  # the longest sequence the zoo feeds (calibration, FLOPs, latency); the config may allow more
EVAL_DATA = DataSpec("transformers_text", "test")


class UnsupportedArchitectureError(InvalidArgumentError):
    """A transformers repo whose architecture (or model type) the zoo does not build; says which it does."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """A supported transformers architecture: its model type, the prefix of its encoder's parameters
    (`base_model_prefix`) and the modules the default recipes keep dense."""

    model_type: str
    keep_dense: tuple[str, ...]


SUPPORTED: dict[str, ArchitectureSpec] = {
    "BertForSequenceClassification": ArchitectureSpec(
        "bert", (r"bert\.embeddings\.(word|position|token_type)_embeddings", "classifier")),
}


@register_input_type  # a checkpoint config may record it (zoo.hub_ids.entry_record)
@dataclass(frozen=True)
class TokenizedTextInput(TextInput):
    """Token ids of at most `max_length` from the repo's own tokenizer of `vocab_size` entries; `pad_id`
    marks padding (None: the config names no pad token, every position is attended)."""

    pad_id: int | None = None

    def example_ids(self, batch: int = 1) -> torch.Tensor:
        """A full-length batch of one non-pad token (FLOPs and latency depend only on the shape)."""
        import torch

        token = 0 if self.pad_id != 0 else 1
        return torch.full((batch, self.max_length), token, dtype=torch.long)


def architecture_of(config: Mapping[str, Any]) -> tuple[str, ArchitectureSpec]:
    """The supported architecture a transformers config names; UnsupportedArchitectureError otherwise."""
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    name = architectures[0] if len(architectures) == 1 else None
    spec = SUPPORTED.get(name) if isinstance(name, str) else None
    if spec is None or spec.model_type != model_type:
        raise UnsupportedArchitectureError(
            f"transformers architecture {architectures or None} (model_type {model_type!r}) is not supported; "
            f"supported: {', '.join(f'{a} ({s.model_type})' for a, s in SUPPORTED.items())}")
    return name, spec


def is_transformers_config(config: Mapping[str, Any]) -> bool:
    return isinstance(config.get("model_type"), str) and isinstance(config.get("architectures"), list)


def num_labels(config: Mapping[str, Any]) -> int:
    id2label = config.get("id2label")
    count = len(id2label) if isinstance(id2label, Mapping) and id2label else config.get("num_labels", 2)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CheckpointError(f"config.json gives no usable number of labels ({count!r})")
    return count


def read_transformers_repo(snapshot: RepoSnapshot) -> ModelEntry | None:
    """The entry of a transformers repo (see the module docstring); None when it is not one."""
    config = snapshot.config
    if not is_transformers_config(config):
        return None
    architecture, spec = architecture_of(config)
    if WEIGHTS_FILE not in snapshot.files:
        raise CheckpointError(f"{snapshot.repo_id}@{snapshot.commit} has no {WEIGHTS_FILE} (the zoo reads "
                              f"transformers weights from safetensors only); files: {', '.join(snapshot.files)}")
    vocab = config.get("vocab_size")
    positions = config.get("max_position_embeddings")
    if not (isinstance(vocab, int) and isinstance(positions, int)):
        raise CheckpointError(f"{snapshot.repo_id}: config.json lacks an integer vocab_size or max_position_embeddings")
    pad = config.get("pad_token_id")
    return ModelEntry(
        name=snapshot.entry_name, family="transformers", task="text-classification", repo_id=snapshot.repo_id,
        source="upstream", revision=snapshot.commit, architecture=spec.model_type,
        input=TokenizedTextInput(max_length=min(positions, MAX_LENGTH), vocab_size=vocab,
                                 pad_id=pad if isinstance(pad, int) else None),
        eval_data=EVAL_DATA, num_classes=num_labels(config), label_set=f"{snapshot.repo_id} labels",
        model_kwargs={"config": dict(config)}, keep_dense=spec.keep_dense,
        description=f"{architecture} from the Hugging Face repo {snapshot.repo_id} at commit {snapshot.commit}.",
    )


REPO_READERS.register("transformers", read_transformers_repo)
