"""The fused WaveRNN loop (zoo.families.wavernn.fused): the samples and logits of the compiled and eager
loops from the same noise, dense and block-sparse recurrent kernels agreeing, the kernel chosen from
measured times kept in the kernel cache, and the family's `generate` picking the loop."""
from __future__ import annotations

import json

import pytest
import torch
from zoo.compress import sparse_kernels as sk

from zoo.errors import InvalidArgumentError
from zoo.families.wavernn import fused
from zoo.families.wavernn import model as wavernn_model
from zoo.families.wavernn.model import LEVELS, WaveRNN, gumbel_noise, merge_16bit


def _model(sparsity: float = 0.0, seed: int = 0) -> WaveRNN:
    torch.manual_seed(seed)
    model = WaveRNN(n_mels=8, hop=16, mel_pad=1, hidden=32, cond_channels=8).eval()
    if sparsity:
        weight = model.recurrent.weight
        keep = torch.rand(weight.shape[0] // fused.BLOCK, weight.shape[1]) >= sparsity
        with torch.no_grad():
            weight.mul_(keep[:, None, :].expand(-1, fused.BLOCK, -1).reshape(weight.shape))
    return model


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path, monkeypatch):
    path = tmp_path / "kernels.json"
    monkeypatch.setenv("ZOO_KERNEL_CACHE", str(path))
    return path


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean())


@pytest.mark.parametrize(("sparsity", "kernel"), [(0.0, "dense"), (0.75, "dense"), (0.75, "blocks16x1")])
def test_fused_loop_samples_like_the_eager_one(sparsity, kernel):
    model = _model(sparsity)
    mel = torch.randn(2, 8, 6 + 2)
    loop = fused.FusedLoop(model, kernel)
    ours = loop.generate(mel, generator=torch.Generator().manual_seed(3), temperature=0.7)
    theirs = model.generate(mel, generator=torch.Generator().manual_seed(3), temperature=0.7)
    assert ours.shape == theirs.shape == (2, 96) and ours.dtype == torch.long
    assert _agreement(ours, theirs) >= 0.9  # the sums' order differs: a near tie may go the other way
    other_seed = loop.generate(mel, generator=torch.Generator().manual_seed(4), temperature=0.7)
    assert _agreement(ours, other_seed) < 0.5, "the samples follow the generator's noise"


def test_fused_logits_are_the_teacher_forced_ones_and_samples_their_gumbel_max():
    model = _model(0.75)
    mel = torch.randn(1, 8, 4 + 2)
    logits = torch.empty(1, 64, 2, LEVELS)
    samples = fused.FusedLoop(model, "blocks16x1").generate(mel, generator=torch.Generator().manual_seed(5),
                                                           temperature=0.5, logits=logits)
    with torch.no_grad():
        coarse, fine = model(mel, samples)  # the logits of each step given the samples before it
    assert torch.allclose(logits[..., 0, :], coarse, atol=1e-4) and torch.allclose(logits[..., 1, :], fine, atol=1e-4)
    noise = gumbel_noise(torch.Generator().manual_seed(5), (64, 1, 1, 2, LEVELS), mel.device)[:, :, 0]
    drawn = (logits / 0.5 + noise.transpose(0, 1)).argmax(-1)
    assert torch.equal(merge_16bit(drawn[..., 0], drawn[..., 1]), samples)


def test_sparse_and_dense_kernels_agree_on_the_same_weights():
    model = _model(0.9)
    mel = torch.randn(2, 8, 5 + 2)
    results = {}
    for kernel in fused.KERNELS:
        logits = torch.empty(2, 80, 2, LEVELS)
        samples = fused.FusedLoop(model, kernel).generate(mel, generator=torch.Generator().manual_seed(6),
                                                         logits=logits)
        results[kernel] = samples, logits
    (dense, dense_logits), (sparse, sparse_logits) = results["dense"], results["blocks16x1"]
    assert torch.equal(dense, sparse) and torch.allclose(dense_logits, sparse_logits, atol=1e-5)


