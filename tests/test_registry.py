"""The model registry: every entry builds and runs, timm's catalog entries agree with timm's pretrained
cfg, names follow `arch.tag`, misses list close names, and the generic Registry refuses duplicates."""
from __future__ import annotations

import dataclasses
import re

import pytest
import timm
import torch

import zoo
from zoo.data import describe_dataset
from zoo.entry import DataSpec, InputSpec, ModelEntry, TrainSpec, split_name
from zoo.errors import DuplicateNameError, InvalidArgumentError, UnknownNameError
from zoo.models import FAMILIES, build_model, list_entries, register_entry
from zoo.registry import Registry
from zoo.tasks import task_of

# timm checkpoints the tests and the README use, from timm's catalog (made on demand, not registered)
CATALOGED = ("resnet50.a1_in1k", "mobilenetv2_100.ra_in1k", "efficientnet_b0.ra_in1k", "test_resnet.r160_in1k",
             "test_efficientnet.r160_in1k", "vit_tiny_patch16_224.augreg_in21k", "convnext_atto.d2_in1k")
ENTRIES = list_entries()
UPSTREAM = [zoo.get_entry(name) for name in CATALOGED]


def test_the_registry_holds_zoo_native_entries_and_the_catalog_upstream_ones() -> None:
    assert {e.source for e in ENTRIES} == {"zoo"}
    assert len({e.name for e in ENTRIES}) == len(ENTRIES)
    assert {e.source for e in UPSTREAM} == {"upstream"}
    assert not {e.name for e in UPSTREAM} & {e.name for e in ENTRIES}, "catalog entries are not registered"


def test_every_timm_pretrained_name_is_a_zoo_name() -> None:
    names = timm.list_pretrained()
    entries = list_entries(source="timm")
    assert [e.name for e in entries] == sorted(names) and len(names) > 1000
    assert all(zoo.get_entry(e.name) is e for e in entries[::97]), "one entry per name, made once"
    from zoo.models import family_builder

    assert {family_builder(e) for e in entries} == {family_builder(zoo.get_entry("resnet18.zoo_digits"))}, \
        "every catalog family is built by the vision family's timm builder"
    assert zoo.resolve("resnet50.a1_in1k_os50").base is zoo.get_entry("resnet50.a1_in1k")
    vit = zoo.get_entry("vit_base_patch16_224.augreg2_in21k_ft_in1k")
    assert (vit.family, vit.num_classes, vit.label_set, vit.structured) == ("vision_transformer", 1000, "imagenet-1k", None)
    assert vit.keep_dense == (r"patch_embed\.proj(\..*)?", r"head(\..*)?")
    assert zoo.get_entry("mobilenetv2_100.ra_in1k").family == "mobilenet"


def test_the_timm_catalog_lists_by_wildcard() -> None:
    resnets = {e.name for e in list_entries(source="timm", filter="resnet*")}
    assert "resnet50.a1_in1k" in resnets and all(n.startswith("resnet") for n in resnets)
    assert not any(n.startswith("mobilenet") for n in resnets)
    assert {e.name for e in list_entries(source="timm", filter="*.a1_in1k", family="resnet")} >= {"resnet50.a1_in1k"}
    upstream = list_entries(source="upstream", filter="test_*")
    assert {"test_resnet.r160_in1k", "test_efficientnet.r160_in1k"} <= {e.name for e in upstream}
    assert [e.name for e in list_entries(filter="test_resnet*")] == ["test_resnet.zoo_digits"]


def test_a_timm_feature_extractor_is_listed_but_refused_as_a_classifier(tmp_path) -> None:
    from zoo.errors import UnsupportedModelError
    from zoo.hub import LocalHub
    from zoo.store import Store

    name = next(e.name for e in list_entries(source="timm", filter="vit_*") if e.num_classes == 0)
    assert zoo.info(name)["entry"]["num_classes"] == 0
    with pytest.raises(UnsupportedModelError, match="not an image classifier"):
        zoo.load(name, sparsity=0.5, store=Store(LocalHub(tmp_path / "hub"), tmp_path / "cache"), progress=False)
    assert not (tmp_path / "cache").exists(), "refused before anything is downloaded or written"


