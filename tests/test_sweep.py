"""The main job, `zoo.sweep.run_sweep` (and `zoo sweep` / `zoo list` over what it made): every variant
derived once, measured, carded with the family plot and published to the local hub; a re-run finds
everything and changes nothing. Uses the tiny `test_resnet.zoo_digits`, trained for one epoch."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard
from PIL import Image

import zoo
from tiny_zoo import BASE, one_torch_thread, refuse_derivation, store_env, store_with_base
from zoo.cli import main
from zoo.compress.checkpoint import load_checkpoint
from zoo.compress.recipe import Recipe
from zoo.errors import InvalidArgumentError
from zoo.evaluate import VariantReport
from zoo.model_cards import metric_spec, result_name
from zoo.store import Store
from zoo.sweep import SweepPlan, SweepResult, run_sweep

PLAN = SweepPlan(base=BASE, sparsities=(0.5, 0.9), oneshot=(0.9,), structured=(0.5,), int8=True,
                 int8_sparsities=(0.9,), low_bit=("w4",))
NAMES = [BASE, f"{BASE}_gmp50", f"{BASE}_gmp90", f"{BASE}_os90", f"{BASE}_ch50", f"{BASE}_int8",
         f"{BASE}_gmp90_int8", f"{BASE}_w4"]
REPO_FILES = {"config.json", "model.safetensors", "report.json", "README.md", "accuracy_vs_flops.png",
              "accuracy_vs_latency.png"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Swept:
    store: Store
    result: SweepResult
    cards_dir: Path
    applied: list[tuple[str, ...]]  # the step types of every Recipe.apply call during the sweep, in order


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    root = tmp_path_factory.mktemp("sweep")
    store = store_with_base(tmp_path_factory, root)
    applied: list[tuple[str, ...]] = []
    original_apply = Recipe.apply

    def spy(self: Recipe, model: torch.nn.Module, context: object = None) -> torch.nn.Module:
        applied.append(tuple(type(step).__name__ for step in self.steps))
        return original_apply(self, model, context)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Recipe, "apply", spy)
        result = run_sweep(PLAN, store=store, cards_dir=root / "cards", progress=False)
    return Swept(store, result, root / "cards", applied)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def repo(name: str) -> str:
    return f"zoo/{name}"


def test_plan_names_every_variant_and_refuses_duplicates() -> None:
    assert [spec.name for spec in PLAN.specs] == NAMES
    with pytest.raises(InvalidArgumentError, match="build test_resnet.zoo_digits_gmp90 more than once"):
        SweepPlan(base=BASE, sparsities=(0.9, 0.9))
    with pytest.raises(InvalidArgumentError, match="build test_resnet.zoo_digits_int8 more than once"):
        SweepPlan(base=BASE, sparsities=(0.5,), int8_sparsities=(0.0,))  # int8 on 0% is plain int8


@pytest.mark.slow
def test_every_variant_is_published_with_its_files(swept: Swept) -> None:
    hub = swept.store.hub
    assert hub.list_repos() == sorted(repo(name) for name in NAMES)
    assert swept.result.revisions == {name: hub.revisions(repo(name))[-1] for name in NAMES}
    for name, report in zip(NAMES, swept.result.family.reports, strict=True):
        assert report.name == name
        assert len(hub.revisions(repo(name))) == 1
        snapshot = hub.snapshot(repo(name))
        expected = REPO_FILES if name == BASE else REPO_FILES | {"recipe.json"}
        assert {p.name for p in snapshot.iterdir()} == expected, name
        config = json.loads((snapshot / "config.json").read_text())
        assert config["name"] == name and config["base_model"] == BASE
        assert VariantReport.load(snapshot / "report.json").to_dict() == report.to_dict()
        if name != BASE:
            recipe = Recipe.from_json((snapshot / "recipe.json").read_text())
            assert recipe.to_list() == config["recipe"] == report.recipe


@pytest.mark.slow
def test_cards_parse_back_to_the_measured_metrics(swept: Swept) -> None:
    hub = swept.store.hub
    for name in NAMES:
        snapshot = hub.snapshot(repo(name))
        report = VariantReport.load(snapshot / "report.json")
        card = ModelCard.load(snapshot / "README.md")
        assert card.data.model_name == name
        got = {result.metric_name: result.metric_value for result in card.data.eval_results}
        want = {result_name(metric_spec(key), report.metric_average): value for key, value in report.metrics.items()}
        assert set(want) == {"top-1 accuracy (average=micro)", "top-5 accuracy (average=micro)"}
        assert got == want, name  # exact floats, not rounded
        assert (card.data.base_model is None) == (name == BASE)
    base_text = (hub.snapshot(repo(BASE)) / "README.md").read_text()
    for name in NAMES:
        assert f"`{name}`" in base_text
    assert "](accuracy_vs_flops.png)" in base_text


@pytest.mark.slow
def test_plot_is_a_png_in_every_repo_and_card_folder(swept: Swept) -> None:
    plots = [swept.store.hub.snapshot(repo(name)) / "accuracy_vs_flops.png" for name in NAMES]
    plots += [swept.cards_dir / name / "accuracy_vs_flops.png" for name in NAMES]
    for plot in plots:
        assert plot.read_bytes()[:8] == PNG_MAGIC, plot
        with Image.open(plot) as image:
            assert image.format == "PNG" and min(image.size) >= 200


@pytest.mark.slow
def test_cards_dir_holds_every_card(swept: Swept) -> None:
    assert sorted(swept.result.cards_written) == sorted(swept.cards_dir / name / "README.md" for name in NAMES)
    for name in NAMES:
        published = swept.store.hub.snapshot(repo(name)) / "README.md"
        assert (swept.cards_dir / name / "README.md").read_text() == published.read_text()


@pytest.mark.slow
def test_rerun_derives_nothing_and_makes_no_revision(swept: Swept, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_derivation(monkeypatch)
    hub = swept.store.hub
    before = {repo_id: hub.revisions(repo_id) for repo_id in hub.list_repos()}
    again = run_sweep(PLAN, store=swept.store, progress=False)
    assert {repo_id: hub.revisions(repo_id) for repo_id in hub.list_repos()} == before
    assert again.revisions == swept.result.revisions
    assert [r.to_dict() for r in again.family.reports] == [r.to_dict() for r in swept.result.family.reports]


@pytest.mark.slow
def test_cli_sweep_rerun_publishes_the_same_revisions(swept: Swept, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_derivation(monkeypatch)
    args = ["sweep", BASE, "--sparsity", "0.5", "--sparsity", "0.9", "--oneshot", "0.9", "--low-bit", "w4"]
    result = CliRunner().invoke(main, args, env=store_env(swept.store))
    assert result.exit_code == 0, result.output
    for name, revision in swept.result.revisions.items():
        assert f"published {name} -> {swept.store.hub.root} @ {revision[:12]}" in result.stdout
    rows = [line.split()[0] for line in result.stdout.splitlines()[2:2 + len(NAMES)]]
    assert rows == NAMES
    assert all(len(swept.store.hub.revisions(repo(name))) == 1 for name in NAMES)


@pytest.mark.slow
def test_published_variant_loads_from_the_hub(swept: Swept, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_derivation(monkeypatch)
    name = f"{BASE}_gmp90"
    model = zoo.load(name, store=swept.store, progress=False)
    assert model.zoo.source == "hub" and model.zoo.path == swept.store.hub.snapshot(repo(name))
    (cached,) = swept.store.cached_entries(name)
    expected, _ = load_checkpoint(cached)
    got = model.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_int8_on_sparse_is_quantized_from_the_cached_sparse_parent(swept: Swept) -> None:
    # one Recipe.apply per derived variant, in plan order: the int8-on-sparse one only quantizes
    gmp, oneshot, int8 = "GradualMagnitudePruningConfig", "MagnitudePruningConfig", "Int8PTQConfig"
    assert swept.applied == [(gmp,), (gmp,), (oneshot,), ("ChannelPruningConfig",), (int8,), (int8,), ("QATConfig",)]
    reports = {r.name: r for r in swept.result.family.reports}
    parent, child = reports[f"{BASE}_gmp90"], reports[f"{BASE}_gmp90_int8"]
    assert [step["type"] for step in child.recipe] == [gmp, int8]  # its full recipe is still recorded
    assert child.recipe[0] == parent.recipe[0]
    assert child.params_nonzero <= parent.params_nonzero
    hub = swept.store.hub
    parent_weights, _ = load_checkpoint(hub.snapshot(repo(parent.name)))
    child_weights, _ = load_checkpoint(hub.snapshot(repo(child.name)))
    pruned = [k for k, w in parent_weights.items() if k.endswith(".weight") and w.dim() > 1
              and (w == 0).float().mean() > 0.5]
    assert len(pruned) >= 5
    for key in pruned:  # every weight the parent pruned stays zero in the quantized child
        assert torch.all(child_weights[key][parent_weights[key] == 0] == 0), key


@pytest.mark.slow
def test_cli_list_shows_published_variants_with_filters(swept: Swept) -> None:
    env = store_env(swept.store)

    def listed(*args: str) -> dict[str, tuple[str, ...]]:
        result = CliRunner().invoke(main, ["list", *args], env=env)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["name", "family", "source", "sparsity", "quant", "where"]
        return {line.split()[0]: tuple(line.split()[1:]) for line in lines[1:]}

    everything = listed()
    assert {name for name in everything if name.startswith(BASE)} == set(NAMES)
    assert everything[BASE] == ("resnet", "zoo", "0.00", "-", "registry")
    assert everything[f"{BASE}_gmp90_int8"] == ("resnet", "zoo", "0.90", "int8", "hub")
    assert "resnet50.a1_in1k" in listed("--source", "timm", "--filter", "resnet50.*")
    assert set(listed("--sparsity", "0.9")) == {f"{BASE}_gmp90", f"{BASE}_os90", f"{BASE}_gmp90_int8"}
    assert set(listed("--quant", "int8")) == {f"{BASE}_int8", f"{BASE}_gmp90_int8"}
    assert set(listed("--quant", "none", "--sparsity", "0.9")) == {f"{BASE}_gmp90", f"{BASE}_os90"}
    assert set(listed("--sparsity", "0.5", "--family", "efficientnet")) == set()
