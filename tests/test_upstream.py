"""Upstream checkpoints through zoo.load: real Hub download code against olah on loopback, then a
derived variant evaluated on an ImageNet-style folder (the real loader, on a small local copy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from PIL import Image

import zoo
from olah_server import OlahServer
from zoo.hub import LocalHub
from zoo.hub.local import folder_files
from zoo.store import Store

NAME = "test_efficientnet.r160_in1k"


@pytest.fixture
def upstream(olah_hub: OlahServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """timm's export of a seeded `test_efficientnet.r160_in1k` served as `timm/<name>`; returns its state dict."""
    import timm
    from timm.models import save_for_hf

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    torch.manual_seed(0)
    source = timm.create_model(NAME)
    save_for_hf(source, tmp_path / "export", safe_serialization=True)
    olah_hub.add_repo(f"timm/{NAME}", folder_files(tmp_path / "export"), lfs=["model.safetensors"])
    return source.state_dict()


def write_imagefolder(root: Path) -> Path:
    """Three ImageNet classes, two JPEGs each, in the class-per-folder layout."""
    rng = np.random.default_rng(0)
    for cls in ("n01440764", "n01443537", "n01484850"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (180, 200, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.jpg")
    return root


@pytest.fixture
def imagefolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZOO_IMAGEFOLDER_VAL", str(write_imagefolder(tmp_path / "val")))
    return tmp_path / "val"


def test_upstream_checkpoint_loads_bit_for_bit_then_compresses(
    upstream: dict[str, torch.Tensor], imagefolder: Path, olah_hub: OlahServer, tmp_path: Path
) -> None:
    store = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache")
    base = zoo.load(NAME, store=store, endpoint=olah_hub.endpoint, progress=False)
    assert base.zoo.source == "upstream"
    got = base.state_dict()
    assert all(torch.equal(got[k], upstream[k]) for k in upstream) and set(got) == set(upstream)

    sparse = zoo.load(NAME, sparsity=0.5, store=store, endpoint=olah_hub.endpoint, progress=False)
    assert sparse.zoo.name == f"{NAME}_os50" and sparse.zoo.source == "derived"
    report = sparse.zoo.report
    assert set(report.metrics) == {"top1", "top5"} and report.dataset == "imagefolder"
    assert report.flops_sparse < report.flops_dense and report.params_nonzero < report.params_total

    offline = "http://127.0.0.1:9"  # nothing listens there: a cached variant needs no network
    again = zoo.load(NAME, sparsity=0.5, store=store, endpoint=offline, progress=False)
    assert again.zoo.source == "cache" and again.zoo.path == sparse.zoo.path
    assert zoo.load(NAME, store=store, endpoint=offline, progress=False).zoo.source == "upstream"


def test_an_upstream_base_gets_post_training_low_bit_weights(
    upstream: dict[str, torch.Tensor], imagefolder: Path, olah_hub: OlahServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No training data for an upstream base: `quant="w4"` is GPTQ on calibration images of its train split."""
    monkeypatch.setenv("ZOO_IMAGEFOLDER_TRAIN", str(imagefolder))
    store = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache")
    low_bit = zoo.load(NAME, quant="w4", store=store, endpoint=olah_hub.endpoint, progress=False)
    assert low_bit.zoo.name == f"{NAME}_w4_ptq" and low_bit.zoo.source == "derived"
    (step,) = low_bit.zoo.recipe.steps
    assert type(step).__name__ == "LowBitPTQConfig" and (step.bits_w, step.rounding) == (4, "gptq")
    assert set(low_bit.zoo.report.metrics) == {"top1", "top5"}
    from zoo.compress.checkpoint import WEIGHTS_FILE, _read_weights, read_config

    _, metas = _read_weights(low_bit.zoo.path / WEIGHTS_FILE, read_config(low_bit.zoo.path)["format_version"])
    packed = [name for name, meta in metas.items() if "int4" in meta.encoding.value]
    assert packed and "classifier.weight" not in packed, "convs packed at 4 bits, the classifier (keep_dense) float"


def test_upstream_without_evaluation_data_warns_and_measures_the_rest(
    upstream: dict[str, torch.Tensor], olah_hub: OlahServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZOO_IMAGEFOLDER_VAL", raising=False)
    store = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache")
    with pytest.warns(UserWarning, match="ZOO_IMAGEFOLDER_VAL"):
        sparse = zoo.load(NAME, sparsity=0.5, store=store, endpoint=olah_hub.endpoint, progress=False)
    assert sparse.zoo.source == "derived", sparse.zoo
    assert sparse.zoo.report.metrics == {} and sparse.zoo.report.flops_sparse > 0
    assert "ZOO_IMAGEFOLDER_VAL" in sparse.zoo.report.eval_data_missing

    write_imagefolder(tmp_path / "val")  # the data arrives: the cached report is measured again
    monkeypatch.setenv("ZOO_IMAGEFOLDER_VAL", str(tmp_path / "val"))
    again = zoo.load(NAME, sparsity=0.5, store=store, endpoint=olah_hub.endpoint, progress=False)
    assert again.zoo.source == "cache" and again.zoo.path == sparse.zoo.path
    assert set(again.zoo.report.metrics) == {"top1", "top5"} and again.zoo.report.eval_data_missing is None
    assert zoo.load(NAME, sparsity=0.5, store=store, progress=False).zoo.report.metrics == again.zoo.report.metrics


def test_a_wrong_evaluation_folder_is_an_error_not_a_missing_metric(
    upstream: dict[str, torch.Tensor], olah_hub: OlahServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOO_IMAGEFOLDER_VAL", str(tmp_path / "no-such-folder"))
    store = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache")
    with pytest.raises(zoo.InvalidArgumentError, match="not a folder"):
        zoo.load(NAME, sparsity=0.5, store=store, endpoint=olah_hub.endpoint, progress=False)
    assert not list((tmp_path / "cache").glob(f"{NAME}_os50/*/report.json")), "no report cached for a failure"


def test_gradual_pruning_needs_training_data(tmp_path: Path) -> None:
    with pytest.raises(zoo.InvalidArgumentError, match="oneshot"):
        zoo.load(NAME, sparsity=0.5, method="gmp", store=Store(LocalHub(tmp_path / "h"), tmp_path / "c"))
    assert not (tmp_path / "c").exists()