def output_tensors(output: object) -> list[torch.Tensor]:
    """Every tensor in a model's output: a tensor, a tuple/list, a dict-like (transformers' outputs) or
    a dataclass."""
    if isinstance(output, torch.Tensor):
        return [output]
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        output = [getattr(output, f.name) for f in dataclasses.fields(output)]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in output_tensors(item)]
    return []


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_entry_builds_and_runs_forward(entry: ModelEntry) -> None:
    model = build_model(entry)
    assert not model.training, "build_model returns the model in eval mode"
    example = task_of(entry).example_input(entry)
    with torch.no_grad():
        output = model(*example) if isinstance(example, tuple) else model(example)
    tensors = [t for t in output_tensors(output) if t.is_floating_point()]
    assert tensors and all(torch.isfinite(t).all() for t in tensors)
    if entry.task == "image-classification":
        assert tuple(example.shape) == entry.input.example_shape(1)
        assert tuple(output.shape) == (1, entry.num_classes)
    assert task_of(entry).describe_example(entry).startswith("one "), "cards say what FLOPs are per"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_entry_and_evaluation_data_set_is_described_for_the_cards(entry: ModelEntry) -> None:
    assert len(entry.description) > 20 and len(describe_dataset(entry.eval_data.name)) > 20


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.compare_with], ids=lambda e: e.name)
def test_compared_models_are_registered_bases_of_the_same_task_and_data(entry: ModelEntry) -> None:
    for name in entry.compare_with:
        other = zoo.get_entry(name)
        assert other.name != entry.name
        assert (other.task, other.eval_data, other.input) == (entry.task, entry.eval_data, entry.input)


@pytest.mark.parametrize("entry", UPSTREAM, ids=lambda e: e.name)
def test_catalog_entries_build_and_run_forward(entry: ModelEntry) -> None:
    test_every_entry_builds_and_runs_forward(entry)


@pytest.mark.parametrize("entry", UPSTREAM, ids=lambda e: e.name)
def test_upstream_entries_match_timm_pretrained_cfg(entry: ModelEntry) -> None:
    cfg = timm.models.get_pretrained_cfg(entry.name)
    assert cfg is not None, f"timm has no pretrained cfg {entry.name}"
    assert (entry.input.channels, *entry.input.size) == tuple(cfg.input_size)
    assert entry.input.mean == pytest.approx(tuple(cfg.mean))
    assert entry.input.std == pytest.approx(tuple(cfg.std))
    assert entry.input.crop_pct == pytest.approx(cfg.crop_pct)
    assert entry.input.interpolation == cfg.interpolation
    assert entry.num_classes == cfg.num_classes
    assert entry.repo_id == cfg.hf_hub_id
    assert entry.keep_dense[0] == re.escape(cfg.first_conv) + r"(\..*)?"
    model = FAMILIES.get(entry.family)(entry)
    assert model.num_classes == cfg.num_classes
    assert model.get_classifier().out_features == cfg.num_classes


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.source == "zoo"], ids=lambda e: e.name)
def test_zoo_native_entries_are_trainable_here(entry: ModelEntry) -> None:
    assert entry.train is not None and entry.train.epochs > 0
    assert entry.train.data.split != entry.eval_data.split, "training must not see the evaluation split"
    if entry.task == "image-classification":
        assert entry.model_kwargs["num_classes"] == entry.num_classes
        assert entry.model_kwargs["in_chans"] == entry.input.channels


def test_list_entries_filters() -> None:
    resnets = list_entries(family="resnet")
    assert resnets and all(e.family == "resnet" for e in resnets)
    assert {e.name for e in list_entries(source="zoo")} == {e.name for e in ENTRIES}
    assert list_entries(task="no-such-task") == []


def test_unknown_name_lists_close_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        zoo.get_entry("resnet18.zoo_digit")
    assert "resnet18.zoo_digits" in info.value.suggestions
    assert "resnet18.zoo_digits" in str(info.value)
    assert info.value.kind == "model"


def test_unknown_family_is_an_unknown_name() -> None:
    entry = dataclasses.replace(zoo.get_entry("test_resnet.zoo_digits"), family="resnett")
    with pytest.raises(UnknownNameError, match="resnet"):
        build_model(entry)


def test_registering_an_entry_twice_is_refused() -> None:
    with pytest.raises(DuplicateNameError):
        register_entry(zoo.get_entry("test_resnet.zoo_digits"))


