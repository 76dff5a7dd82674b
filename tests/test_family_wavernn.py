"""WaveRNN family: the dual-softmax split of 16-bit samples, the subscale fold, the mel features,
teacher forcing that agrees with generation (plain and subscale), a training step, a compressed
save/load round trip bit for bit, and `zoo.load` with a sparsity on the tiny entry (training cut short)."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

import zoo
import zoo.api
from zoo.compress.block import apply_block_pruning
from zoo.compress.checkpoint import load_checkpoint, save_checkpoint
from zoo.compress.pruning import prunable_weights
from zoo.compress.quantization import QuantConv1d, QuantLinear, apply_int8_ptq
from zoo.errors import InvalidArgumentError
from zoo.families.wavernn.data import (
    CORPORA, AudioSpec, log_mel, mel_filterbank, offset_to_pcm, pcm_to_offset, speech_windows,
)
from zoo.families.wavernn.entries import KEEP_DENSE, PRUNE_BLOCK
from zoo.families.wavernn.model import WaveRNN, build_wavernn, fold, merge_16bit, split_16bit, unfold
from zoo.families.wavernn.model import SILENCE
from zoo.families.wavernn.task import Vocoding, mel_db, nll_nats
from zoo.tasks import task_of
from zoo.hub import LocalHub
from zoo.models import get_entry
from zoo.options import TrainOptions
from zoo.store import Store

TINY = "test_wavernn.zoo_espeak"
TINY_SUBSCALE = "test_wavernn_subscale.zoo_espeak"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (system package) not installed")


def tiny(name: str) -> WaveRNN:
    torch.manual_seed(0)
    return build_wavernn(get_entry(name)).eval()


def random_batch(spec: AudioSpec, batch: int = 2, frames: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    mel = torch.randn(batch, spec.n_mels, frames + 2 * spec.mel_pad, generator=generator)
    return mel, torch.randint(0, 65536, (batch, frames * spec.hop), generator=generator)


# Dual softmax: 16-bit samples as (coarse, fine) -----------------------------------------------------

def test_16_bit_samples_split_into_coarse_and_fine_and_merge_back() -> None:
    every = torch.arange(65536)
    coarse, fine = split_16bit(every)
    assert int(coarse.min()) == 0 and int(coarse.max()) == 255 and int(fine.min()) == 0 and int(fine.max()) == 255
    assert torch.equal(merge_16bit(coarse, fine), every)
    assert [int(v) for v in split_16bit(torch.tensor(0x1234))] == [0x12, 0x34]
    pcm = torch.tensor([-32768, -1, 0, 1, 32767], dtype=torch.int16)
    assert pcm_to_offset(pcm).tolist() == [0, 32767, 32768, 32769, 65535]
    assert torch.equal(offset_to_pcm(pcm_to_offset(pcm)), pcm)
    assert [int(v) for v in split_16bit(pcm_to_offset(torch.tensor([0], dtype=torch.int16)))] == [128, 0]


@pytest.mark.parametrize("bad", [torch.tensor([65536]), torch.tensor([-1]), torch.tensor([0.5])])
def test_samples_outside_16_bits_are_refused(bad: torch.Tensor) -> None:
    with pytest.raises(InvalidArgumentError):
        split_16bit(bad)


def test_subscale_fold_interleaves_and_unfolds() -> None:
    x = torch.arange(2 * 48).reshape(2, 48)
    folded = fold(x, 16)
    assert folded.shape == (2, 16, 3)
    assert torch.equal(folded[1, 5], x[1, 5::16])
    assert torch.equal(unfold(folded), x)
    with pytest.raises(InvalidArgumentError):
        fold(torch.arange(50), 16)


# Mel features -------------------------------------------------------------------------------------

def test_mel_filterbank_is_triangular_and_a_tone_lands_in_its_band() -> None:
    spec = AudioSpec(n_fft=512, hop=128, n_mels=24)
    bank = mel_filterbank(spec.n_fft, spec.n_mels, spec.sample_rate)
    assert bank.shape == (24, 257) and float(bank.min()) == 0.0 and float(bank.max()) <= 1.0
    peaks = bank.argmax(1)
    assert bool((peaks[1:] > peaks[:-1]).all()), "band centres rise"
    t = torch.arange(8000) / spec.sample_rate
    for hz in (300.0, 1000.0, 4000.0):
        mel = log_mel(0.5 * torch.sin(2 * math.pi * hz * t), spec)
        band = int(mel[:, 10:-10].mean(1).argmax())
        centre_hz = float(peaks[band]) * spec.sample_rate / spec.n_fft
        assert abs(math.log(centre_hz / hz)) < 0.25, (hz, centre_hz)


@needs_espeak
def test_espeak_windows_hold_speech_and_splits_do_not_share_sentences() -> None:
    spec = get_entry(TINY).input
    train, test = speech_windows("espeak_tiny", "train", spec), speech_windows("espeak_tiny", "test", spec)
    mel, samples = train[len(train) // 2]
    assert mel.shape == (spec.n_mels, spec.segment_frames + 2 * spec.mel_pad) and samples.shape == (spec.segment,)
    assert samples.dtype == torch.long and 0 <= int(samples.min()) and int(samples.max()) <= 65535
    loudest = max(float((u.samples - 32768).abs().max()) for u in train.utterances)
    assert loudest > 3000, "espeak-ng produced audible speech"
    assert not set(CORPORA["espeak"].train) & set(CORPORA["espeak"].test)
    assert len(test.clips()) == spec.eval_clips


# The model ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [TINY, TINY_SUBSCALE])
def test_forward_gives_dual_softmax_logits_for_every_sample(name: str) -> None:
    model = tiny(name)
    spec = get_entry(name).input
    mel, samples = random_batch(spec)
    coarse, fine = model(mel, samples)
    assert coarse.shape == fine.shape == (2, samples.shape[1], 256)
    with torch.no_grad():
        nll = nll_nats(model, mel, samples)
    assert abs(float(nll) / math.log(2) - 16.0) < 0.5, "an untrained model is near uniform: 16 bits per sample"
    with pytest.raises(InvalidArgumentError, match="mel frames"):
        model(mel[..., :-1], samples)


@pytest.mark.parametrize("name", [TINY, TINY_SUBSCALE])
def test_generation_agrees_with_teacher_forcing(name: str) -> None:
    """Sampled at a temperature near zero, every generated (coarse, fine) pair is the argmax that the
    teacher-forced pass gives for the generated sequence: generation feeds the cell the same history
    (own past, subscale context, conditioning) as training does."""
    model = tiny(name)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # sharper logits: no near-ties between the two computations
    mel, _ = random_batch(get_entry(name).input, batch=1, frames=3)
    generated = model.generate(mel, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert generated.shape == (1, 3 * model.hop) and generated.dtype == torch.long
    with torch.no_grad():
        coarse_logits, fine_logits = model(mel, generated)
    coarse, fine = split_16bit(generated)
    assert torch.equal(coarse_logits.argmax(-1), coarse)
    assert torch.equal(fine_logits.argmax(-1), fine)


def test_subscale_sees_only_earlier_rows_up_to_the_horizon() -> None:
    """Changing one sample changes only the logits of samples allowed to depend on it: the same row
    later on, or a later row at positions from k - horizon on."""
    model = tiny(TINY_SUBSCALE)
    b, horizon = model.subscale, model.horizon
    mel, samples = random_batch(get_entry(TINY_SUBSCALE).input, batch=1)
    with torch.no_grad():
        base_c, base_f = model(mel, samples)
        for p in (5, 22, 43):  # row p % b, position p // b
            changed = samples.clone()
            changed[0, p] = (changed[0, p] + 40000) % 65536
            c, f = model(mel, changed)
            moved = ((c != base_c).any(-1) | (f != base_f).any(-1))[0].nonzero().flatten().tolist()
            jp, kp = p % b, p // b
            for q in moved:
                jq, kq = q % b, q // b
                allowed = (q == p) or (jq == jp and kq > kp) or (jq > jp and kp <= kq + horizon)
                assert allowed, f"sample {q} depends on sample {p}"
            assert moved, "a sample influences something"


def test_a_training_step_lowers_the_loss_and_reaches_every_weight() -> None:
    model = tiny(TINY).train()
    mel, samples = random_batch(get_entry(TINY).input)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = nll_nats(model, mel, samples)
    first.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing
    for _ in range(5):
        optimizer.step()
        optimizer.zero_grad()
        nll_nats(model, mel, samples).backward()
    with torch.no_grad():
        assert float(nll_nats(model, mel, samples)) < float(first.detach()) - 0.1


def test_compressed_checkpoint_round_trip_is_bit_exact(tmp_path: Path) -> None:
    entry = get_entry(TINY_SUBSCALE)
    model = tiny(TINY_SUBSCALE)
    masks = apply_block_pruning(model, 0.75, block=(16, 1), layers=("recurrent",))
    assert int((~masks["recurrent"]).sum()) == 3 * 16 * 16 * 3 // 4
    apply_int8_ptq(model, [random_batch(entry.input)])
    assert isinstance(model.recurrent, QuantLinear) and isinstance(model.cond, QuantConv1d), "every layer int8"
    config = {"name": entry.name, "base_model": entry.name, "arch": entry.arch, "model_kwargs": entry.model_kwargs,
              "recipe": None}
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), config=config)
    state, _ = load_checkpoint(tmp_path / "ckpt")
    loaded = zoo.api.instantiate(entry, state)
    original = model.state_dict()
    assert list(loaded.state_dict()) == list(original) and isinstance(loaded.cond, QuantConv1d)
    for key, value in loaded.state_dict().items():
        assert value.dtype == original[key].dtype and torch.equal(value, original[key]), key
    mel, samples = random_batch(entry.input)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(mel, samples), model(mel, samples)))
    assert bool((loaded.recurrent.weight[~masks["recurrent"]] == 0).all()), "pruned blocks stay zero after int8"


# The task's metrics ---------------------------------------------------------------------------------

def held_out_bits(name: str, model: torch.nn.Module) -> float:
    """Teacher-forced NLL of every held-out sample, in bits per sample."""
    entry = get_entry(name)
    nats, count = 0.0, 0
    with torch.no_grad():
        for mel, samples in task_of(entry).batches(entry, entry.eval_data, batch_size=64, shuffle=False):
            logits_c, logits_f = model(mel, samples)
            coarse, fine = split_16bit(samples)
            log_p = (logits_c.log_softmax(-1).gather(-1, coarse[..., None])
                     + logits_f.log_softmax(-1).gather(-1, fine[..., None]))
            nats -= float(log_p.sum())
            count += samples.numel()
    return nats / count / math.log(2)


class Replay(torch.nn.Module):
    """'Generates' the reference samples of each test clip (found by its mel frames), or silence."""

    def __init__(self, clips: list[tuple[torch.Tensor, torch.Tensor]], silent: bool) -> None:
        super().__init__()
        self.by_mel = {mel.numpy().tobytes(): samples for mel, samples in clips}
        self.silent = silent

    def generate(self, mel: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        samples = self.by_mel[mel[0].numpy().tobytes()][None]
        return torch.full_like(samples, SILENCE) if self.silent else samples


@needs_espeak
def test_mel_distance_is_zero_for_the_reference_and_the_mean_db_gap_for_silence() -> None:
    entry = get_entry(TINY)
    spec, data = entry.input, task_of(entry).batches(entry, entry.eval_data, batch_size=64, shuffle=False).data
    clips = data.clips()
    assert Vocoding._mel_distance(Replay(clips, silent=False), data, spec) == 0.0
    gaps = torch.cat([(mel_db(torch.full_like(samples, SILENCE), spec) - mel_db(samples, spec)).abs().flatten()
                      for _, samples in clips])
    assert Vocoding._mel_distance(Replay(clips, silent=True), data, spec) == pytest.approx(float(gaps.mean()), rel=1e-5)
    assert float(gaps.mean()) > 10.0, "speech is far from silence"


# zoo.load with a sparsity -------------------------------------------------------------------------

@needs_espeak
def test_zoo_load_derives_a_sparse_wavernn(tmp_path: Path) -> None:
    store = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache",
                  options=TrainOptions(epochs=1, latency_seconds=0.05))
    base = zoo.load(TINY, store=store, progress=False)
    assert base.zoo.source == "trained"
    sparse = zoo.load(TINY, sparsity=0.5, store=store, progress=False)
    assert sparse.zoo.name == f"{TINY}_gmp50" and sparse.zoo.source == "derived"
    weights = prunable_weights(sparse, KEEP_DENSE)
    assert list(weights) == ["recurrent"]
    assert int((weights["recurrent"] == 0).sum()) == weights["recurrent"].numel() // 2
    assert sparse.zoo.recipe.steps[0].block == PRUNE_BLOCK == (16, 1), "Sparse WaveRNN's default: 16x1 blocks"
    rows, cols = PRUNE_BLOCK
    blocks = (weights["recurrent"] != 0).reshape(-1, rows, weights["recurrent"].shape[1] // cols, cols)
    assert bool((blocks.all(dim=(1, 3)) | ~blocks.any(dim=(1, 3))).all()), "whole blocks kept or pruned"
    assert int((sparse.cond_input.weight == 0).sum()) == 0
    report, base_report = sparse.zoo.report, base.zoo.report
    assert set(report.metrics) == {"bits_per_sample", "mel_distance"}
    # One epoch of training: fewer bits per held-out sample than the untrained model it started from
    # (measured: 15.96 vs 16.34 bits), computed here from the teacher-forced NLL of the test batches.
    torch.manual_seed(get_entry(TINY).train.seed)
    untrained_bits = held_out_bits(TINY, build_wavernn(get_entry(TINY)).eval())
    assert base_report.metrics["bits_per_sample"] == pytest.approx(held_out_bits(TINY, base), rel=1e-6)
    assert base_report.metrics["bits_per_sample"] < untrained_bits - 0.2, (base_report.metrics, untrained_bits)
    assert report.metrics["bits_per_sample"] == pytest.approx(held_out_bits(TINY, sparse), rel=1e-6)
    assert report.flops_sparse < report.flops_dense == base_report.flops_dense
    again = zoo.load(f"{TINY}_gmp50", store=store, progress=False)
    assert again.zoo.source == "cache"
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), sparse.state_dict().values()))
    int8 = zoo.load(TINY, quant="int8", store=store, progress=False)
    assert isinstance(int8.recurrent, QuantLinear) and int8.zoo.report.quant == "int8"
    assert abs(int8.zoo.report.metrics["bits_per_sample"] - base_report.metrics["bits_per_sample"]) < 0.5
