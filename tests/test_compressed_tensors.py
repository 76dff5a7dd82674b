"""compressed-tensors export of transformers-family variants: the folder loads with transformers'
`AutoModelForSequenceClassification.from_pretrained` (compressed-tensors installed) and its logits equal
the zoo variant's."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("compressed_tensors")

from test_transformers_family import _load_base  # noqa: E402
from zoo.api import _recipe_context  # noqa: E402
from zoo.compress.compressed_tensors import CompressedTensorsExportError, export_compressed_tensors  # noqa: E402
from zoo.variants import VariantSpec  # noqa: E402

QUERY = "bert.encoder.layer.0.attention.self.query"


def _variant(tiny_bert, endpoint, **kwargs):
    entry, base = _load_base(tiny_bert, endpoint)
    spec = VariantSpec(entry, method="oneshot", **kwargs)
    return entry, spec.recipe().apply(base.train(False), _recipe_context(entry, False)).eval()


def _roundtrip(entry, model, out):
    from transformers import AutoModelForSequenceClassification

    export_compressed_tensors(model, entry, out)
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    ids = torch.randint(5, entry.input.vocab_size, (4, entry.input.max_length), generator=torch.Generator().manual_seed(0))
    ids[:, -5:] = 0  # padding
    with torch.no_grad():
        return model(ids), loaded(input_ids=ids, attention_mask=(ids != 0).long()).logits, loaded


@pytest.mark.parametrize("quant,fmt,bits", [("w4_ptq", "pack-quantized", 4), ("w2g16_ptq", "pack-quantized", 2),
                                            ("w4g16_asym_ptq", "naive-quantized", 4), ("w8_ptq", "naive-quantized", 8)])
def test_weight_only_low_bit_round_trip(tiny_bert, hub_env, tmp_path, quant, fmt, bits):
    entry, model = _variant(tiny_bert, hub_env, quant=quant)
    ours, theirs, loaded = _roundtrip(entry, model, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == fmt
    (group,) = config["config_groups"].values()
    assert group["weights"]["num_bits"] == bits and QUERY in group["targets"]
    tensors = load_file(str(tmp_path / "ct" / "model.safetensors"))
    if fmt == "pack-quantized":
        assert tensors[f"{QUERY}.weight_packed"].dtype == torch.int32 and f"{QUERY}.weight" not in tensors
        assert tensors[f"{QUERY}.weight_packed"].shape[1] == 32 * bits // 32
    else:
        assert tensors[f"{QUERY}.weight"].dtype == torch.int8
    assert ("asym" in quant) == (f"{QUERY}.weight_zero_point" in tensors)
    # both dequantize the same integers and scales: the weights agree bit for bit, the logits exactly
    assert torch.equal(loaded.get_submodule(QUERY).weight, model.get_submodule(QUERY).weight)
    assert torch.equal(ours, theirs)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "ct" / name).is_file()


def test_int8_with_static_input_activations_round_trip(tiny_bert, hub_env, tmp_path):
    """The zoo's int8 PTQ (per-channel int8 weights, uint8 per-tensor inputs) as int-quantized with static
    asymmetric input activations: compressed-tensors fake-quantizes the inputs in its own arithmetic
    (x / scale, round, clamp to [-128, 127]) where the zoo calls torch's fake_quantize (x * (1 / scale)), so
    an input exactly between two levels may round the other way: logits agree to 1e-5, not bit for bit."""
    entry, model = _variant(tiny_bert, hub_env, quant="int8")
    ours, theirs, loaded = _roundtrip(entry, model, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "int-quantized"
    (group,) = config["config_groups"].values()
    assert group["input_activations"]["num_bits"] == 8 and group["input_activations"]["dynamic"] is False
    assert torch.equal(loaded.get_submodule(QUERY).weight, model.get_submodule(QUERY).weight)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_sparse_variant_keeps_its_zeros_and_records_sparsity(tiny_bert, hub_env, tmp_path):
    entry, model = _variant(tiny_bert, hub_env, sparsity=0.5, quant="w8_ptq")
    ours, theirs, loaded = _roundtrip(entry, model, tmp_path / "ct")
    sparsity = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert sparsity["format"] == "dense" and 0.3 < sparsity["global_sparsity"] < 0.6
    assert torch.equal(ours, theirs)
    weight = loaded.get_submodule(QUERY).weight
    assert torch.equal(weight == 0, model.get_submodule(QUERY).weight == 0) and int((weight == 0).sum()) > 0


def test_sparse_only_variant_is_a_plain_transformers_folder(tiny_bert, hub_env, tmp_path):
    entry, model = _variant(tiny_bert, hub_env, sparsity=0.5)
    ours, theirs, loaded = _roundtrip(entry, model, tmp_path / "ct")
    assert "quantization_config" not in json.loads((tmp_path / "ct" / "config.json").read_text())
    assert torch.equal(ours, theirs)
    assert float((loaded.get_submodule(QUERY).weight == 0).float().mean()) > 0.3


def test_refuses_what_it_cannot_write(tiny_bert, hub_env, tmp_path):
    import timm

    from zoo.models import get_entry

    resnet = get_entry("test_resnet.r160_in1k")
    with pytest.raises(CompressedTensorsExportError, match="not a transformers"):
        export_compressed_tensors(timm.create_model("test_resnet"), resnet, tmp_path / "a")
    folder, commit = tiny_bert
    entry, model = _variant(tiny_bert, hub_env, quant="w4a8_ptq")
    with pytest.raises(CompressedTensorsExportError, match="quantizes its inputs"):
        export_compressed_tensors(model, entry, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("keep")
    with pytest.raises(CompressedTensorsExportError, match="not an empty folder"):
        export_compressed_tensors(_variant(tiny_bert, hub_env, quant="w4_ptq")[1], entry, tmp_path / "c")


def test_cli_refuses_a_model_that_is_not_from_a_transformers_repo(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from zoo.cli import main

    monkeypatch.setenv("ZOO_HUB", str(tmp_path / "hub"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["export", "test_resnet.r160_in1k", "--format", "compressed-tensors",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "CompressedTensorsExportError" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # refused before loading


def test_cli_exports_a_hub_id_variant_that_transformers_loads(tiny_bert, hub_env, tmp_path):
    """The user's path end to end: `zoo export hf-hub:org/name+os50_w4_ptq --format compressed-tensors` (the
    base read from the Hub once, then from the Hugging Face cache) writes a folder transformers'
    from_pretrained loads, whose logits are the zoo variant's, its pruned zeros kept through GPTQ."""
    from click.testing import CliRunner
    from transformers import AutoModelForSequenceClassification

    import zoo
    from tiny_bert_repo import REPO
    from zoo.cli import main

    name = f"hf-hub:{REPO}+os50_w4_ptq"
    model = zoo.load(name, endpoint=hub_env, progress=False)
    out = tmp_path / "ct"
    result = CliRunner().invoke(main, ["export", name, "--format", "compressed-tensors", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    ids = torch.randint(5, 60, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, model(ids))
    weight = model.get_submodule(QUERY).weight
    assert 0.45 < float((weight == 0).float().mean()) and torch.equal(loaded.get_submodule(QUERY).weight, weight)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