def test_generic_registry_refuses_duplicates_and_suggests() -> None:
    registry: Registry[int] = Registry("widget")
    registry.register("alpha", 1)
    registry.decorator("beta")(2)
    with pytest.raises(DuplicateNameError, match="widget 'alpha'"):
        registry.register("alpha", 3)
    assert registry.get("alpha") == 1, "a refused duplicate must not replace the first item"
    with pytest.raises(UnknownNameError) as info:
        registry.get("alpah")
    assert info.value.suggestions == ["alpha"]
    assert list(registry) == ["alpha", "beta"] and len(registry) == 2 and "beta" in registry


@pytest.mark.parametrize("name, parts", [
    ("resnet18.zoo_digits", ("resnet18", "zoo_digits")),
    ("resnet50.a1_in1k", ("resnet50", "a1_in1k")),
])
def test_name_grammar_accepts_arch_dot_tag(name: str, parts: tuple[str, str]) -> None:
    assert split_name(name) == parts


@pytest.mark.parametrize("name", [
    "resnet18", "ResNet18.zoo", "resnet18.zoo.digits", "resnet18.", ".zoo", "resnet-18.zoo", "resnet18.zoo digits",
    "resnet18.zoo_digits\n",
])
def test_name_grammar_refuses_other_names(name: str) -> None:
    with pytest.raises(InvalidArgumentError):
        split_name(name)


def _entry(**changes) -> ModelEntry:
    fields = dict(
        name="tiny.zoo_test", family="resnet", task="image-classification", repo_id="zoo/tiny.zoo_test",
        source="zoo", input=InputSpec(1, (8, 8), (0.0,), (1.0,)), num_classes=2, label_set="x",
        eval_data=DataSpec("digits"), train=TrainSpec(DataSpec("digits", "train"), epochs=1),
    )
    return ModelEntry(**{**fields, **changes})


def test_model_entry_enforces_the_grammar_and_a_train_spec_for_zoo_entries() -> None:
    assert _entry().arch == "tiny" and _entry().tag == "zoo_test"
    with pytest.raises(InvalidArgumentError):
        _entry(name="Tiny")
    with pytest.raises(InvalidArgumentError, match="TrainSpec"):
        _entry(train=None)
    assert _entry(source="upstream", train=None).train is None


def test_prune_block_makes_the_default_recipes_prune_blocks() -> None:
    from zoo.compress import (
        BlockPruningConfig, GradualBlockPruningConfig, GradualMagnitudePruningConfig, MagnitudePruningConfig,
    )
    from zoo.variants import default_recipe

    plain, blocked = _entry(keep_dense=("fc",)), _entry(keep_dense=("fc",), prune_block=(16, 1))
    plain_gmp, block_gmp = (default_recipe(e, 0.9, None, "gmp").steps[0] for e in (plain, blocked))
    assert type(plain_gmp) is GradualMagnitudePruningConfig and type(block_gmp) is GradualBlockPruningConfig
    assert block_gmp.block == (16, 1) and block_gmp.keep_dense == ("fc",) and block_gmp.final_sparsity == 0.9
    assert {f: getattr(block_gmp, f) for f in ("epochs", "lr", "scope", "optimizer")} == {
        f: getattr(plain_gmp, f) for f in ("epochs", "lr", "scope", "optimizer")}, "the same schedule"
    plain_os, block_os = (default_recipe(e, 0.9, None, "oneshot").steps[0] for e in (plain, blocked))
    assert type(plain_os) is MagnitudePruningConfig and type(block_os) is BlockPruningConfig
    assert block_os.block == (16, 1) and block_os.scope == plain_os.scope == "global"
    with pytest.raises(InvalidArgumentError, match="block"):
        _entry(prune_block=(0, 4))


def test_training_identity_keeps_only_what_decides_the_trained_weights() -> None:
    entry = _entry()
    same_weights = dataclasses.replace(entry, description="reworded", compare_with=("other.zoo_test",),
                                       keep_dense=("fc",), prune_block=(4, 4), license="mit", revision="v2")
    assert same_weights.training_identity() == entry.training_identity(), "the trained base stays cached"
    longer = dataclasses.replace(entry, train=dataclasses.replace(entry.train, epochs=2))
    wider = dataclasses.replace(entry, model_kwargs={"width": 2})
    assert longer.training_identity() != entry.training_identity() != wider.training_identity()
