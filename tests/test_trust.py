"""Measurements you can trust: reproducible training, the caller's random stream left alone, no silent
fallbacks, and families that never mix variants of different base weights."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
from tiny_zoo import BASE, SHORT, one_torch_thread, store_env, store_with_base
from zoo.catalog import catalog, family_models
from zoo.cli import main
from zoo.entry import DataSpec, TrainSpec
from zoo.native import train_base_model
from zoo.options import TrainOptions
from zoo.variants import default_recipe, resolve


def test_training_a_tiny_entry_twice_gives_identical_weights() -> None:
    """"Seeded, reproducible" as the README states it: same machine, same lock, same thread count."""
    entry = zoo.get_entry(BASE)
    with one_torch_thread():
        first = train_base_model(entry, progress=False, options=TrainOptions(epochs=1)).state_dict()
        second = train_base_model(entry, progress=False, options=TrainOptions(epochs=1)).state_dict()
    untrained = zoo.models.build_model(entry).state_dict()
    assert set(first) == set(second)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["fc.weight"], untrained["fc.weight"]), "training changed nothing"


def test_load_leaves_the_callers_random_stream_alone(tmp_path_factory: pytest.TempPathFactory,
                                                      tmp_path: Path) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(8)
    store = store_with_base(tmp_path_factory, tmp_path)
    torch.manual_seed(1234)
    with one_torch_thread():
        zoo.load(BASE, sparsity=0.5, method="gmp", store=store, progress=False)  # trains (fine-tunes) here
        train_base_model(zoo.get_entry(BASE), progress=False, options=TrainOptions(epochs=1))
    assert torch.equal(torch.rand(8), expected)


def test_default_recipe_refuses_what_it_does_not_know() -> None:
    entry = zoo.get_entry(BASE)
    with pytest.raises(zoo.InvalidArgumentError, match="unknown pruning method 'magnitude'"):
        default_recipe(entry, 0.5, None, "magnitude")
    with pytest.raises(zoo.InvalidArgumentError, match="unknown quant scheme 'int4'"):
        default_recipe(entry, 0.5, "int4", "oneshot")
    with pytest.raises(zoo.InvalidArgumentError, match="sparsity"):
        default_recipe(entry, 1.5, None, "oneshot")


def test_a_variant_spec_takes_no_further_compression_arguments(tmp_path: Path) -> None:
    spec = resolve(BASE, sparsity=0.5, method="oneshot")
    for extra in ({"sparsity": 0.9}, {"quant": "int8"}, {"method": "gmp"}):
        with pytest.raises(zoo.InvalidArgumentError, match="already says how to compress"):
            zoo.load(spec, store=zoo.store.Store(cache_root=tmp_path / "c"), **extra)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("field, value", [("epochs", 0), ("epochs", 2.5), ("batch_size", 0), ("lr", 0.0)])
def test_a_train_spec_refuses_nonsense(field: str, value: object) -> None:
    with pytest.raises(zoo.InvalidArgumentError, match=field):
        TrainSpec(data=DataSpec("digits", "train"), **{"epochs": 1, field: value})


def test_sweep_refuses_contradicting_flags(tmp_path: Path) -> None:
    env = {"ZOO_HUB": str(tmp_path / "hub"), "ZOO_CACHE": str(tmp_path / "cache")}
    for args in (["--no-oneshot", "--oneshot", "0.5"], ["--no-int8", "--int8-sparsity", "0.5"]):
        result = CliRunner().invoke(main, ["sweep", BASE, *args], env=env)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and "contradict" in result.output
    assert not (tmp_path / "cache").exists()


def test_listing_skips_custom_recipes_and_unknown_models_but_raises_on_nonsense(tmp_path: Path) -> None:
    store = zoo.store.Store(hub=zoo.hub.LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache")
    for name in (f"{BASE}_r0123abcd", "gone_arch.zoo_digits_os50"):
        (store.cache_root / name / "key").mkdir(parents=True)
        (store.cache_root / name / "key" / "config.json").write_text("{}")
    names = {row.name for row in catalog(store)}
    assert f"{BASE}_r0123abcd" not in names and "gone_arch.zoo_digits_os50" not in names
    assert BASE in names
    (store.cache_root / f"{BASE}_os150" / "key").mkdir(parents=True)  # a sparsity of 150 %
    (store.cache_root / f"{BASE}_os150" / "key" / "config.json").write_text("{}")
    with pytest.raises(zoo.InvalidArgumentError, match="sparsity"):
        catalog(store)


def test_a_family_never_mixes_variants_of_other_base_weights(tmp_path_factory: pytest.TempPathFactory,
                                                             tmp_path: Path) -> None:
    store = store_with_base(tmp_path_factory, tmp_path)
    with one_torch_thread():
        old = zoo.load(BASE, sparsity=0.5, method="oneshot", store=store, progress=False)
        # The base retrained (other options: other weights), and only one-shot 80 % derived from it.
        retrained = dataclasses.replace(store, options=dataclasses.replace(SHORT, epochs=2))
        new = zoo.load(BASE, sparsity=0.8, method="oneshot", store=retrained, progress=False)
        with pytest.warns(UserWarning, match=f"{BASE}_os50"):
            family = family_models(BASE, retrained)
        assert [m.zoo.name for m in family] == [BASE, new.zoo.name]
        with pytest.warns(UserWarning, match=f"{BASE}_os80"):
            family = family_models(BASE, store)  # the original base: its own variant, not the other's
    assert [m.zoo.name for m in family] == [BASE, old.zoo.name] and family[1].zoo.path == old.zoo.path
    assert store_env(store)["ZOO_TRAIN_OPTIONS"] == SHORT.to_text()


def test_the_measured_runtimes_are_an_explicit_option() -> None:
    assert TrainOptions().measured_runtimes == ("onnxruntime", "openvino")
    options = TrainOptions(epochs=1, graph_runtimes=("openvino",))
    assert options.to_text() == "epochs=1,latency_seconds=0.5,graph_runtimes=openvino"
    assert TrainOptions.parse(options.to_text()) == options and options.cache_key() != ""
    assert TrainOptions.parse("graph_runtimes=none").measured_runtimes == ()
    for bad in (("tensorrt",), ("openvino", "openvino"), ["openvino"]):
        with pytest.raises(zoo.InvalidArgumentError, match="graph_runtimes"):
            TrainOptions(graph_runtimes=bad)
