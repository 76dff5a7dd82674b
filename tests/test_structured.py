"""Structured pruning (zoo.compress.structured): channels of timm CNNs, heads and FFN neurons of the
BERT family. The pruned model has the requested fraction removed, runs, and its saved architecture
rebuilds it with plain timm / transformers code holding the same weights; recipes and variant names
round-trip; `zoo.load` and `zoo compress` derive `test_resnet.zoo_digits_ch50` end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from timm.models._prune import adapt_model_from_string
from torch import nn
from transformers import BertConfig, BertModel

import zoo
from tiny_zoo import BASE, one_torch_thread, store_env, store_with_base
from zoo.compress import Recipe, RecipeContext
from zoo.compress.structured import (
    ChannelPruningConfig, HeadPruningConfig, apply_channel_pruning, apply_gradual_head_pruning, apply_head_pruning,
    channel_widths, kept_width, pruning_epochs, structured_hooks,
)
from zoo.errors import InvalidArgumentError, RecipeError
from zoo.evaluate.flops import count_flops
from zoo.models import build_model, get_entry
from zoo.variants import parse_variant_name, resolve

CH50 = f"{BASE}_ch50"
TINY_BERT = "test_mcbert.zoo_pydoc_ft_stdlib"


def digits_input(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def timm_rebuild(entry_name: str, architecture: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """What a user does with the saved config and weights: plain timm, nothing of the zoo."""
    entry = get_entry(entry_name)
    shell = timm.create_model(entry.arch, pretrained=False, **entry.model_kwargs)
    model = adapt_model_from_string(shell, architecture["timm_pruned"])
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


# ---- widths -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("width", "fraction", "kept"), [
    (64, 0.5, 32), (16, 0.5, 8), (12, 0.5, 6), (100, 0.25, 72), (7, 0.9, 1), (20, 0.0, 20), (40, 0.5, 24),
])
def test_kept_width_removes_the_fraction_and_rounds_wide_layers_to_multiples_of_8(width, fraction, kept) -> None:
    assert kept_width(width, fraction, 8) == kept


def test_pruning_steps_fall_in_the_first_half_of_fine_tuning() -> None:
    assert pruning_epochs(6, 3) == [0, 1, 2]
    assert pruning_epochs(4, 3) == [0, 0, 1]
    assert pruning_epochs(1, 3) == [0, 0, 0]


# ---- channels -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["test_resnet.zoo_digits", "test_efficientnet.zoo_digits"])
def test_channel_pruning_removes_the_fraction_and_plain_timm_rebuilds_it(name: str) -> None:
    entry = get_entry(name)
    torch.manual_seed(0)
    model = build_model(entry)
    before_widths, before_flops = channel_widths(model), count_flops(model, digits_input(1)).dense
    widths = apply_channel_pruning(model, 0.5, digits_input(1), keep=entry.keep_dense, round_to=8)
    assert len(widths) >= 5
    for layer, (before, after) in widths.items():
        assert before == before_widths[layer]
        assert after == kept_width(before, 0.5, 8)
        assert abs(after - before / 2) <= 4, (layer, before, after)  # half, within the rounding to 8
    classifier = "fc" if "resnet" in name else "classifier"
    assert channel_widths(model)[classifier] == 10  # the classes stay
    pruned_total = sum(channel_widths(model).values())
    assert pruned_total < 0.65 * sum(before_widths.values())
    assert count_flops(model, digits_input(1)).dense < 0.75 * before_flops  # the kept stem costs the rest

    architecture = structured_hooks(model).describe(model)
    rebuilt = timm_rebuild(name, json.loads(json.dumps(architecture)), model.state_dict())
    x = digits_input()
    assert torch.equal(rebuilt(x), model(x))
    assert rebuilt(x).shape == (2, 10)


def test_channel_pruning_refuses_a_family_without_channels_and_bad_fractions() -> None:
    bert = build_model(get_entry(TINY_BERT))
    step = Recipe((ChannelPruningConfig(sparsity=0.5),))
    ids = get_entry(TINY_BERT).input.example_ids(1)
    with pytest.raises(InvalidArgumentError, match="channel pruning does not apply"):
        step.apply(bert, RecipeContext(calibration_batches=lambda: iter([ids])))
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\)"):
        apply_channel_pruning(build_model(get_entry(BASE)), 1.0, digits_input(1))


# ---- heads and FFN neurons -------------------------------------------------------------------------

def plain_bert(architecture: dict, base: BertConfig) -> BertModel:
    """A transformers BertModel of the base config with each layer's linears narrowed to the saved sizes."""
    bert = BertModel(BertConfig.from_dict(base.to_dict()), add_pooling_layer=False)
    size = architecture["head_size"]
    for layer, heads, ffn in zip(bert.encoder.layer, architecture["heads"], architecture["intermediate"]):
        hidden = layer.attention.self.query.in_features
        for name in ("query", "key", "value"):
            setattr(layer.attention.self, name, nn.Linear(hidden, heads * size))
        layer.attention.output.dense = nn.Linear(heads * size, hidden)
        layer.intermediate.dense = nn.Linear(hidden, ffn)
        layer.output.dense = nn.Linear(ffn, hidden)
    return bert.eval()


