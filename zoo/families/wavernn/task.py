"""The WaveRNN family's task: mel-to-waveform vocoding, scored in bits per sample and log-mel distance."""
from __future__ import annotations

import math
from typing import Any

import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F

from zoo.data import Batches
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.families.wavernn.data import LOG_FLOOR, AudioSpec, SpeechWindows, log_mel, offset_to_pcm, pcm_to_float
from zoo.families.wavernn.model import SILENCE, split_16bit
from zoo.families.wavernn import online  # noqa: F401  (registers the GRU's online-training hooks, zoo.compress.snap)
from zoo.runtimes.signature import GraphSignature, UnsupportedExportError
from zoo.tasks import LOCAL_METRIC, MetricSpec, Task, TaskResult, register_task


def nll_nats(model: nn.Module, mel: torch.Tensor, samples: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Teacher-forced negative log-likelihood of 16-bit samples, -log P(c) - log P(f | c), in nats."""
    logits_c, logits_f = model(mel, samples)
    coarse, fine = split_16bit(samples)
    nll = (F.cross_entropy(logits_c.flatten(0, 1), coarse.flatten(), reduction="sum")
           + F.cross_entropy(logits_f.flatten(0, 1), fine.flatten(), reduction="sum"))
    return nll / samples.numel() if reduction == "mean" else nll


def mel_db(samples: torch.Tensor, spec: AudioSpec) -> torch.Tensor:
    """Log-mel spectrogram in dB (20 log10 of the mel magnitude, floored at -100 dB) of offset-binary samples."""
    return log_mel(pcm_to_float(offset_to_pcm(samples)), spec) * (20.0 / math.log(10.0))


class Vocoding(Task):
    """Mel-to-waveform vocoding. Trained by teacher-forced NLL. Metrics: bits per sample (teacher-forced
    NLL over every test sample, log2) and the log-mel distance between audio the model generates
    (sampled, seed 0; `fused.generate`: the fused loop where it runs the model) from the test clips' mel
    frames and the reference audio: mean |dB difference| over frames and mel bands, through
    torchmetrics' MeanAbsoluteError. A sample-by-sample metric (SI-SDR,
    SNR) is not used: a sampled waveform matches the reference's spectrum, not its phase, so even a
    perfect vocoder scores near or below 0 dB SI-SDR; the mel distance measures what the conditioning
    controls."""

    name = "vocoding"
    metrics = (
        MetricSpec("bits_per_sample", "bits per sample (teacher-forced NLL)", "nll", higher_is_better=False,
                   unit="bits"),
        MetricSpec("mel_distance", "log-mel distance of generated audio", "log_mel_distance",
                   higher_is_better=False, unit="dB"),
    )
    average = "samples"
    average_meaning = "NLL over every test sample; mel distance over every frame and band of the generated clips"

    def loss(self, model: nn.Module, batch: Any, entry: ModelEntry) -> torch.Tensor:
        mel, samples = batch
        return nll_nats(model, mel, samples)

    def evaluate(self, model: nn.Module, batches: Batches, entry: ModelEntry, *, progress: bool = True) -> TaskResult:
        total, count = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for mel, samples in batches:
                    total += float(nll_nats(model, mel, samples, reduction="sum"))
                    count += samples.numel()
            distance = self._mel_distance(model, batches.data, entry.input)
        finally:
            model.train(was_training)
        return TaskResult({"bits_per_sample": total / count / math.log(2.0), "mel_distance": distance},
                          self.average, count)

    @staticmethod
    def _mel_distance(model: nn.Module, data: Any, spec: AudioSpec) -> float:
        if not isinstance(data, SpeechWindows):
            raise InvalidArgumentError(f"vocoding evaluates on speech windows, got {type(data).__name__}")
        # numba loads here, when audio is generated, not when the task is registered
        from zoo.families.wavernn.fused import generate

        metric = torchmetrics.MeanAbsoluteError(**LOCAL_METRIC)
        generator = torch.Generator().manual_seed(0)
        for mel, samples in data.clips():
            generated = generate(model, mel[None], generator=generator)[0]
            metric.update(mel_db(generated, spec), mel_db(samples, spec))
        return float(metric.compute())

    def example_input(self, entry: ModelEntry) -> tuple[torch.Tensor, torch.Tensor]:
        """One mel frame and its `hop` samples: FLOPs and latency are per frame of audio."""
        spec = entry.input
        return (torch.full((1, spec.n_mels, 1 + 2 * spec.mel_pad), math.log(LOG_FLOOR)),
                torch.full((1, spec.hop), SILENCE, dtype=torch.long))

    def model_inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        mel, samples = batch
        return mel, samples

    def describe_example(self, entry: ModelEntry) -> str:
        spec = entry.input
        return (f"one mel frame, i.e. {spec.hop} samples ({1000 * spec.hop / spec.sample_rate:.0f} ms) of "
                f"{spec.sample_rate / 1000:g} kHz audio, teacher-forced")


    def export_signature(self, entry: ModelEntry) -> GraphSignature:
        raise UnsupportedExportError(
            "WaveRNN does not export: generating audio is a sampling loop, one recurrent step and one draw from "
            "the coarse then the fine distribution per sample, driven by Python with a torch generator; a graph "
            "of the teacher-forced forward would score audio, not generate it")


register_task(Vocoding())
