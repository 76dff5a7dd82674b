"""The text tasks of the BERT-style families: MC-BERT's multi-choice cloze, the masked-LM baseline's
fill-mask, and downstream sentence classification. Metrics through torchmetrics, `average="micro"`.

Pre-training evaluation draws its masks and candidates from a generator seeded with `EVAL_SEED` at
the start of every evaluation, so a model's score on a split is one number, reproducible. Training
draws them from torch's global generator (seeded by the training loop): dynamic masking.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy
from tqdm.auto import tqdm

from zoo.data import Batches
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.families.mcbert.entries import TextInput
from zoo.families.mcbert.model import MaskedLMOutput, choose_masked, corrupt_tokens
from zoo.runtimes.signature import GraphSignature, RunGraph, UnsupportedExportError, batch_axes
from zoo.tasks import LOCAL_METRIC, MetricSpec, Task, TaskResult, register_task
from zoo.userdata import USER_DATA_ADAPTERS, UserDataAdapter

EVAL_SEED = 1234
MICRO_MEANING = "over all examples"


def _text_input(entry: ModelEntry) -> TextInput:
    if not isinstance(entry.input, TextInput):
        raise InvalidArgumentError(f"{entry.name} does not take text (its input is {type(entry.input).__name__})")
    return entry.input


class _TextTask(Task):
    average = "micro"
    average_meaning = MICRO_MEANING

    def example_input(self, entry: ModelEntry) -> torch.Tensor:
        return _text_input(entry).example_ids(1)

    def describe_example(self, entry: ModelEntry) -> str:
        return f"one sequence of {_text_input(entry).max_length} tokens"

    def model_inputs(self, batch: Any) -> torch.Tensor:
        return batch[0]


def _run(model: nn.Module, batches: Batches, desc: str, progress: bool, step) -> None:
    """Calls `step(batch, generator)` over the batches in eval and inference mode, restoring the mode."""
    generator = torch.Generator().manual_seed(EVAL_SEED)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
                step(batch, generator)
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class MaskedLMGraph(GraphSignature):
    """The masked-LM baseline in a graph: corrupted ids in, LM logits at every position out. Choosing and
    corrupting the masked positions (random draws) happen in torch, as in `BertMaskedLM.forward`, with
    the same generator, so the runtime model returns the same `MaskedLMOutput`."""

    mask_rate: float = 0.15
    vocab_size: int = 0

    def graph_module(self, model: nn.Module) -> nn.Module:
        return _AllLogits(model)

    def call(self, run: RunGraph, input_ids: torch.Tensor, masked: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> MaskedLMOutput:
        if masked is None:
            masked = choose_masked(input_ids, self.mask_rate, generator)
        (logits,) = run((corrupt_tokens(input_ids, masked, self.vocab_size, generator),))
        logits, labels = logits[masked], input_ids[masked]
        return MaskedLMOutput(F.cross_entropy(logits, labels), logits, labels, masked)


class _AllLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, corrupted: torch.Tensor) -> torch.Tensor:
        return self.model.all_logits(corrupted)


class MultiChoiceCloze(_TextTask):
    """MC-BERT's pre-training task. `mc_accuracy`: the main model's choice among the k candidates
    (reject included) at every non-pad position; `mc_replaced_accuracy`: the same at the positions whose
    input the controller changed (picking the original back); `controller_accuracy`: the controller's
    masked-token accuracy over the whole vocabulary; `mc_cloze_accuracy`: at the replaced positions,
    the choice among the k - 1 token candidates only (reject excluded), which separates finding the
    original token from deciding that the input was changed."""

    name = "multi-choice-cloze"
    metrics = (
        MetricSpec("mc_accuracy", "multi-choice accuracy", "accuracy", unit="fraction"),
        MetricSpec("mc_replaced_accuracy", "multi-choice accuracy on replaced tokens", "accuracy", unit="fraction"),
        MetricSpec("mc_cloze_accuracy", "multi-choice cloze accuracy on replaced tokens, reject excluded",
                   "accuracy", unit="fraction"),
        MetricSpec("controller_accuracy", "meta controller masked-token accuracy", "accuracy", unit="fraction"),
    )
    # The main model scores candidates sampled from each model's own controller: a student's and a
    # teacher's scores are over different candidate sets, so the outputs are not distilled.
    distill_logits_loss = None

    def loss(self, model: nn.Module, batch: Any, entry: ModelEntry) -> torch.Tensor:
        return model(batch[0]).loss

    def evaluate(self, model: nn.Module, batches: Batches, entry: ModelEntry, *, progress: bool = True) -> TaskResult:
        k = int(entry.model_kwargs["num_candidates"])
        vocab = _text_input(entry).vocab_size
        choice = MulticlassAccuracy(k, average=self.average, **LOCAL_METRIC)
        replaced = MulticlassAccuracy(k, average=self.average, **LOCAL_METRIC)
        cloze = MulticlassAccuracy(k - 1, average=self.average, **LOCAL_METRIC)
        controller = MulticlassAccuracy(vocab, average=self.average, **LOCAL_METRIC)
        counts = [0]

        def step(batch: Any, generator: torch.Generator) -> None:
            out = model(batch[0], generator=generator)
            choice.update(out.scores, out.labels)
            if out.replaced.any():
                replaced.update(out.scores[out.replaced], out.labels[out.replaced])
                cloze.update(out.scores[out.replaced][:, 1:], out.labels[out.replaced] - 1)
            controller.update(out.controller_logits, out.controller_labels)
            counts[0] += len(out.labels)

        _run(model, batches, "evaluate multi-choice", progress, step)
        return TaskResult({"mc_accuracy": float(choice.compute()), "mc_replaced_accuracy": float(replaced.compute()),
                           "mc_cloze_accuracy": float(cloze.compute()),
                           "controller_accuracy": float(controller.compute())}, self.average, counts[0])

    def export_signature(self, entry: ModelEntry) -> GraphSignature:
        raise UnsupportedExportError(
            "MC-BERT pre-training does not export as one graph: its meta controller's candidates are drawn by "
            "torch.multinomial between the two encoders, a random draw an exported graph cannot reproduce; its "
            "fine-tuned classifiers (text-classification) export")


class FillMask(_TextTask):
    """The masked-LM baseline's task: `mlm_accuracy`, the masked-token accuracy over the vocabulary."""

    name = "fill-mask"
    pipeline_tag = "fill-mask"
    metrics = (MetricSpec("mlm_accuracy", "masked-token accuracy", "accuracy", unit="fraction"),)

    def loss(self, model: nn.Module, batch: Any, entry: ModelEntry) -> torch.Tensor:
        return model(batch[0]).loss

    def evaluate(self, model: nn.Module, batches: Batches, entry: ModelEntry, *, progress: bool = True) -> TaskResult:
        accuracy = MulticlassAccuracy(_text_input(entry).vocab_size, average=self.average, **LOCAL_METRIC)
        counts = [0]

        def step(batch: Any, generator: torch.Generator) -> None:
            out = model(batch[0], generator=generator)
            accuracy.update(out.logits, out.labels)
            counts[0] += len(out.labels)

        _run(model, batches, "evaluate fill-mask", progress, step)
        return TaskResult({"mlm_accuracy": float(accuracy.compute())}, self.average, counts[0])

    def export_signature(self, entry: ModelEntry) -> GraphSignature:
        return MaskedLMGraph(("input_ids",), ("logits",), batch_axes("input_ids", sequence=("input_ids",)),
                             mask_rate=float(entry.model_kwargs["mask_rate"]),
                             vocab_size=_text_input(entry).vocab_size)


