"""Sparse kernels (compress.sparse_kernels): layouts, the measured per-layer choice and its cache."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from zoo.compress import sparse_kernels as sk
from zoo.compress.quantization import QuantLinear
from zoo.compress.selection import machine_key

from zoo.errors import InvalidArgumentError
from zoo.families.wavernn.model import WaveRNN


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path, monkeypatch):
    path = tmp_path / "sparse_kernels.json"
    monkeypatch.setenv("ZOO_KERNEL_CACHE", str(path))
    monkeypatch.setattr(sk, "ROUND_SECONDS", 2e-4)  # fast timing: the tests check logic, not speed
    monkeypatch.setattr(sk, "ROUNDS", 2)
    return path


def _sparse(weight: torch.Tensor, sparsity: float, block: int = 1, seed: int = 0) -> None:
    """Zeroes a random `sparsity` of `weight`'s [block x 1] blocks in place."""
    rows, columns = weight.shape[0], weight.reshape(weight.shape[0], -1).shape[1]
    keep = torch.rand(rows // block, columns, generator=torch.Generator().manual_seed(seed)) >= sparsity
    with torch.no_grad():
        weight.mul_(keep.repeat_interleave(block, 0).reshape(weight.shape))


@pytest.mark.parametrize("layout", sk.FORMATS)
@pytest.mark.parametrize("shape", [(1, 64), (3, 64), (2, 5, 64)])
def test_sparse_linear_matches_dense(layout, shape):
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    _sparse(layer.weight, 0.8, block=16)
    sparse = sk.SparseLinear.from_dense(layer, layout)
    x = torch.randn(shape)
    with torch.inference_mode():
        got = sparse(x)
    assert got.shape == (*shape[:-1], 48)
    torch.testing.assert_close(got, layer(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", sk.FORMATS)
def test_sparse_conv1x1_matches_dense(layout):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 1)
    _sparse(conv.weight, 0.9)
    x = torch.randn(2, 32, 3, 5)
    with torch.inference_mode():
        torch.testing.assert_close(sk.SparseConv1x1.from_dense(conv, layout)(x), conv(x), rtol=1e-5, atol=1e-5)


def test_only_plain_pointwise_layers_are_sparse_candidates():
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 1, stride=2), nn.Conv2d(16, 16, 1),
                          QuantLinear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16))
    for module in model:
        with torch.no_grad():
            module.weight.zero_()
    model[5].weight.data.fill_(1.0)  # dense
    assert sk.candidate_layers(model) == ["2", "4"]
    with pytest.raises(InvalidArgumentError):
        sk.sparse_module(model[1], "csr")
    with pytest.raises(InvalidArgumentError):
        sk.SparseLinear.from_dense(model[4], "bsr5x5")  # does not tile 16x16
    with pytest.raises(InvalidArgumentError):
        sk.SparseLinear.from_dense(model[4], "coo")


def test_choose_is_deterministic_and_needs_the_margin():
    assert sk.choose({"dense": 1.0, "csr": 0.5, "bsr4x4": 0.5}) == "csr"  # tie: earlier format
    assert sk.choose({"dense": 1.0, "csr": 0.95, "bsr4x4": 2.0}) == "dense"  # faster, not by the margin
    assert sk.choose({"dense": 1.0, "csr": 0.95}, margin=1.0) == "csr"
    assert sk.choose({"dense": 1.0}) == "dense"
    with pytest.raises(InvalidArgumentError):
        sk.choose({"csr": 1.0})


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    _sparse(model[0].weight, 0.9)
    _sparse(model[2].weight, 0.95, block=16)
    return model.eval()


