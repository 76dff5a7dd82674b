"""The `zoo` command line through click's CliRunner: output, exit codes and one-line typed errors, and
what each command leaves behind (variants, cards, hub revisions, exported files, pulled repos, uploads).
Uses the tiny `test_resnet.zoo_digits` (trained one epoch) and its one-shot 50% variant (no training)."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from click.testing import CliRunner, Result
from huggingface_hub import CommitOperationAdd, ModelCard

import zoo
import zoo.hub.remote as remote
import zoo.publish
from olah_server import OlahServer
from tiny_zoo import BASE, SHORT, one_torch_thread, refuse_derivation, store_env, store_with_base
from zoo.catalog import family_models
from zoo.cli import main
from zoo.compress.checkpoint import load_checkpoint
from zoo.errors import CardValidationError
from zoo.evaluate import VariantReport, pareto_front
from zoo.hub import LocalHub
from zoo.hub.local import folder_files
from zoo.model_cards import validate_card
from zoo.publish import family_cards, push_variant
from zoo.store import Store

OS50 = f"{BASE}_os50"
REPO_FILES = {"config.json", "model.safetensors", "report.json", "README.md", "accuracy_vs_flops.png",
              "accuracy_vs_latency.png", "recipe.json"}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The base (trained) and its one-shot 50% variant, cached; the hub is empty."""
    store = store_with_base(tmp_path_factory, tmp_path_factory.mktemp("cli"))
    zoo.load(BASE, sparsity=0.5, method="oneshot", store=store, progress=False)
    yield store


def run(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, args, env=env)


def ok(args: list[str], env: dict[str, str]) -> str:
    result = run(args, env)
    assert result.exit_code == 0, result.output
    return result.stdout


def one_line_error(result: Result, kind: str) -> str:
    """The CLI's contract for bad input: exit status 1, nothing on stdout, one `Error: Kind: ...` line."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {kind}: "), result.stderr
    return lines[0]


def table_rows(output: str) -> dict[str, list[str]]:
    """Rows of `report_table`, by variant name (the starred ones end with '*')."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    assert lines[start].split() == ["variant", "top1", "MFLOPs", "nz", "MFLOPs", "nz", "params", "bytes", "eager", "ms",
                                    "fastest", "ms", "(runtime)"]
    rows = {}
    for line in lines[start + 2:]:
        if not line or line.startswith("* "):
            break
        rows[line.split()[0]] = line.split()[1:]
    return rows


def cached_report(store: Store, name: str) -> VariantReport:
    (folder,) = store.cached_entries(name)
    return VariantReport.load(folder / "report.json")


# ---- info and errors -------------------------------------------------------------------------------

