"""A low-bit variant of a tiny entry of every family, by name (QAT: the zoo trains these bases; the GPTQ
post-training default of an upstream base is tested in test_upstream.py): saved packed, measured, and
loaded back from the cache bit for bit."""
from __future__ import annotations

import shutil

import pytest
import torch

import zoo
from tiny_zoo import assert_bit_equal, one_torch_thread, short_store
from zoo.compress.checkpoint import WEIGHTS_FILE, _read_weights, read_config
from zoo.compress.lowbit import QAT_LAYERS
from zoo.runtimes.int8 import FAKE_QUANT

FAMILY_VARIANTS = [
    "test_resnet.zoo_digits_w4a8",
    "test_resnet.zoo_digits_w2_kd",
    "transformer_tiny.zoo_numbers_tiny_w4",
    "test_mcbert.zoo_pydoc_ft_stdlib_w8a8",
    "test_wavernn.zoo_espeak_w4",
    "test_irn.zoo_skimage_w4",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_VARIANTS)
def test_the_low_bit_variant_of_every_family_loads(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    if "wavernn" in name and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng (system package) not installed")
    store = short_store(tmp_path_factory.mktemp("lowbit"))
    with one_torch_thread():
        model = zoo.load(name, store=store, progress=False)
        again = zoo.load(name, store=store, progress=False)
    assert again.zoo.source == "cache" and model.zoo.name == name
    layers = [m for m in again.modules() if isinstance(m, QAT_LAYERS)]
    assert layers and all(layer.finalized for layer in layers)
    assert_bit_equal(again.state_dict(), model.state_dict())
    steps = [step["type"] for step in model.zoo.report.recipe]
    assert steps[-1] == ("LowBitPTQConfig" if name.endswith("_ptq") else "QATConfig")
    assert ("DistillationConfig" in steps) == name.endswith("_kd")
    _, metas = _read_weights(model.zoo.path / WEIGHTS_FILE, read_config(model.zoo.path)["format_version"])
    bits = int(name.rpartition("_w")[2][0])
    packed = f"int{bits}" if bits < 8 else "int8"
    assert any(meta.encoding.value.removeprefix("bitmask-").startswith(packed) for meta in metas.values()), \
        sorted({m.encoding.value for m in metas.values()})
    report = model.zoo.report
    assert report.metrics and report.quant == name.rpartition("_w")[2].removesuffix("_kd").join(("w", ""))
    assert report.int8_path == FAKE_QUANT, "the short options time torch alone: no integer kernel ran"
    with torch.no_grad():
        assert all(torch.isfinite(p).all() for p in again.parameters())