def encoder_output(bert: BertModel, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    return bert(input_ids=ids, attention_mask=(ids != 0).long(), position_ids=positions,
                token_type_ids=torch.zeros_like(ids)).last_hidden_state


def test_head_pruning_removes_heads_and_ffn_neurons_and_plain_transformers_rebuilds_it() -> None:
    entry = get_entry(TINY_BERT)  # 2 layers, 2 heads of 16, FFN 64
    torch.manual_seed(0)
    model = build_model(entry)
    ids = entry.input.example_ids(2)
    ids[1, 5:] = 0  # padding in the second row
    sizes = apply_head_pruning(model, 0.5, round_to=8)
    assert sizes == [(1, 32), (1, 32)]
    logits = model(ids)
    assert logits.shape == (2, entry.num_classes)

    architecture = json.loads(json.dumps(structured_hooks(model).describe(model)))
    bert = plain_bert(architecture, model.bert.config)
    encoder_weights = {k[len("bert."):]: v for k, v in model.state_dict().items() if k.startswith("bert.")}
    bert.load_state_dict(encoder_weights, strict=False)  # the zoo's encoder saves no index buffers
    assert torch.equal(encoder_output(bert, ids), encoder_output(model.bert, ids))
    assert sum(p.numel() for p in bert.encoder.parameters()) < 0.6 * sum(
        p.numel() for p in BertModel(model.bert.config, add_pooling_layer=False).encoder.parameters())


def test_head_pruning_keeps_the_heads_of_largest_norm() -> None:
    model = build_model(get_entry(TINY_BERT))
    attention = model.bert.encoder.layer[0].attention.self
    with torch.no_grad():
        attention.query.weight[:16] *= 100  # head 0 of layer 0 is by far the largest
        kept = attention.query.weight[:16].clone()
    apply_head_pruning(model, 0.5)
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, kept)


def test_gradual_head_pruning_fine_tunes_between_steps() -> None:
    entry = get_entry(TINY_BERT)
    torch.manual_seed(0)
    model = build_model(entry)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randint(6, 512, (8, 16), generator=generator), torch.randint(0, 5, (8,), generator=generator))
               for _ in range(2)]
    seen: list[list[tuple[int, int]]] = []

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        seen.append(structured_hooks(m).head_sizes(m))
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    context = RecipeContext(train_batches=lambda epoch: batches, loss_fn=loss_fn, progress=False)
    sizes = apply_gradual_head_pruning(model, context, sparsity=0.5, epochs=4, lr=1e-3, steps=2, round_to=8)
    assert sizes == [(1, 32), (1, 32)]
    assert seen[0] == [(2, 48), (2, 48)]  # half way after the first step (FFN: 64 -> 48), trained there
    assert seen[-1] == sizes and len(seen) == 8


def test_head_pruning_refuses_a_model_without_heads() -> None:
    with pytest.raises(InvalidArgumentError, match="no attention heads"):
        apply_head_pruning(build_model(get_entry(BASE)), 0.5)


# ---- recipes and names ---------------------------------------------------------------------------------