def test_fused_loop_crosses_noise_chunks(monkeypatch):
    monkeypatch.setattr(wavernn_model._GumbelNoise, "CHUNK", 24)  # 64 samples: chunks of 24, 24, 16
    model = _model()
    mel = torch.randn(1, 8, 4 + 2)
    ours = fused.FusedLoop(model, "dense").generate(mel, generator=torch.Generator().manual_seed(7))
    assert _agreement(ours, model.generate(mel, generator=torch.Generator().manual_seed(7))) >= 0.9


def test_a_sparse_linear_recurrent_layer_runs_as_its_dense_weight():
    model = _model(0.75)
    mel = torch.randn(1, 8, 3 + 2)
    expected = fused.FusedLoop(model, "dense").generate(mel, generator=torch.Generator().manual_seed(8))
    model.recurrent = sk.sparse_module(model.recurrent, "csr")
    assert torch.equal(fused.FusedLoop(model, "blocks16x1").generate(mel, generator=torch.Generator().manual_seed(8)),
                       expected)


def test_the_kernel_is_chosen_by_times_measured_once_and_kept(kernel_cache):
    model = _model(0.9)
    kernel, seconds = fused.recurrent_kernel(model)
    assert set(seconds) == set(fused.KERNELS) and kernel == sk.choose(seconds, ("blocks16x1",))
    content = json.loads(kernel_cache.read_text())
    (entries,) = content.values()
    sig = fused.kernel_signature(model.recurrent)
    assert entries[sig] == seconds
    for fast, times in (("blocks16x1", {"dense": 1.0, "blocks16x1": 0.1}), ("dense", {"dense": 0.1, "blocks16x1": 1.0})):
        entries[sig] = times
        kernel_cache.write_text(json.dumps({key: entries for key in content}))
        assert fused.recurrent_kernel(model) == (fast, times), "the cached times decide, not a fixed rule"
        assert fused.fused_loop(_model(0.9)).kernel == fast
    assert fused.recurrent_kernel(_model(0.3)) == ("dense", None), "under MIN_SPARSITY: dense, unmeasured"


def test_the_loop_is_built_once_per_model_and_again_when_its_weights_change():
    model = _model(0.9)
    loop = fused.fused_loop(model)
    assert fused.fused_loop(model) is loop
    with torch.no_grad():
        model.coarse_out.bias.add_(1.0)
    assert fused.fused_loop(model) is not loop


def test_generate_runs_the_fused_loop_where_it_can_and_the_models_own_otherwise(monkeypatch):
    model = _model()
    mel = torch.randn(1, 8, 3 + 2)
    assert torch.equal(fused.generate(model, mel, generator=torch.Generator().manual_seed(9)),
                       fused.fused_loop(model).generate(mel, generator=torch.Generator().manual_seed(9)))
    subscale = WaveRNN(n_mels=8, hop=16, mel_pad=1, hidden=16, subscale=4, context_channels=8).eval()
    assert "subscale 4" in fused.fused_unsupported(subscale)
    assert torch.equal(fused.generate(subscale, mel, generator=torch.Generator().manual_seed(9)),
                       subscale.generate(mel, generator=torch.Generator().manual_seed(9)))
    model.coarse_out = torch.nn.Sequential(model.coarse_out)
    assert "coarse_out" in fused.fused_unsupported(model)
    with pytest.raises(InvalidArgumentError, match="coarse_out"):
        fused.FusedLoop(model, "dense")


def test_bad_arguments_are_refused():
    model = _model()
    with pytest.raises(InvalidArgumentError, match="kernel"):
        fused.FusedLoop(model, "csr")
    loop = fused.FusedLoop(model, "dense")
    with pytest.raises(InvalidArgumentError, match="temperature"):
        loop.generate(torch.randn(1, 8, 3), temperature=0.0)
    with pytest.raises(InvalidArgumentError, match="logits"):
        loop.generate(torch.randn(1, 8, 3), logits=torch.empty(1, 16, 2, 10))
    with pytest.raises(InvalidArgumentError, match="frame"):
        loop.generate(torch.randn(1, 8, 2))
