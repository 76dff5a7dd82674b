"""The `translation` task: teacher-forced cross-entropy for training, SacreBLEU of beam-search output
for evaluation (torchmetrics' `SacreBLEUScore`, 13a tokenization, one reference per sentence, corpus
level: n-gram counts summed over the whole test set before the score, as WMT results are quoted)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from zoo.data import Batches
from zoo.entry import ModelEntry
from zoo.runtimes.signature import GraphSignature, UnsupportedExportError
from zoo.tasks import LOCAL_METRIC, MetricSpec, Task, TaskResult, register_task
from zoo.families.translation.data import CORPORA, PAD_ID, UNK_ID, decode, trim

IGNORE_INDEX = -100
FIRST_TOKEN_ID = UNK_ID + 1  # an ordinary token: the first id after the special ones


def decoder_inputs(labels: torch.Tensor) -> torch.Tensor:
    """Labels shifted right behind the decoder start token (PAD, Marian's convention)."""
    start = torch.full_like(labels[:, :1], PAD_ID)
    return torch.cat([start, labels[:, :-1]], dim=1)


def model_arguments(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, decoder_input_ids, labels) of a (source, target) batch, trimmed."""
    source, target = (trim(t) for t in batch)
    return source, (source != PAD_ID).long(), decoder_inputs(target), target


def translate(model: nn.Module, source: torch.Tensor, *, num_beams: int = 4, max_new_tokens: int = 40) -> torch.Tensor:
    """Beam-search output ids (transformers' generate) for padded source ids; row i translates row i."""
    source = trim(source)
    with torch.no_grad():
        return model.generate(input_ids=source, attention_mask=(source != PAD_ID).long(), num_beams=num_beams,
                              max_new_tokens=max_new_tokens, do_sample=False, early_stopping=True)


class Translation(Task):
    name = "translation"
    pipeline_tag = "translation"
    metrics = (
        MetricSpec("bleu", "SacreBLEU", "bleu"),
        MetricSpec("exact_match", "exact match", "exact_match", unit="fraction"),
    )
    average = "corpus"
    average_meaning = "corpus level: statistics summed over all test sentences"

    def loss(self, model: nn.Module, batch: Any, entry: ModelEntry) -> torch.Tensor:
        source, mask, decoder_ids, labels = model_arguments(batch)
        logits = model(input_ids=source, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        smoothing = entry.train.label_smoothing if entry.train is not None else 0.0
        return F.cross_entropy(logits.flatten(0, 1), labels.masked_fill(labels == PAD_ID, IGNORE_INDEX).flatten(),
                               ignore_index=IGNORE_INDEX, label_smoothing=smoothing)

    def evaluate(self, model: nn.Module, batches: Batches, entry: ModelEntry, *, progress: bool = True) -> TaskResult:
        from torchmetrics.text import SacreBLEUScore

        spec, bleu = CORPORA[entry.input.corpus], SacreBLEUScore(tokenize="13a", **LOCAL_METRIC)
        exact = count = 0
        was_training = model.training
        model.eval()
        try:
            for source, target in tqdm(batches, desc="beam search", disable=not progress, leave=False):
                output = translate(model, source, num_beams=entry.input.num_beams,
                                   max_new_tokens=entry.input.max_new_tokens)
                hypotheses, references = decode(output, spec), decode(target, spec)
                bleu.update(hypotheses, [[r] for r in references])
                exact += sum(h == r for h, r in zip(hypotheses, references))
                count += len(references)
        finally:
            model.train(was_training)
        return TaskResult({"bleu": 100.0 * float(bleu.compute()), "exact_match": exact / count}, self.average, count)

    def example_input(self, entry: ModelEntry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sentence pair of the corpus' mean lengths: (input_ids, attention_mask, decoder_input_ids)."""
        source = torch.full((1, entry.input.example_source_len), FIRST_TOKEN_ID, dtype=torch.long)
        target = torch.full((1, entry.input.example_target_len), FIRST_TOKEN_ID, dtype=torch.long)
        return source, torch.ones_like(source), decoder_inputs(target)

    def model_inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return model_arguments(batch)[:3]

    def describe_example(self, entry: ModelEntry) -> str:
        spec = entry.input
        return (f"one teacher-forced pass over a sentence pair of {spec.example_source_len} source and "
                f"{spec.example_target_len} target tokens (the corpus' mean lengths); beam-search decoding with "
                f"{spec.num_beams} beams runs the decoder once per generated token and beam, so it costs more")


    def export_signature(self, entry: ModelEntry) -> GraphSignature:
        raise UnsupportedExportError(
            "translation models do not export: what the task runs is transformers' generate, a beam search whose "
            "loop, beam bookkeeping and stopping are Python around one decoder call per token; a graph of the "
            "teacher-forced forward alone would not translate")


register_task(Translation())
