"""Recipes as data: every registered config type round-trips, recipes round-trip through JSON and YAML,
and anything unknown, of another version or invalid is refused with a typed error."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import yaml
from torch import nn

from zoo.compress import (
    CONFIG_TYPES, GradualMagnitudePruningConfig, HANDLERS, Int8PTQConfig, MagnitudePruningConfig, Recipe,
    RecipeContext, handles, register_config,
)
from zoo.compress.block import BlockPruningConfig, GradualBlockPruningConfig
from zoo.compress.config import CompressionConfig
from zoo.compress.distill import DistillationConfig
from zoo.compress.es_masks import ESMaskConfig
from zoo.compress.lowbit import QATConfig
from zoo.compress.lowbit_ptq import LowBitPTQConfig
from zoo.compress.recipe import RECIPE_FORMAT_VERSION
from zoo.compress.nm import GradualNMPruningConfig, NMPruningConfig
from zoo.compress.sparse_training import SparseTrainingConfig
from zoo.compress.snap import SnApTrainingConfig
from zoo.compress.structured import ChannelPruningConfig, HeadPruningConfig
from zoo.errors import DuplicateNameError, InvalidArgumentError, RecipeError, UnknownNameError

# One non-default example per registered config type: a new config type must add one here.
EXAMPLES: dict[str, CompressionConfig] = {
    "MagnitudePruningConfig": MagnitudePruningConfig(sparsity=0.75, scope="layer", keep_dense=(r"conv1(\..*)?", "fc")),
    "GradualMagnitudePruningConfig": GradualMagnitudePruningConfig(
        final_sparsity=0.9, epochs=3, lr=0.01, initial_sparsity=0.1, begin_fraction=0.1, end_fraction=0.8,
        frequency=5, exponent=2.0, scope="global", keep_dense=("fc",), weight_decay=0.0,
    ),
    "Int8PTQConfig": Int8PTQConfig(calibration_batches=4, observer="percentile", percentile=99.9, keep_fp=("fc",)),
    "BlockPruningConfig": BlockPruningConfig(sparsity=0.5, block=(16, 1), scope="global", layers=("recurrent",)),
    "GradualBlockPruningConfig": GradualBlockPruningConfig(
        final_sparsity=0.9, block=(4, 4), epochs=3, lr=0.01, initial_sparsity=0.1, begin_fraction=0.1,
        end_fraction=0.8, frequency=5, exponent=2.0, scope="global", layers=("recurrent",), keep_dense=("fc",),
        weight_decay=0.0, optimizer="adamw",
    ),
    "ChannelPruningConfig": ChannelPruningConfig(sparsity=0.5, epochs=4, lr=0.01, steps=3, round_to=4,
                                                 keep=(r"conv1(\..*)?", "fc"), optimizer="adamw"),
    "ESMaskConfig": ESMaskConfig(sparsity=0.95, epochs=3, lr=0.01, population=16, mask_lr=0.5, mask_optimizer="sgd",
                                 fixed_fraction=0.2, initial_sparsity=0.1, end_fraction=0.6, scope="global",
                                 keep_dense=("fc",), weight_decay=0.0, optimizer="adamw", vectorized=False),
    "HeadPruningConfig": HeadPruningConfig(sparsity=0.25, ffn_sparsity=0.5, epochs=2, lr=1e-3, steps=2, round_to=16),
    "SparseTrainingConfig": SparseTrainingConfig(sparsity=0.95, method="set", distribution="uniform", epochs=3, lr=0.05,
                                                 delta_t=20, drop_fraction=0.5, end_fraction=0.5, keep_dense=("fc",),
                                                 weight_decay=0.0, optimizer="adamw", from_scratch=False),
    "NMPruningConfig": NMPruningConfig(n=1, m=4, keep_dense=(r"conv1(\..*)?",)),
    "GradualNMPruningConfig": GradualNMPruningConfig(n=2, m=8, epochs=3, lr=0.01, begin_fraction=0.1, end_fraction=0.8,
                                                     frequency=5, exponent=2.0, keep_dense=("fc",), weight_decay=0.0,
                                                     optimizer="adamw"),
    "SnApTrainingConfig": SnApTrainingConfig(n=2, lr=3e-3, epochs=2, update_every=4, optimizer="sgd"),
    "QATConfig": QATConfig(bits_w="ternary", bits_a=2, granularity="group", group_size=16, ste="relu",
                           weight_update="bcgd", rho=1e-5, epochs=2, lr=0.05, weight_decay=1e-4, momentum=0.0,
                           optimizer="adamw", calibration_batches=2, act_percentile=99.0, keep_fp=("fc",)),
    "DistillationConfig": DistillationConfig(teacher="resnet18.zoo_digits", temperature=2.0, alpha=0.9,
                                             logits_loss="mse", hidden=(r"layer\d",), hidden_weight=0.5),
    "LowBitPTQConfig": LowBitPTQConfig(bits_w=2, bits_a=8, granularity="channel", group_size=0, symmetric=False,
                                       rounding="nearest", damp=0.1, calibration_batches=4, act_percentile=99.0,
                                       keep_fp=("fc",)),
}


def test_every_registered_config_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(CONFIG_TYPES), "add an example instance of each new config type to EXAMPLES"
    for name, example in EXAMPLES.items():
        assert type(example) is CONFIG_TYPES.get(name)


@pytest.mark.parametrize("type_name", list(CONFIG_TYPES))
def test_config_round_trips_through_dict_and_json(type_name: str) -> None:
    config = EXAMPLES[type_name]
    data = config.to_dict()
    assert data["type"] == type_name and data["version"] == type(config).VERSION
    assert CompressionConfig.from_dict(data) == config
    assert CompressionConfig.from_dict(json.loads(json.dumps(data))) == config
    defaults_only = CompressionConfig.from_dict({**data, "config": {
        k: v for k, v in data["config"].items() if k in _required_fields(type(config))}})
    assert type(defaults_only) is type(config)


def _required_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


@pytest.mark.parametrize("type_name", list(CONFIG_TYPES))
def test_config_with_an_unknown_field_is_refused(type_name: str) -> None:
    data = EXAMPLES[type_name].to_dict()
    data["config"]["sparsityy"] = 0.5
    with pytest.raises(RecipeError, match="sparsityy"):
        CompressionConfig.from_dict(data)


@pytest.mark.parametrize("type_name", list(CONFIG_TYPES))
def test_config_of_another_version_is_refused(type_name: str) -> None:
    data = EXAMPLES[type_name].to_dict()
    data["version"] += 1
    with pytest.raises(RecipeError, match="version"):
        CompressionConfig.from_dict(data)


@pytest.mark.parametrize("type_name", list(CONFIG_TYPES))
def test_every_config_type_has_its_handler(type_name: str) -> None:
    assert type_name in HANDLERS


def full_recipe() -> Recipe:
    return Recipe(tuple(EXAMPLES[name] for name in CONFIG_TYPES))


def test_recipe_round_trips_through_json_and_yaml() -> None:
    recipe = full_recipe()
    assert len(recipe.steps) == len(CONFIG_TYPES)
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    assert Recipe.from_yaml(recipe.to_yaml()).to_json() == recipe.to_json()
    assert Recipe.from_json(Recipe().to_json()) == Recipe()
    assert json.loads(recipe.to_json())["recipe_version"] == RECIPE_FORMAT_VERSION
    assert yaml.safe_load(recipe.to_yaml())["recipe_version"] == RECIPE_FORMAT_VERSION


def test_recipe_steps_are_a_tuple_of_configs() -> None:
    assert Recipe([EXAMPLES["Int8PTQConfig"]]).steps == (EXAMPLES["Int8PTQConfig"],)
    with pytest.raises(RecipeError, match="compression configs"):
        Recipe(({"type": "Int8PTQConfig"},))


def test_describe_names_every_step() -> None:
    text = full_recipe().describe()
    for name in CONFIG_TYPES:
        assert name in text


def _document(steps: list[dict], version: object = RECIPE_FORMAT_VERSION) -> str:
    return json.dumps({"recipe_version": version, "steps": steps})


def test_unknown_config_type_is_refused_with_close_names() -> None:
    step = {"type": "MagnitudePruningConfg", "version": 1, "config": {"sparsity": 0.5}}
    with pytest.raises((UnknownNameError, RecipeError)) as info:
        Recipe.from_json(_document([step]))
    assert "MagnitudePruningConfig" in str(info.value)


@pytest.mark.parametrize("version", [0, 2, None, "1"])
def test_recipe_version_mismatch_is_refused(version: object) -> None:
    with pytest.raises(RecipeError, match="recipe_version"):
        Recipe.from_json(_document(full_recipe().to_list(), version))


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"recipe_version": 1}', '{"recipe_version": 1, "steps": {}}',
    '{"recipe_version": 1, "steps": [{"type": "Int8PTQConfig"}]}',
    '{"recipe_version": 1, "steps": [{"type": "Int8PTQConfig", "version": 1, "config": []}]}',
    '{"recipe_version": 1, "steps": [{"type": "Int8PTQConfig", "version": 1, "config": {"keep_fp": [{"a": 1}]}}]}',
    '{"recipe_version": 1, "steps": [{"type": "MagnitudePruningConfig", "version": 1, "config": {}}]}',
])
def test_malformed_recipe_documents_are_refused(text: str) -> None:
    with pytest.raises(RecipeError):
        Recipe.from_json(text)


def test_malformed_yaml_is_refused() -> None:
    with pytest.raises(RecipeError):
        Recipe.from_yaml("steps: [unclosed")
    with pytest.raises(RecipeError):
        Recipe.from_yaml("recipe_version: 2\nsteps: []\n")


@pytest.mark.parametrize("make", [
    lambda: MagnitudePruningConfig(sparsity=1.5),
    lambda: MagnitudePruningConfig(sparsity=-0.1),
    lambda: MagnitudePruningConfig(sparsity=1.0),
    lambda: MagnitudePruningConfig(sparsity=math.nan),
    lambda: MagnitudePruningConfig(sparsity=True),
    lambda: MagnitudePruningConfig(sparsity="0.5"),
    lambda: MagnitudePruningConfig(sparsity=0.5, scope="x"),
    lambda: MagnitudePruningConfig(sparsity=0.5, keep_dense=("conv1[",)),
    lambda: MagnitudePruningConfig(sparsity=0.5, keep_dense="fc"),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.9, epochs=0),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.9, epochs=2.5),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.9, frequency=0),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.9, lr=0.0),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.9, lr=math.inf),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.9, weight_decay=-1e-4),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.5, initial_sparsity=0.6),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.9, begin_fraction=0.5, end_fraction=0.5),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.9, end_fraction=1.5),
    lambda: GradualMagnitudePruningConfig(final_sparsity=0.9, scope="x"),
    lambda: GradualMagnitudePruningConfig(final_sparsity=1.5),
    lambda: Int8PTQConfig(observer="x"),
    lambda: Int8PTQConfig(calibration_batches=0),
    lambda: Int8PTQConfig(calibration_batches=1.5),
    lambda: Int8PTQConfig(percentile=50.0),
    lambda: Int8PTQConfig(percentile=100.5),
    lambda: Int8PTQConfig(percentile="99"),
    lambda: Int8PTQConfig(keep_fp=("(",)),
], ids=[
    "sparsity-1.5", "sparsity-neg", "sparsity-1", "sparsity-nan", "sparsity-bool", "sparsity-str", "scope-x",
    "bad-regex", "patterns-not-tuple", "epochs-0", "epochs-float", "frequency-0", "lr-0", "lr-inf",
    "wd-neg", "initial-above-final", "empty-window", "end-above-1", "gmp-scope-x", "final-1.5",
    "observer-x", "calib-0", "calib-float", "percentile-50", "percentile-100.5", "percentile-str", "keep-fp-regex",
])
def test_invalid_values_are_refused_on_construction(make) -> None:
    with pytest.raises(RecipeError):
        make()


def test_invalid_values_in_a_document_are_refused_too() -> None:
    data = EXAMPLES["MagnitudePruningConfig"].to_dict()
    data["config"]["sparsity"] = 1.5
    with pytest.raises(RecipeError, match="sparsity"):
        Recipe.from_json(_document([data]))


def test_a_second_handler_for_a_config_type_is_refused() -> None:
    before = HANDLERS.get("MagnitudePruningConfig")
    with pytest.raises(DuplicateNameError):
        handles(MagnitudePruningConfig)(lambda model, config, context: model)
    assert HANDLERS.get("MagnitudePruningConfig") is before


def test_a_second_config_type_of_the_same_name_is_refused() -> None:
    with pytest.raises(DuplicateNameError):
        @register_config
        @dataclasses.dataclass(frozen=True)
        class Int8PTQConfig(CompressionConfig):  # noqa: F811  (same name on purpose)
            bits: int = 8
    assert CONFIG_TYPES.get("Int8PTQConfig").__module__ == "zoo.compress.quantization"


def test_recipe_applies_its_steps_in_order() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    recipe = Recipe((MagnitudePruningConfig(sparsity=0.5, scope="layer"), Int8PTQConfig(calibration_batches=2)))
    context = RecipeContext(calibration_batches=lambda: iter([torch.randn(8, 16) for _ in range(3)]), progress=False)
    out = recipe.apply(model, context)
    for index in (0, 2):
        layer = out[index]
        assert type(layer).__name__ == "QuantLinear"
        assert int((layer.weight == 0).sum()) == layer.weight.numel() // 2, "pruning zeros stay zero on the int8 grid"


def test_a_step_without_the_data_it_needs_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(RecipeError, match="calibration_batches"):
        Recipe((Int8PTQConfig(),)).apply(model, RecipeContext(progress=False))
    with pytest.raises(RecipeError, match="train_batches, loss_fn"):
        Recipe((GradualMagnitudePruningConfig(final_sparsity=0.5),)).apply(model, RecipeContext(progress=False))


def test_sparse_training_variant_names_parse_back_and_build_the_default_recipe() -> None:
    from zoo.compress.distributions import DISTRIBUTIONS
    from zoo.compress.sparse_training import SparseTrainingConfig
    from zoo.variants import DISTRIBUTIONS as NAMED_DISTRIBUTIONS
    from zoo.variants import parse_variant_name, resolve

    assert set(NAMED_DISTRIBUTIONS) == set(DISTRIBUTIONS)
    base = "test_resnet.zoo_digits"
    cases = {
        f"{base}_rigl90": dict(method="rigl", sparsity=0.9),
        f"{base}_set95uni": dict(method="set", sparsity=0.95, distribution="uniform"),
        f"{base}_static97p5erx3": dict(method="static", sparsity=0.975, distribution="er", budget=3),
        f"{base}_rigl90x2_int8": dict(method="rigl", sparsity=0.9, budget=2, quant="int8"),
    }
    for name, kwargs in cases.items():
        assert parse_variant_name(name) == (base, kwargs)
        spec = resolve(name)
        assert spec.name == name and resolve(base, **{k: v for k, v in kwargs.items()
                                                     if k in ("sparsity", "quant", "method")}).method == kwargs["method"]
    spec = resolve(f"{base}_static97p5erx3")
    (step,) = spec.recipe().steps
    entry = spec.base
    assert step == SparseTrainingConfig(
        sparsity=0.975, method="static", distribution="er", epochs=3 * entry.train.epochs, lr=entry.train.lr,
        delta_t=None, keep_dense=entry.keep_dense, weight_decay=entry.train.weight_decay,
        optimizer=entry.train.optimizer, from_scratch=True)
    assert [type(s).__name__ for s in resolve(f"{base}_rigl90x2_int8").recipe().steps] == [
        "SparseTrainingConfig", "Int8PTQConfig"]
    assert resolve(f"{base}_rigl90x2_int8").sparse_parent.name == f"{base}_rigl90x2"
    with pytest.raises(InvalidArgumentError, match="sparse training"):
        resolve(f"{base}_gmp90uni")
    with pytest.raises(UnknownNameError):
        resolve(f"{base}_rigl90x1")  # not a canonical name: x1 is the default budget
