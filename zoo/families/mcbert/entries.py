"""The MC-BERT family and its masked-LM baseline: registry entries, and the vocabulary and input they share.

How the registry represents pre-training vs fine-tuning (as timm names `vit_*.augreg_in21k` and
`vit_*.augreg_in21k_ft_in1k`): the architecture is the encoder size (`mcbert_mini`, `bert_mini`),
the tag says which weights.

- `<arch>.zoo_pydoc`: the pre-trained model with its pre-training heads, task `multi-choice-cloze`
  (MC-BERT: main model + meta controller) or `fill-mask` (the MLM baseline), trained on the Python
  documentation (`zoo.families.mcbert.data`). Its metrics are the pre-training task's accuracies.
- `<arch>.zoo_pydoc_ft_stdlib`: a `text-classification` model whose encoder starts from
  `<arch>.zoo_pydoc`'s main encoder (`TrainSpec.init_from`; MC-BERT's controller is dropped,
  as in the paper only the main model is fine-tuned), fine-tuned on `stdlib_topics`.
- `bert_mini.zoo_stdlib`: the same classifier trained from random initialization: the control that
  says what pre-training is worth on this task.

The two families are `mcbert` and `bert` (the baseline); both are built by `model.build_text_model`
from `model_kwargs["kind"]` ("mcbert", "mlm" or "classifier"). `test_*` entries are tiny versions the
tests use. Every size is in `model_kwargs`; vocabulary and sequence length are in the `TextInput`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.entry import DataSpec, ModelEntry, TrainSpec, register_input_type
from zoo.errors import InvalidArgumentError
from zoo.models import register_entry
from zoo.userdata import LABEL_NAMES, TaskDefaults

if TYPE_CHECKING:
    import torch

MODEL_FAMILIES = ("mcbert", "bert")
TASKS = ("multi-choice-cloze", "fill-mask", "text-classification")
DATASETS = ("pydoc_text", "stdlib_topics")
PRETRAIN_DATA = DataSpec("pydoc_text", "train")
CLASSIFY_DATA = DataSpec("stdlib_topics", "train")
PRETRAIN_KEEP_DENSE = (r"bert\.embeddings\.token_type_embeddings", "candidate_bias",
                       r"controller\.encoder\.embeddings\.token_type_embeddings")
CLASSIFIER_KEEP_DENSE = (r"bert\.embeddings\.token_type_embeddings", "classifier")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[NEITHER]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, NEITHER_ID = range(len(SPECIAL_TOKENS))

TOPIC_MODULES: dict[str, tuple[str, ...]] = {
    "files": ("os", "os.path", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "stat", "io",
              "zipfile", "tarfile", "gzip", "bz2", "lzma"),
    "text": ("re", "string", "textwrap", "difflib", "unicodedata", "codecs", "html", "html.parser", "locale",
             "gettext"),
    "numbers": ("math", "cmath", "decimal", "fractions", "random", "statistics", "numbers", "operator", "heapq",
                "bisect"),
    "network": ("socket", "ssl", "http.client", "http.server", "http.cookies", "urllib.request", "urllib.parse",
                "email.message", "email.utils", "smtplib", "ftplib", "imaplib", "poplib", "xmlrpc.client",
                "ipaddress", "mimetypes"),
    "concurrency": ("threading", "multiprocessing", "multiprocessing.pool", "concurrent.futures", "asyncio",
                    "asyncio.tasks", "asyncio.events", "asyncio.streams", "queue", "subprocess", "sched",
                    "selectors", "signal"),
}
TOPICS = tuple(TOPIC_MODULES)
LABEL_NAMES.register("stdlib-topics", lambda: TOPICS)


@register_input_type  # a checkpoint config may record it (zoo.hub_ids.entry_record)
@dataclass(frozen=True)
class TextInput:
    """What a BERT-style model eats: token ids of at most `max_length`, from the BPE vocabulary of
    `vocab_size` entries trained on the pre-training text."""

    max_length: int
    vocab_size: int

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise InvalidArgumentError(f"max_length must be at least 8, got {self.max_length}")
        if self.vocab_size <= len(SPECIAL_TOKENS) + 64:
            raise InvalidArgumentError(f"vocab_size must exceed {len(SPECIAL_TOKENS) + 64}, got {self.vocab_size}")

    def example_ids(self, batch: int = 1) -> torch.Tensor:
        """A `[CLS] tok ... [SEP]` batch of full length (FLOPs and latency are measured on it)."""
        import torch

        ids = torch.full((batch, self.max_length), len(SPECIAL_TOKENS), dtype=torch.long)
        ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
        return ids


MINI = {"hidden": 128, "layers": 4, "heads": 4, "intermediate": 512, "max_positions": 64, "dropout": 0.1}
TINY = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64, "max_positions": 32, "dropout": 0.1}
MINI_PRETRAIN_INPUT = TextInput(max_length=64, vocab_size=4096)
MINI_CLASSIFY_INPUT = TextInput(max_length=48, vocab_size=4096)
TINY_PRETRAIN_INPUT = TextInput(max_length=32, vocab_size=512)
TINY_CLASSIFY_INPUT = TextInput(max_length=32, vocab_size=512)
MC_KWARGS = {"divider": 2, "num_candidates": 10, "loss_weight": 50.0, "mask_rate": 0.15}
PRETRAIN_LR, PRETRAIN_EPOCHS = 1e-3, 8
FINETUNE_LR, FINETUNE_EPOCHS = 5e-4, 6
# The user's text (zoo.userdata): the classifiers here have TrainSpecs and fine-tune with theirs; these are
# for a text classifier without one: the fine-tuning of the registered classifiers (AdamW at 5e-4, batch
# 32, weight decay 0.01), for 3 epochs (half of `epochs`).
USER_DATA_TASKS = {"text-classification": TaskDefaults(epochs=FINETUNE_EPOCHS, lr=FINETUNE_LR, batch_size=32,
                                                        optimizer="adamw", weight_decay=0.01, label_smoothing=0.0)}


def _pretrain_spec(epochs: int, lr: float, batch_size: int = 32) -> TrainSpec:
    return TrainSpec(data=PRETRAIN_DATA, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.01,
                     label_smoothing=0.0, optimizer="adamw")


def _finetune_spec(epochs: int, lr: float, batch_size: int = 32) -> TrainSpec:
    return TrainSpec(data=CLASSIFY_DATA, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.01,
                     label_smoothing=0.0, optimizer="adamw")


def _pretrained(arch: str, family: str, size: dict[str, Any], input: TextInput, spec: TrainSpec,
                what: str) -> ModelEntry:
    mcbert = family == "mcbert"
    kwargs = {**size, "kind": "mcbert" if mcbert else "mlm", "mask_rate": MC_KWARGS["mask_rate"],
              **(MC_KWARGS if mcbert else {})}
    task = "multi-choice-cloze" if mcbert else "fill-mask"
    how = ("MC-BERT pre-training (meta controller at width / 2, 10 candidates with a reject option, "
           "lambda = 50)" if mcbert else "masked-LM pre-training (15 % masked, 80/10/10)")
    return register_entry(ModelEntry(
        name=f"{arch}.zoo_pydoc", family=family, task=task, repo_id=f"zoo/{arch}.zoo_pydoc", source="zoo",
        input=input, eval_data=DataSpec("pydoc_text", "test"), model_kwargs=kwargs, train=spec,
        keep_dense=PRETRAIN_KEEP_DENSE, structured="heads",
        description=f"{what}: {how} on Python's pydoc_data.topics (BPE, {input.vocab_size} tokens).",
    ))


def _classifier(arch: str, family: str, tag: str, size: dict[str, Any], input: TextInput, spec: TrainSpec,
                init_from: str | None, what: str, compare_with: tuple[str, ...] = ()) -> ModelEntry:
    start = f"fine-tuned from {init_from}'s main encoder" if init_from else "trained from random initialization"
    kwargs = {**size, "kind": "classifier"}
    spec = dataclasses.replace(spec, init_from=init_from)
    return register_entry(ModelEntry(
        name=f"{arch}.{tag}", family=family, task="text-classification", repo_id=f"zoo/{arch}.{tag}", source="zoo",
        input=input, eval_data=DataSpec("stdlib_topics", "test"), num_classes=len(TOPICS),
        label_set="stdlib-topics", model_kwargs=kwargs, train=spec, keep_dense=CLASSIFIER_KEEP_DENSE,
        compare_with=compare_with, structured="heads",
        description=f"{what} {start}, classifying standard-library docstring sentences into {len(TOPICS)} "
                    f"topics ({', '.join(TOPICS)}).",
    ))


_pretrained("mcbert_mini", "mcbert", MINI, MINI_PRETRAIN_INPUT, _pretrain_spec(PRETRAIN_EPOCHS, PRETRAIN_LR),
            "MC-BERT, main model 4 layers x 128")
_pretrained("bert_mini", "bert", MINI, MINI_PRETRAIN_INPUT, _pretrain_spec(PRETRAIN_EPOCHS, PRETRAIN_LR),
            "BERT, 4 layers x 128")
_classifier("mcbert_mini", "mcbert", "zoo_pydoc_ft_stdlib", MINI, MINI_CLASSIFY_INPUT,
            _finetune_spec(FINETUNE_EPOCHS, FINETUNE_LR), "mcbert_mini.zoo_pydoc", "MC-BERT's main model",
            compare_with=("bert_mini.zoo_pydoc_ft_stdlib", "bert_mini.zoo_stdlib"))
_classifier("bert_mini", "bert", "zoo_pydoc_ft_stdlib", MINI, MINI_CLASSIFY_INPUT,
            _finetune_spec(FINETUNE_EPOCHS, FINETUNE_LR), "bert_mini.zoo_pydoc", "BERT (MLM-pre-trained)")
_classifier("bert_mini", "bert", "zoo_stdlib", MINI, MINI_CLASSIFY_INPUT,
            _finetune_spec(FINETUNE_EPOCHS, FINETUNE_LR), None, "BERT, 4 layers x 128,")

_pretrained("test_mcbert", "mcbert", TINY, TINY_PRETRAIN_INPUT, _pretrain_spec(2, PRETRAIN_LR, batch_size=128),
            "A tiny MC-BERT for the tests, main model 2 layers x 32")
_pretrained("test_bert", "bert", TINY, TINY_PRETRAIN_INPUT, _pretrain_spec(2, PRETRAIN_LR, batch_size=128),
            "A tiny BERT for the tests, 2 layers x 32")
_classifier("test_mcbert", "mcbert", "zoo_pydoc_ft_stdlib", TINY, TINY_CLASSIFY_INPUT,
            _finetune_spec(2, FINETUNE_LR, batch_size=128),
            "test_mcbert.zoo_pydoc", "A tiny MC-BERT main model for the tests")
