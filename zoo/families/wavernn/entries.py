"""The WaveRNN family's entries: WaveRNN and Subscale WaveRNN (see `model.py`) trained on Harvard
sentences spoken by espeak-ng (`data.py`); their default `_gmpNN` variants prune the recurrent matrix
in 16x1 blocks (Sparse WaveRNN). `AudioSpec` says what a vocoder eats."""
from __future__ import annotations

from dataclasses import dataclass

from zoo.entry import DataSpec, ModelEntry, TrainSpec, register_input_type
from zoo.errors import InvalidArgumentError
from zoo.models import register_entry

MODEL_FAMILIES = ("wavernn",)
TASKS = ("vocoding",)
DATASETS = ("espeak", "espeak_tiny")


@register_input_type  # a checkpoint config may record it (zoo.hub_ids.entry_record)
@dataclass(frozen=True)
class AudioSpec:
    """What a vocoder eats: audio at `sample_rate`, log-mel frames every `hop` samples (`n_fft`-point
    Hann STFT, `n_mels` bands), `mel_pad` frames of context on each side of a window, training windows
    of `segment_frames` frames; evaluation generates `eval_clips` clips of `eval_frames` frames."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 40
    mel_pad: int = 2
    segment_frames: int = 4
    eval_clips: int = 2
    eval_frames: int = 16

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop", "n_mels", "segment_frames", "eval_clips", "eval_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"AudioSpec.{name} must be a positive integer, got {value!r}")
        if isinstance(self.mel_pad, bool) or not isinstance(self.mel_pad, int) or self.mel_pad < 0:
            raise InvalidArgumentError(f"AudioSpec.mel_pad must be an integer >= 0, got {self.mel_pad!r}")
        if self.hop > self.n_fft:
            raise InvalidArgumentError(f"hop ({self.hop}) must not exceed n_fft ({self.n_fft})")

    @property
    def segment(self) -> int:
        """Samples in one training window."""
        return self.segment_frames * self.hop


# Sparse WaveRNN prunes the recurrent matrix only, in 16x1 blocks (16 output units of one input: the
# shape the paper chose for mobile CPUs); every other layer stays dense.
PRUNE_BLOCK = (16, 1)
KEEP_DENSE = ("cond", "cond_input", "sample_input", "fine_input", "context", "context_input",
              "coarse_hidden", "coarse_out", "fine_hidden", "fine_out")
ESPEAK_AUDIO = AudioSpec(sample_rate=16000, n_fft=1024, hop=256, n_mels=40, mel_pad=2, segment_frames=2,
                         eval_clips=2, eval_frames=16)
TINY_AUDIO = AudioSpec(sample_rate=16000, n_fft=256, hop=64, n_mels=16, mel_pad=1, segment_frames=2,
                       eval_clips=1, eval_frames=2)


@dataclass(frozen=True)
class _Base:
    arch: str
    data: str
    audio: AudioSpec
    model_kwargs: dict
    epochs: int
    batch_size: int
    lr: float
    what: str
    compare_with: tuple[str, ...] = ()


def _register(r: _Base) -> ModelEntry:
    name = f"{r.arch}.zoo_espeak"
    return register_entry(ModelEntry(
        name=name, family="wavernn", task="vocoding", repo_id=f"zoo/{name}", source="zoo", input=r.audio,
        eval_data=DataSpec(r.data, "test"), model_kwargs=r.model_kwargs,
        train=TrainSpec(data=DataSpec(r.data, "train"), epochs=r.epochs, batch_size=r.batch_size, lr=r.lr,
                        weight_decay=0.0, label_smoothing=0.0, seed=0, optimizer="adamw"),
        keep_dense=KEEP_DENSE, prune_block=PRUNE_BLOCK, compare_with=r.compare_with,
        description=f"{r.what}, trained by the zoo on Harvard sentences spoken by espeak-ng ({r.audio.sample_rate} Hz, "
                    f"16-bit, {r.audio.n_mels} log-mel bands every {r.audio.hop} samples).",
    ))


_register(_Base("wavernn", "espeak", ESPEAK_AUDIO, {"hidden": 128}, 3, 64, 3e-3,
                "WaveRNN (dual softmax, GRU of 128 units)"))
_register(_Base("wavernn_subscale", "espeak", ESPEAK_AUDIO,
                {"hidden": 128, "subscale": 16, "horizon": 4, "context": 4}, 3, 64, 3e-3,
                "Subscale WaveRNN (16 samples per step, horizon 4, GRU of 128 units)",
                compare_with=("wavernn.zoo_espeak",)))
_register(_Base("test_wavernn", "espeak_tiny", TINY_AUDIO, {"hidden": 16, "cond_channels": 8}, 2, 64,
                3e-3, "A tiny WaveRNN for tests"))
_register(_Base("test_wavernn_subscale", "espeak_tiny", TINY_AUDIO,
                {"hidden": 16, "cond_channels": 8, "subscale": 4, "horizon": 2, "context": 2,
                 "context_channels": 8}, 2, 64, 3e-3, "A tiny Subscale WaveRNN for tests"))