def test_info_prints_json_for_base_and_variant_names(tmp_path: Path) -> None:
    env = store_env(Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache"))
    base = json.loads(ok(["info", BASE], env))
    assert base["name"] == BASE and base["repo_id"] == f"zoo/{BASE}" and base["recipe"] is None
    assert base["entry"]["family"] == "resnet" and base["entry"]["model_kwargs"] == {"num_classes": 10, "in_chans": 1}
    variant = json.loads(ok(["info", f"{BASE}_gmp90_int8"], env))
    assert (variant["sparsity"], variant["quant"]) == (0.9, "int8")
    assert variant["repo_id"] == f"zoo/{BASE}_gmp90_int8"
    assert [step["type"] for step in variant["recipe"]] == ["GradualMagnitudePruningConfig", "Int8PTQConfig"]
    assert not (tmp_path / "hub").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", ["test_resnet.zoo_digit", "test_resnet.zoo_digitz_gmp90"])
def test_info_of_an_unknown_name_is_one_line_with_close_names(name: str, tmp_path: Path) -> None:
    result = run(["info", name], store_env(Store(LocalHub(tmp_path / "hub"), tmp_path / "cache")))
    line = one_line_error(result, "UnknownNameError")
    assert "did you mean" in line and BASE in line


def test_a_multi_line_error_message_is_printed_on_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("steps: [a: b\n  c: {\n")  # PyYAML explains this over several lines
    env = store_env(Store(LocalHub(tmp_path / "h"), tmp_path / "c"))
    line = one_line_error(run(["compress", BASE, "--recipe", str(recipe)], env), "RecipeError")
    assert "not valid YAML" in line and 'line 1, column 8' in line


def test_compress_refuses_a_sparsity_out_of_range(tmp_path: Path) -> None:
    result = run(["compress", BASE, "--sparsity", "1.5"], store_env(Store(LocalHub(tmp_path / "h"), tmp_path / "c")))
    line = one_line_error(result, "InvalidArgumentError")
    assert "1.5" in line and "[0, 1)" in line
    assert not (tmp_path / "c").exists()


# ---- compress, list, evaluate, card ------------------------------------------------------------------

def test_compress_derives_then_finds_the_variant_and_prints_its_table(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, store: Store) -> None:
    fresh = store_with_base(tmp_path_factory, tmp_path)  # only the base: the variant is derived here
    env = store_env(fresh)
    args = ["compress", BASE, "--sparsity", "0.5", "--method", "oneshot"]
    first = ok(args, env)
    assert first.splitlines()[0].startswith(f"{OS50}: derived at {fresh.cache_root / OS50}")
    report = cached_report(fresh, OS50)
    row = table_rows(first)[OS50]
    assert row[0] == f"{100 * report.metrics['top1']:.2f}"
    assert row[3] == f"{report.params_nonzero:,}" and row[4] == f"{report.bytes_on_disk:,}"
    assert row[5:7] == [f"{report.latency_ms:.2f}", f"{report.latency_ms:.2f}"] and row[7] == "(torch)"
    assert report.params_nonzero < cached_report(fresh, BASE).params_nonzero * 0.6
    second = ok(args, env)
    assert second.splitlines()[0].startswith(f"{OS50}: cache at ")
    assert second.splitlines()[1:] == first.splitlines()[1:]


def test_list_shows_cached_variants_and_filters(store: Store) -> None:
    env = store_env(store)

    def listed(*args: str) -> dict[str, list[str]]:
        lines = ok(["list", *args], env).splitlines()
        return {line.split()[0]: line.split()[1:] for line in lines[1:]}

    everything = listed()
    assert everything[OS50] == ["resnet", "zoo", "0.50", "-", "cache"]
    assert everything[BASE] == ["resnet", "zoo", "0.00", "-", "registry"]
    assert "test_efficientnet.zoo_digits" in everything
    assert "resnet50.a1_in1k" not in everything, "timm's ~1,800 checkpoints are listed with --source timm"
    assert list(listed("--sparsity", "0.5")) == [OS50]
    assert list(listed("--sparsity", "0.5", "--quant", "none")) == [OS50]
    assert OS50 not in listed("--quant", "int8") and OS50 not in listed("--sparsity", "0.9")
    assert set(listed("--source", "upstream")).isdisjoint({OS50, BASE})
    assert set(listed("--family", "efficientnet")).isdisjoint({OS50, BASE})
    assert list(listed("--filter", "test_resnet*")) == [BASE, OS50]


def test_list_the_timm_catalog_by_wildcard(store: Store) -> None:
    lines = ok(["list", "--source", "timm", "--filter", "resnet*"], store_env(store)).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["resnet50.a1_in1k"] == ["resnet", "upstream", "0.00", "-", "catalog"]
    assert all(name.startswith("resnet") for name in rows) and len(rows) > 50
    assert BASE not in rows and not any(name.startswith("mobilenet") for name in rows)
    assert list(listed_names(["list", "--source", "timm", "--filter", "mobilenetv2_100.*"], store)) == [
        "mobilenetv2_100.ra_in1k"]


def listed_names(args: list[str], store: Store) -> list[str]:
    return [line.split()[0] for line in ok(args, store_env(store)).splitlines()[1:]]


def test_evaluate_marks_the_pareto_front(store: Store) -> None:
    env = store_env(store)
    output = ok(["evaluate", BASE, OS50], env)
    rows = table_rows(output)
    assert list(rows) == [BASE, OS50]
    reports = [cached_report(store, name) for name in (BASE, OS50)]
    front = {reports[i].name for i in pareto_front([(r.flops_sparse, r.metrics["top1"]) for r in reports])}
    assert OS50 in front  # the fewest non-zero FLOPs is always on the front
    assert {name for name, row in rows.items() if row[-1] == "*"} == front
    assert "* on the accuracy-vs-FLOPs Pareto front" in output
    for report in reports:  # measured again: the same accuracy as when it was made
        assert rows[report.name][0] == f"{100 * report.metrics['top1']:.2f}"
    measured = json.loads(ok(["evaluate", "--json", OS50], env))
    assert [m["name"] for m in measured] == [OS50]
    assert measured[0]["metrics"] == reports[1].metrics and measured[0]["flops_sparse"] == reports[1].flops_sparse


def test_card_writes_a_readme_per_family_member(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "cards"
    printed = ok(["card", BASE, "--out", str(out)], store_env(store)).splitlines()
    assert sorted(printed) == sorted(str(out / name / "README.md") for name in (BASE, OS50))
    for name in (BASE, OS50):
        card = ModelCard.load(out / name / "README.md")
        validate_card(card, cached_report(store, name))
        assert (out / name / "accuracy_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    assert f"`{OS50}`" in (out / BASE / "README.md").read_text()
    line = one_line_error(run(["card", OS50, "--out", str(tmp_path / "other")], store_env(store)),
                          "InvalidArgumentError")
    assert f"'{OS50}' names a variant; its family is that of {BASE}" in line
    assert not (tmp_path / "other").exists()


# ---- push, export, pull -------------------------------------------------------------------------------

def test_push_to_the_local_hub_prints_its_revision(store: Store, tmp_path: Path) -> None:
    hub = LocalHub(tmp_path / "hub")
    env = {**store_env(store), "ZOO_HUB": str(hub.root)}  # the store's cache, a hub of its own
    output = ok(["push", OS50], env)
    match = re.fullmatch(rf"pushed {re.escape(OS50)} to zoo/{re.escape(OS50)} \(local\) at ([0-9a-f]{{40}})\n", output)
    assert match, output
    assert hub.revisions(f"zoo/{OS50}") == [match[1]]
    snapshot = hub.snapshot(f"zoo/{OS50}")
    assert set(folder_files(snapshot)) == REPO_FILES
    validate_card(ModelCard.load(snapshot / "README.md"), cached_report(store, OS50))
    assert ok(["push", OS50], env) == output  # same files: no new revision
    assert hub.revisions(f"zoo/{OS50}") == [match[1]]


def test_push_of_a_variant_that_was_never_made_fails_before_loading_anything(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_derivation(monkeypatch)  # the base is not in this store: training it would be wasted
    empty = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache")
    for env in (store_env(empty), {**store_env(store), "ZOO_HUB": str(empty.hub.root)}):
        result = run(["push", f"{BASE}_os90"], env)
        assert "zoo compress" in one_line_error(result, "InvalidArgumentError")
    assert empty.hub.list_repos() == [] and not empty.cache_root.exists()


def test_export_writes_weights_timm_loads_unchanged(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "os50.safetensors"
    printed = ok(["export", OS50, "--out", str(out)], store_env(store))
    assert printed.startswith(f"wrote {out}; load it with timm.create_model('test_resnet', pretrained=True")
    loaded = timm.create_model("test_resnet", pretrained=True, num_classes=10, in_chans=1,
                               pretrained_cfg_overlay=dict(file=str(out), num_classes=10)).eval()
    model = zoo.load(OS50, store=store, progress=False)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_export_of_a_low_bit_variant_is_dequantized_and_says_how_it_differs(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "w4a8.safetensors"
    printed = ok(["export", BASE, "--quant", "w4a8", "--out", str(out)], store_env(store))
    first, second = printed.splitlines()
    assert re.fullmatch(r"the dense file holds the dequantized weights without input quantization: its outputs "
                        r"differ from the quantized model's by at most \S+ \(\S+ % relative RMS\) on .+", first), first
    assert second.startswith(f"wrote {out}; load it with timm.create_model('test_resnet'")
    loaded = timm.create_model("test_resnet", pretrained=True, num_classes=10, in_chans=1,
                               pretrained_cfg_overlay=dict(file=str(out), num_classes=10)).eval()
    model = zoo.load(f"{BASE}_w4a8", store=store, progress=False)
    quantized = {k: v for k, v in model.state_dict().items() if k in loaded.state_dict()}
    assert quantized.keys() == loaded.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in quantized.items())
    assert model.zoo.report.dense_export.relative_rms > 0  # its 8-bit inputs are rounded, the dense file's not


def test_pull_a_published_variant_then_load_it_offline(store: Store, olah_hub: OlahServer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    repo_id = f"zoo/{OS50}"
    published = LocalHub(tmp_path / "published")
    ok(["push", OS50], {**store_env(store), "ZOO_HUB": str(published.root)})
    files = folder_files(published.snapshot(repo_id))
    commit = olah_hub.add_repo(repo_id, files, lfs=["model.safetensors", "accuracy_vs_flops.png"])

    refuse_derivation(monkeypatch)
    fresh = Store(hub=LocalHub(tmp_path / "fresh"), cache_root=tmp_path / "empty-cache")
    output = ok(["pull", repo_id, "--endpoint", olah_hub.endpoint], store_env(fresh))
    match = re.fullmatch(rf"pulled {re.escape(repo_id)}@main into {re.escape(str(fresh.hub.root))} as "
                         r"([0-9a-f]{40})\n", output)
    assert match, output
    assert fresh.hub.list_repos() == [repo_id] and fresh.hub.revisions(repo_id) == [match[1]]
    assert commit in (fresh.hub.root / f"models--zoo--{OS50}" / "zoo-commits" / f"{match[1]}.json").read_text()

    model = zoo.load(OS50, store=fresh, progress=False)
    assert model.zoo.source == "hub" and model.zoo.path == fresh.hub.snapshot(repo_id)
    assert model.zoo.report.to_dict() == cached_report(store, OS50).to_dict()
    (cached,) = store.cached_entries(OS50)
    expected, _ = load_checkpoint(cached)
    got = model.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert not fresh.cache_root.exists()


# ---- push --to hf ---------------------------------------------------------------------------------------

class FakeApi:
    """Stands in for huggingface_hub's HfApi in zoo.hub.remote: records the calls, keeps the files sent."""

    instances: list[FakeApi] = []

    def __init__(self, endpoint: str | None = None, token: str | None = None):
        self.endpoint, self.token, self.calls = endpoint, token, []
        FakeApi.instances.append(self)

    def create_repo(self, repo_id: str, **kwargs: object) -> None:
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id: str, operations: list[CommitOperationAdd], **kwargs: object) -> SimpleNamespace:
        sent = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}  # before cleanup
        self.calls.append(("create_commit", repo_id, {"files": sent, **kwargs}))
        return SimpleNamespace(oid="c" * 40)


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    FakeApi.instances = []
    monkeypatch.setattr(remote, "HfApi", FakeApi)
    return FakeApi


def test_push_to_hf_makes_one_commit_with_every_repo_file(store: Store, fake_api: type[FakeApi]) -> None:
    args = ["push", OS50, "--to", "hf", "--endpoint", "http://hub.test", "--token", "hf_t"]
    output = ok(args, store_env(store))
    assert output == f"pushed {OS50} to zoo/{OS50} (hf) at {'c' * 40}\n"
    (api,) = fake_api.instances
    assert (api.endpoint, api.token) == ("http://hub.test", "hf_t")
    commits = [call for call in api.calls if call[0] == "create_commit"]
    assert len(commits) == 1 and [call[0] for call in api.calls] == ["create_repo", "create_commit"]
    _, repo_id, kwargs = commits[0]
    assert repo_id == f"zoo/{OS50}" and OS50 in kwargs["commit_message"]
    sent = kwargs["files"]
    assert set(sent) == REPO_FILES
    (cached,) = store.cached_entries(OS50)
    for name in ("config.json", "model.safetensors", "report.json"):
        assert sent[name] == (cached / name).read_bytes(), name
    validate_card(sent["README.md"].decode(), cached_report(store, OS50))
    assert sent["accuracy_vs_flops.png"][:4] == b"\x89PNG"
    assert store.hub.list_repos() == []  # --to hf leaves the local hub alone


def test_push_from_python_to_a_team_repo_locally_and_to_a_hub(store: Store, tmp_path: Path,
                                                             fake_api: type[FakeApi]) -> None:
    hub = LocalHub(tmp_path / "team-hub")
    team = Store(hub=hub, cache_root=store.cache_root, options=store.options)
    local = zoo.push(OS50, "acme/r18-os50", store=team)
    assert (local.name, local.repo_id, local.where) == (OS50, "acme/r18-os50", str(hub.root))
    assert hub.revisions("acme/r18-os50") == [local.revision]
    validate_card(ModelCard.load(hub.snapshot("acme/r18-os50") / "README.md"), cached_report(store, OS50))
    assert fake_api.instances == []

    remote_push = zoo.push(OS50, "acme/r18-os50", to="hub", endpoint="http://hub.test/", token="hf_t", private=True,
                           store=store)
    assert (remote_push.repo_id, remote_push.revision, remote_push.where) == ("acme/r18-os50", "c" * 40,
                                                                              "http://hub.test")
    (api,) = fake_api.instances
    assert api.calls[0] == ("create_repo", "acme/r18-os50", {"repo_type": "model", "private": True, "exist_ok": True})
    assert set(api.calls[1][2]["files"]) == REPO_FILES


def test_push_refuses_contradicting_arguments_before_anything(store: Store, fake_api: type[FakeApi]) -> None:
    with pytest.raises(zoo.InvalidArgumentError, match="to must be one of local, hub"):
        zoo.push(OS50, to="hf", store=store)
    with pytest.raises(zoo.InvalidArgumentError, match="apply to a push to a Hub"):
        zoo.push(OS50, endpoint="http://hub.test", store=store)
    one_line_error(run(["push", OS50, "--private"], store_env(store)), "InvalidArgumentError")
    assert fake_api.instances == [] and store.hub.list_repos() == []


@pytest.mark.live
def test_live_push_then_load_by_hub_id(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a real Hub when ZOO_LIVE_HUB_ENDPOINT and ZOO_LIVE_HUB_TOKEN are set: `zoo.push` a made variant
    to a private team repo, then anyone with access loads it by its id, fresh, weights and report intact."""
    import os
    import uuid

    from huggingface_hub import HfApi

    missing = [v for v in ("ZOO_LIVE_HUB_ENDPOINT", "ZOO_LIVE_HUB_TOKEN") if not os.environ.get(v)]
    if missing:
        pytest.skip(f"live Hub test: set ZOO_LIVE_HUB_ENDPOINT and ZOO_LIVE_HUB_TOKEN; missing {', '.join(missing)}")
    endpoint, token = os.environ["ZOO_LIVE_HUB_ENDPOINT"], os.environ["ZOO_LIVE_HUB_TOKEN"]
    api = HfApi(endpoint=endpoint, token=token)
    namespace = os.environ.get("ZOO_LIVE_HUB_NAMESPACE") or api.whoami()["name"]
    repo_id = f"{namespace}/zoo-live-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("HF_TOKEN", token)
    try:
        pushed = zoo.push(OS50, repo_id, to="hub", endpoint=endpoint, token=token, private=True, store=store)
        fresh = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache", options=store.options)
        model = zoo.load(f"hf-hub:{repo_id}@{pushed.revision}", store=fresh, endpoint=endpoint, progress=False)
        assert model.zoo.source == "hf-hub" and model.zoo.report.metrics == cached_report(store, OS50).metrics
        (cached,) = store.cached_entries(OS50)
        expected, _ = load_checkpoint(cached)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    finally:
        api.delete_repo(repo_id, missing_ok=True)


def tampered(card: ModelCard) -> ModelCard:
    """The same card claiming a top-1 accuracy one point higher than measured."""
    bad = ModelCard(str(card))
    result = next(r for r in bad.data.eval_results if r.metric_name.startswith("top-1"))
    result.metric_value = min(1.0, result.metric_value + 0.01) if result.metric_value < 1.0 else 0.5
    return ModelCard(str(bad))


def test_a_card_that_does_not_validate_is_never_uploaded(store: Store, fake_api: type[FakeApi],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    models = family_models(BASE, store)
    family = family_cards(zoo.get_entry(BASE), [m.zoo.report for m in models])
    model = next(m for m in models if m.zoo.name == OS50)
    with pytest.raises(CardValidationError, match="top-1 accuracy"):
        push_variant(model, tampered(family.cards[OS50]), family, repo_id=f"zoo/{OS50}",
                     endpoint="http://hub.test", token="hf_t")
    assert fake_api.instances == []

    original = zoo.publish.variant_card
    monkeypatch.setattr(zoo.publish, "variant_card", lambda *a, **kw: tampered(original(*a, **kw)))
    result = run(["push", OS50, "--to", "hf", "--endpoint", "http://hub.test", "--token", "hf_t"], store_env(store))
    one_line_error(result, "CardValidationError")
    assert fake_api.instances == []


def test_train_trains_once_then_finds_the_cached_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.api

    calls: list[str] = []
    original = zoo.api.train_base_model

    def counted(entry, **kwargs):
        calls.append(entry.name)
        return original(entry, **kwargs)

    monkeypatch.setattr(zoo.api, "train_base_model", counted)  # a spy: the budget is the SHORT options
    env = {"ZOO_TRAIN_OPTIONS": SHORT.to_text()}
    args = ["train", BASE, "--hub", str(tmp_path / "hub"), "--cache", str(tmp_path / "cache")]
    first = CliRunner().invoke(main, [*args, "--publish"], env=env)
    assert first.exit_code == 0, first.output
    assert "trained" in first.output and "published" in first.output and calls == [BASE]
    second = CliRunner().invoke(main, args, env=env)
    assert second.exit_code == 0 and calls == [BASE], second.output
    refused = CliRunner().invoke(main, ["train", "test_resnet.r160_in1k", "--cache", str(tmp_path / "cache")])
    assert refused.exit_code == 1 and "not a zoo-native base" in refused.output


def test_compress_options_shape_the_variant_like_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """--nm, --distribution, --budget and --snap give the variant their name suffixes say (checked on
    what `zoo.load` is asked for, without training it); bad combinations are refused in one line."""
    import zoo as zoo_module

    asked = []
    monkeypatch.setattr(zoo_module, "load", lambda spec, **kwargs: asked.append(spec.name) or (_ for _ in ()).throw(
        zoo_module.errors.InvalidArgumentError("stop here")))
    runner = CliRunner()
    for args, name in (
        (["--method", "rigl", "--sparsity", "0.9", "--distribution", "uniform", "--budget", "2"], f"{BASE}_rigl90unix2"),
        (["--nm", "2:4"], f"{BASE}_nm24"),
        (["--method", "oneshot", "--nm", "1:4", "--quant", "int8"], f"{BASE}_osnm14_int8"),
        (["--method", "set", "--nm", "2:4"], f"{BASE}_setnm24"),
        (["--method", "es", "--sparsity", "0.9"], f"{BASE}_es90"),
    ):
        result = runner.invoke(main, ["compress", BASE, *args])
        assert result.exit_code == 1 and "stop here" in result.output, result.output
        assert asked[-1] == name
    for args, message in ((["--nm", "24"], "--nm takes N:M"), (["--distribution", "er"], "sparse training"),
                          (["--method", "channels", "--sparsity", "0.5", "--nm", "2:4"], "N:M applies")):
        result = runner.invoke(main, ["compress", BASE, *args])
        assert result.exit_code == 1 and message in result.output, result.output