def test_structured_recipes_round_trip_and_validate() -> None:
    recipe = Recipe((ChannelPruningConfig(sparsity=0.5, epochs=4, steps=3, keep=("fc",)),
                     HeadPruningConfig(sparsity=0.25, ffn_sparsity=0.5, epochs=2, steps=2)))
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    for bad in (dict(sparsity=1.0), dict(sparsity=0.5, steps=3), dict(sparsity=0.5, round_to=0),
                dict(sparsity=0.5, epochs=2, optimizer="lion"), dict(sparsity=0.5, keep=("(",))):
        with pytest.raises(RecipeError):
            ChannelPruningConfig(**bad)
    with pytest.raises(RecipeError):
        HeadPruningConfig(sparsity=0.5, ffn_sparsity=-0.1)


def test_structured_variant_names_parse_back() -> None:
    assert parse_variant_name(CH50) == (BASE, {"method": "channels", "sparsity": 0.5})
    assert parse_variant_name(f"{TINY_BERT}_hd25") == (TINY_BERT, {"method": "heads", "sparsity": 0.25})
    spec = resolve(BASE, sparsity=0.5, method="channels")
    assert spec.name == CH50 and resolve(CH50) == spec
    assert resolve(f"{TINY_BERT}_hd50_int8").name == f"{TINY_BERT}_hd50_int8"
    (step,) = spec.recipe().steps
    assert isinstance(step, ChannelPruningConfig) and step.keep == get_entry(BASE).keep_dense and step.steps == 3
    (step,) = resolve(f"{TINY_BERT}_hd50").recipe().steps
    assert isinstance(step, HeadPruningConfig) and step.sparsity == 0.5 and step.epochs >= 1


def test_a_structured_method_the_base_lacks_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgumentError, match="cannot be pruned by 'heads': its structured pruning is 'channels'"):
        resolve(f"{BASE}_hd50")
    with pytest.raises(InvalidArgumentError, match="cannot be pruned by 'channels'"):
        resolve(TINY_BERT, sparsity=0.5, method="channels")
    with pytest.raises(InvalidArgumentError, match="its family has no structured pruning"):
        resolve("wavernn.zoo_espeak", sparsity=0.5, method="channels")


# ---- zoo.load and the command line, end to end ---------------------------------------------------

def test_zoo_load_derives_caches_and_rebuilds_a_channel_pruned_variant(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    store = store_with_base(tmp_path_factory, tmp_path)
    with one_torch_thread():
        base = zoo.load(BASE, store=store, progress=False)
        derived = zoo.load(CH50, store=store, progress=False)
        cached = zoo.load(BASE, sparsity=0.5, method="channels", store=store, progress=False)
    assert derived.zoo.source == "derived" and cached.zoo.source == "cache" and cached.zoo.name == CH50
    assert derived.zoo.report.params_total < 0.5 * base.zoo.report.params_total
    assert derived.zoo.report.flops_dense < 0.8 * base.zoo.report.flops_dense
    config = json.loads((cached.zoo.path / "config.json").read_text())
    x = digits_input()
    torch.testing.assert_close(cached(x), derived(x), rtol=1e-5, atol=1e-5)
    plain = timm_rebuild(BASE, config["architecture"], cached.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), cached.state_dict().values()))
    # the same weights; copied (plain) vs assigned from the file (zoo.load): float rounding may differ
    torch.testing.assert_close(plain(x), cached(x), rtol=1e-5, atol=1e-5)

    from zoo.cli import main

    result = CliRunner().invoke(main, ["compress", BASE, "--method", "channels", "--sparsity", "0.5"],
                                env=store_env(store))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith(f"{CH50}: cache at ")

    out = tmp_path / "export" / "ch50.safetensors"  # a dense export carries its pruned architecture beside it
    result = CliRunner().invoke(main, ["export", CH50, "--out", str(out)], env=store_env(store))
    assert result.exit_code == 0, result.output
    architecture = json.loads(out.with_suffix(".architecture.json").read_text())
    assert "adapt_model_from_string" in result.output and architecture == config["architecture"]
    from safetensors.torch import load_file

    plain = adapt_model_from_string(timm.create_model("test_resnet", **get_entry(BASE).model_kwargs),
                                    architecture["timm_pruned"])
    plain.load_state_dict(load_file(out))  # strict: every tensor and shape fits