class TextClassification(_TextTask):
    """Sentence classification fine-tuned on a pre-trained encoder: cross-entropy (with the entry's
    label smoothing) and `accuracy` over all test sentences (classes are balanced)."""

    name = "text-classification"
    pipeline_tag = "text-classification"
    metrics = (MetricSpec("accuracy", "accuracy", "accuracy", unit="fraction"),)

    def loss(self, model: nn.Module, batch: Any, entry: ModelEntry) -> torch.Tensor:
        ids, labels = batch
        smoothing = entry.train.label_smoothing if entry.train is not None else 0.0
        return F.cross_entropy(model(ids), labels, label_smoothing=smoothing)

    def evaluate(self, model: nn.Module, batches: Batches, entry: ModelEntry, *, progress: bool = True) -> TaskResult:
        accuracy = MulticlassAccuracy(entry.num_classes, average=self.average, **LOCAL_METRIC)
        counts = [0]

        def step(batch: Any, generator: torch.Generator) -> None:
            ids, labels = batch
            accuracy.update(model(ids), labels)
            counts[0] += len(labels)

        _run(model, batches, "evaluate text-classification", progress, step)
        return TaskResult({"accuracy": float(accuracy.compute())}, self.average, counts[0])

    def export_signature(self, entry: ModelEntry) -> GraphSignature:
        """Token ids in (batch and sequence length dynamic), logits out."""
        return GraphSignature(("input_ids",), ("logits",), batch_axes("input_ids", sequence=("input_ids",)))


def _with_classes(entry: ModelEntry, num_classes: int) -> ModelEntry:
    """The classifier entry whose head has `num_classes` outputs (`BertTextClassifier` reads `num_classes`)."""
    return dataclasses.replace(entry, num_classes=num_classes, label_set="")


def _reset_classifier(model: nn.Module, num_classes: int) -> None:
    """A freshly initialized output layer of `num_classes` (the encoder and the dense layer before it kept)."""
    model.classifier = nn.Linear(model.classifier.in_features, num_classes)


def _user_sentences(entry: ModelEntry, texts, labels: list[int], training: bool):
    from zoo.families.mcbert.data import user_sentences

    return user_sentences(entry, texts, labels)


MULTI_CHOICE_CLOZE = register_task(MultiChoiceCloze())
FILL_MASK = register_task(FillMask())
TEXT_CLASSIFICATION = register_task(TextClassification())
USER_DATA_ADAPTERS.register("text-classification", UserDataAdapter(
    column="text", dataset=_user_sentences, with_classes=_with_classes, reset_classifier=_reset_classifier))