def test_choice_follows_the_cached_measurements(kernel_cache):
    x = torch.randn(1, 64)
    first = sk.use_sparse_kernels(_model(), x)
    assert set(first) == {"0", "2"} and all(c.source == "measured" for c in first.values())
    content = json.loads(kernel_cache.read_text())
    entries = content[machine_key()]
    assert set(entries) == {c.signature for c in first.values()}
    # Rig the file: csr 3x faster than dense on layer 0, everything slower on layer 2.
    sig0, sig2 = first["0"].signature, first["2"].signature
    entries[sig0] = {"dense": 3e-6, "csr": 1e-6, "bsr4x4": 5e-6, "blocks16x1": 5e-6}
    entries[sig2] = {"dense": 1e-6, "csr": 2e-6, "bsr4x4": 2e-6, "blocks16x1": 2e-6}
    kernel_cache.write_text(json.dumps(content))
    for _ in range(2):
        model = _model()
        reference = model(x)
        choices = sk.use_sparse_kernels(model, x)
        assert {name: c.layout for name, c in choices.items()} == {"0": "csr", "2": "dense"}
        assert all(c.source == "cache file" for c in choices.values())
        assert isinstance(model[0], sk.SparseLinear) and type(model[2]) is nn.Linear
        assert model.kernel_choices == choices and choices["0"].speedup == pytest.approx(3.0)
        with torch.inference_mode():
            torch.testing.assert_close(model(x), reference.detach(), rtol=1e-5, atol=1e-5)


def test_other_rows_or_patterns_are_measured_again(kernel_cache):
    sk.use_sparse_kernels(_model(), torch.randn(1, 64))
    choices = sk.use_sparse_kernels(_model(), torch.randn(16, 64))  # 16 rows: other signatures
    assert all(c.source == "measured" and "rows 16" in c.signature for c in choices.values())
    other = _model()
    _sparse(other[0].weight, 0.95, seed=1)
    again = sk.use_sparse_kernels(other, torch.randn(1, 64))
    assert again["0"].source == "measured" and again["2"].source == "cache file"
    assert len(json.loads(kernel_cache.read_text())[machine_key()]) == 5


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"machine": 3}'])
def test_a_corrupt_cache_is_measured_again_with_a_warning(kernel_cache, content):
    kernel_cache.write_text(content)
    with pytest.warns(UserWarning, match="kernel cache"):
        choices = sk.use_sparse_kernels(_model(), torch.randn(1, 64))
    assert all(c.source == "measured" for c in choices.values())
    assert set(json.loads(kernel_cache.read_text())[machine_key()]) == {c.signature for c in choices.values()}


def test_a_malformed_entry_is_measured_again_with_a_warning(kernel_cache):
    first = sk.use_sparse_kernels(_model(), torch.randn(1, 64))
    content = json.loads(kernel_cache.read_text())
    content[machine_key()][first["0"].signature] = ["not", "a", "mapping"]
    content[machine_key()][first["2"].signature] = {"dense": 1e-6}  # lacks the formats: measured, no warning
    kernel_cache.write_text(json.dumps(content))
    with pytest.warns(UserWarning, match="malformed entry of the kernel cache"):
        choices = sk.use_sparse_kernels(_model(), torch.randn(1, 64))
    assert choices["0"].source == "measured" and choices["2"].source == "measured"


def test_empty_setting_keeps_no_file(kernel_cache, monkeypatch):
    monkeypatch.setenv("ZOO_KERNEL_CACHE", "")
    choices = sk.use_sparse_kernels(_model(), torch.randn(1, 64))
    assert set(choices) == {"0", "2"} and not kernel_cache.exists()


def _tiny_wavernn() -> WaveRNN:
    torch.manual_seed(0)
    model = WaveRNN(n_mels=8, hop=16, mel_pad=1, hidden=32, cond_channels=8).eval()
    _sparse(model.recurrent.weight, 0.75, block=16)
    return model


def test_zoo_load_with_sparse_kernels(tmp_path_factory, tmp_path):
    from tiny_zoo import BASE, store_with_base

    import zoo

    store = store_with_base(tmp_path_factory, tmp_path)
    with pytest.raises(InvalidArgumentError, match="kernels"):
        zoo.load(BASE, store=store, kernels="fast")
    dense = zoo.load(BASE, sparsity=0.9, method="oneshot", store=store, progress=False)
    model = zoo.load(BASE, sparsity=0.9, method="oneshot", store=store, progress=False, kernels="sparse")
    choices = model.kernel_choices
    assert choices and set(choices) == set(sk.candidate_layers(dense))
    for name, choice in choices.items():
        swapped = model.get_submodule(name)
        assert (type(swapped) in (nn.Linear, nn.Conv2d)) == (choice.layout == "dense")
    example = torch.randn(zoo.get_entry(BASE).input.example_shape(1))
    with torch.inference_mode():
        torch.testing.assert_close(model(example), dense(example), rtol=1e-4, atol=1e-4)
    assert not hasattr(dense, "kernel_choices")
