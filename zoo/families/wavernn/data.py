"""Speech for the vocoders, synthesized offline with Debian's espeak-ng, and its mel features.

The corpus is the first four lists of the Harvard sentences (IEEE 1969, phonetically balanced English,
public domain) spoken by two espeak-ng voices (`en-us` and its female variant `en-us+f3`): lists 1-3
train, list 4 is held out. espeak-ng is a formant synthesizer, so this is real but robotic speech: a
fair stand-in for a vocoder's job (turn a mel spectrogram back into a 16-bit waveform), not for
naturalness. The audio is resampled from espeak-ng's 22.05 kHz to the entry's rate (polyphase, scipy),
rounded to 16 bits and cached under `$ZOO_DATA` (default `~/.cache/zoo/data`), keyed by what made it.

Mel features are computed here with `torch.stft` and a triangular mel filterbank (HTK mel scale),
because torchaudio has no CPU build in this environment.

Data sets (registry `zoo.data.DATASETS`): `espeak` (the corpus above) and `espeak_tiny` (two training
sentences and one held-out sentence, one voice: for tests). An item is one window of `segment_frames`
mel frames: (log-mel [n_mels, segment_frames + 2 * mel_pad] float32, samples [segment_frames * hop]
int64, 16-bit offset binary in [0, 65535]).
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.atomic import atomic_path
from zoo.data import DATASET_DESCRIPTIONS, DATASETS
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError, ZooError
from zoo.families.wavernn.entries import AudioSpec

ESPEAK = "espeak-ng"
ESPEAK_RATE = 22050
LOG_FLOOR = 1e-5  # floor of the mel magnitude before the log (-100 dB)
SPLITS = ("train", "test")

HARVARD = (
    # list 1
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "Large size in stockings is hard to sell.",
    # list 2
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
    # list 3
    "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.", "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.", "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.", "Read verse out loud for pleasure.",
    # list 4 (held out)
    "Hoist the load to your left shoulder.", "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.", "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.", "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.", "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.", "What joy there is in living.",
)


@dataclass(frozen=True)
class Corpus:
    """Which sentences each split speaks, and in which espeak-ng voices."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    voices: tuple[str, ...]

    def sentences(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise InvalidArgumentError(f"the espeak corpora have splits {SPLITS}, not {split!r}")
        return self.train if split == "train" else self.test


CORPORA = {
    "espeak": Corpus(train=HARVARD[:30], test=HARVARD[30:], voices=("en-us", "en-us+f3")),
    "espeak_tiny": Corpus(train=HARVARD[:2], test=HARVARD[30:31], voices=("en-us",)),
}


# Synthesis and cache ------------------------------------------------------------------------------

def data_dir() -> Path:
    return Path(os.environ.get("ZOO_DATA") or "~/.cache/zoo/data").expanduser()


def espeak_version() -> str:
    if shutil.which(ESPEAK) is None:
        raise ZooError(f"{ESPEAK} is not installed; install the system package (apt-get install -y espeak-ng)")
    return subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def synthesize(text: str, voice: str, sample_rate: int) -> np.ndarray:
    """One sentence as int16 PCM at `sample_rate` (espeak-ng speaks at 22.05 kHz; resampled here)."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    espeak_version()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([ESPEAK, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
        rate, pcm = wavfile.read(path)
    if rate != ESPEAK_RATE or pcm.dtype != np.int16 or pcm.ndim != 1:
        raise ZooError(f"{ESPEAK} wrote {rate} Hz {pcm.dtype} audio of shape {pcm.shape}; expected 22050 Hz mono int16")
    if sample_rate != rate:
        g = math.gcd(sample_rate, rate)
        pcm = resample_poly(pcm.astype(np.float64), sample_rate // g, rate // g)
    return np.clip(np.round(pcm), -32768, 32767).astype(np.int16)


def utterances(corpus: str, split: str, sample_rate: int) -> list[np.ndarray]:
    """Every sentence of the split in every voice, as int16 PCM; synthesized once, then read from the cache."""
    if corpus not in CORPORA:
        raise InvalidArgumentError(f"unknown speech corpus {corpus!r}; known: {', '.join(CORPORA)}")
    spec = CORPORA[corpus]
    texts = [(voice, text) for voice in spec.voices for text in spec.sentences(split)]
    key = hashlib.sha256(repr((texts, sample_rate, espeak_version())).encode()).hexdigest()[:16]
    path = data_dir() / "espeak-ng" / f"{corpus}-{split}-{sample_rate}-{key}.npz"
    if not path.is_file():
        clips = [synthesize(text, voice, sample_rate) for voice, text in texts]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a file object: savez adds no suffix
            np.savez(handle, audio=np.concatenate(clips), lengths=np.array([len(c) for c in clips]))
    with np.load(path) as data:
        audio, lengths = data["audio"], data["lengths"]
    return np.split(audio, np.cumsum(lengths)[:-1])


# Mel features -------------------------------------------------------------------------------------

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=16)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] triangular filters, equally spaced on the HTK mel scale from 0 Hz to
    Nyquist, each peaking at 1 (as torchaudio's `melscale_fbanks(norm=None, mel_scale="htk")`)."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.array(sample_rate / 2)), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (center - lower)
    falling = (upper - freqs[None]) / (upper - center)
    return torch.tensor(np.clip(np.minimum(rising, falling), 0.0, None), dtype=torch.float32)


def log_mel(audio: torch.Tensor, spec: AudioSpec) -> torch.Tensor:
    """Natural log of the mel magnitude spectrogram of float audio in [-1, 1] ([..., T] -> [..., n_mels,
    T // hop + 1]), floored at LOG_FLOOR. Frame i is centred on sample i * hop."""
    window = torch.hann_window(spec.n_fft, device=audio.device)
    stft = torch.stft(audio, spec.n_fft, spec.hop, window=window, center=True, pad_mode="constant",
                      return_complex=True)
    mel = mel_filterbank(spec.n_fft, spec.n_mels, spec.sample_rate).to(audio.device) @ stft.abs()
    return torch.log(mel.clamp_min(LOG_FLOOR))


def pcm_to_float(pcm: torch.Tensor) -> torch.Tensor:
    return pcm.float() / 32768.0


def pcm_to_offset(pcm: torch.Tensor) -> torch.Tensor:
    """int16 PCM -> 16-bit offset binary in [0, 65535] (int64)."""
    return pcm.long() + 32768


def offset_to_pcm(samples: torch.Tensor) -> torch.Tensor:
    return (samples.long() - 32768).to(torch.int16)


# Data sets ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Utterance:
    """One sentence: 16-bit offset-binary samples (a whole number of frames) and its padded log-mel
    ([n_mels, frames + 2 * mel_pad], frame i + mel_pad covering samples [i * hop, (i + 1) * hop))."""

    samples: torch.Tensor
    mel: torch.Tensor

    @property
    def frames(self) -> int:
        return self.mel.shape[1]


def prepare(pcm: np.ndarray, spec: AudioSpec) -> Utterance:
    frames = len(pcm) // spec.hop
    pcm_t = torch.from_numpy(pcm[: frames * spec.hop].copy())
    mel = log_mel(pcm_to_float(pcm_t), spec)[:, :frames]
    mel = torch.nn.functional.pad(mel, (spec.mel_pad, spec.mel_pad), value=math.log(LOG_FLOOR))
    return Utterance(pcm_to_offset(pcm_t), mel)


class SpeechWindows(Dataset):
    """Consecutive, non-overlapping windows of `segment_frames` frames over every utterance of a split;
    `clips()` gives the evaluation clips that the vocoder generates."""

    def __init__(self, corpus: str, split: str, spec: AudioSpec) -> None:
        self.spec = spec
        self.utterances = [prepare(pcm, spec) for pcm in utterances(corpus, split, spec.sample_rate)]
        frames = spec.segment_frames
        self.index = [(u, start) for u, utt in enumerate(self.utterances)
                      for start in range(0, utt.frames - 2 * spec.mel_pad - frames + 1, frames)]
        if not self.index:
            raise InvalidArgumentError(f"{corpus}/{split} has no window of {frames} frames")

    def __len__(self) -> int:
        return len(self.index)

    def window(self, utterance: int, start: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        utt, hop, pad = self.utterances[utterance], self.spec.hop, self.spec.mel_pad
        return utt.mel[:, start: start + frames + 2 * pad], utt.samples[start * hop: (start + frames) * hop]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.window(*self.index[i], self.spec.segment_frames)

    def clips(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`eval_clips` windows of `eval_frames` frames from the middle of the first utterances (speech,
        not the silence at the ends), each (mel [n_mels, eval_frames + 2 * mel_pad], samples)."""
        frames, pad = self.spec.eval_frames, self.spec.mel_pad
        clips = []
        for u, utt in enumerate(self.utterances[: self.spec.eval_clips]):
            usable = utt.frames - 2 * pad
            if usable < frames:
                raise InvalidArgumentError(f"utterance {u} has {usable} frames, fewer than eval_frames={frames}")
            clips.append(self.window(u, (usable - frames) // 2, frames))
        return clips


@lru_cache(maxsize=8)
def speech_windows(corpus: str, split: str, spec: AudioSpec) -> SpeechWindows:
    return SpeechWindows(corpus, split, spec)


def _audio_spec(entry: ModelEntry) -> AudioSpec:
    if not isinstance(entry.input, AudioSpec):
        raise InvalidArgumentError(f"{entry.name} does not take audio (its input is {type(entry.input).__name__})")
    return entry.input


DATASET_DESCRIPTIONS.register(
    "espeak", "Harvard sentences spoken by Debian's espeak-ng in two voices (en-us, en-us+f3), 16 kHz, 16-bit: "
              "lists 1-3 for training, list 4 for testing")
DATASET_DESCRIPTIONS.register("espeak_tiny", "two Harvard sentences (train) and one (test) spoken by espeak-ng, for tests")


@DATASETS.decorator("espeak")
def espeak(split: str, entry: ModelEntry) -> Dataset:
    """Harvard sentences lists 1-3 (train) and 4 (test), two espeak-ng voices."""
    return speech_windows("espeak", split, _audio_spec(entry))


@DATASETS.decorator("espeak_tiny")
def espeak_tiny(split: str, entry: ModelEntry) -> Dataset:
    """Two training sentences and one test sentence in one voice: for tests."""
    return speech_windows("espeak_tiny", split, _audio_spec(entry))
