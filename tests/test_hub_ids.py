"""Models loaded by their Hub id (`hf-hub:org/name`, `org/name`) from olah on loopback, the local hub or
the Hugging Face cache: a zoo-format repo (pushed by the zoo), timm repos (in timm's catalog or not),
compressed, carded, at revisions; the pull-then-load scenario; the name grammar and its folder slugs."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import constants

import zoo
from olah_server import OlahServer
from test_upstream import write_imagefolder
from tiny_zoo import BASE, one_torch_thread, refuse_derivation, store_env, store_with_base
from zoo.catalog import family_models
from zoo.cli import main
from zoo.compress.checkpoint import load_checkpoint
from zoo.entry import name_from_path_slug, path_slug
from zoo.errors import CheckpointError, HubError, InvalidArgumentError, UnsupportedModelError
from zoo.hub import LocalHub, RepoNotFoundError, validate_repo_id
from zoo.hub.local import folder_files
from zoo.hub_ids import parse_hub_reference, variant_repo_name
from zoo.model_cards import validate_card
from zoo.publish import cards_of_models, push_variant
from zoo.store import Store

OS50 = f"{BASE}_os50"
ZOO_REPO = "acme/r18-os50"
FOREIGN_REPO = "acme/foreign"
TIMM_NAME = "test_resnet.r160_in1k"
OFFLINE = "http://127.0.0.1:9"  # nothing listens there
LFS = ["model.safetensors", "accuracy_vs_flops.png", "accuracy_vs_latency.png"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(autouse=True)
def isolated_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The tiny base and its one-shot 50 % variant, cached (SHORT options)."""
    store = store_with_base(tmp_path_factory, tmp_path_factory.mktemp("hub-ids"))
    zoo.load(BASE, sparsity=0.5, method="oneshot", store=store, progress=False)
    return store


@pytest.fixture(scope="module")
def published(made: Store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The variant's repo folder as `zoo push` writes it (weights, config, report, card, plots)."""
    models = family_models(BASE, made)
    family = cards_of_models(zoo.get_entry(BASE), models, made)
    variant = next(m for m in models if m.zoo.name == OS50)
    hub = LocalHub(tmp_path_factory.mktemp("published"))
    push_variant(variant, family.cards[OS50], family, repo_id=f"zoo/{OS50}", hub=hub)
    return hub.snapshot(f"zoo/{OS50}")


@pytest.fixture(scope="module")
def zoo_repo(olah_hub: OlahServer, published: Path) -> str:
    """`acme/r18-os50` on the server, holding the pushed variant; returns its commit."""
    return olah_hub.add_repo(ZOO_REPO, folder_files(published), lfs=LFS)


def fresh(tmp_path: Path, made: Store) -> Store:
    return Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache", options=made.options)


def cached_weights(store: Store, name: str) -> dict[str, torch.Tensor]:
    (folder,) = store.cached_entries(name)
    return load_checkpoint(folder)[0]


def same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    return set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


# ---- the name grammar -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, repo_id, revision, suffix", [
    ("hf-hub:acme/r18-os50", "acme/r18-os50", None, None),
    ("acme/r18-os50", "acme/r18-os50", None, None),
    ("hf-hub:acme/r18.v2@v1", "acme/r18.v2", "v1", None),
    ("hf-hub:acme/r18@refs/pr/1+os50_int8", "acme/r18", "refs/pr/1", "os50_int8"),
    ("acme/r18+gmp90", "acme/r18", None, "gmp90"),
])
def test_hub_ids_parse(name: str, repo_id: str, revision: str | None, suffix: str | None) -> None:
    reference = parse_hub_reference(name)
    assert (reference.repo_id, reference.revision, reference.suffix) == (repo_id, revision, suffix)


def test_hub_variant_names_become_valid_folders_and_repo_ids() -> None:
    for name in ("hf-hub:acme/r18-os50+os50", "hf-hub:a.b/c_d+gmp97p5_w4a8_kd", f"hf-hub:org/{'x' * 90}+os50"):
        assert name_from_path_slug(path_slug(name)) == name and "/" not in path_slug(name)
        assert ":" not in path_slug(name)
        validate_repo_id(f"zoo/{variant_repo_name(name)}")
    assert path_slug(OS50) == OS50
    for bad in ("hf-hub:acme", "acme/r18/x", "hf-hub:acme/r 18"):
        with pytest.raises(InvalidArgumentError):
            zoo.resolve(bad)


# ---- a zoo-format repo ---------------------------------------------------------------------------------

def test_a_zoo_repo_loads_by_hub_id_as_the_pushed_model(made: Store, zoo_repo: str, olah_hub: OlahServer,
                                                         tmp_path: Path) -> None:
    store = fresh(tmp_path, made)
    model = zoo.load(f"hf-hub:{ZOO_REPO}", store=store, endpoint=olah_hub.endpoint, progress=False)
    assert model.zoo.name == model.zoo.base_model == f"hf-hub:{ZOO_REPO}" and model.zoo.source == "hf-hub"
    assert model.zoo.sparsity == 0.5 and model.zoo.recipe is not None
    assert same_tensors(model.state_dict(), cached_weights(made, OS50))
    assert model.zoo.report.name == f"hf-hub:{ZOO_REPO}" and model.zoo.report.flops_sparse > 0
    entry = zoo.get_entry(f"hf-hub:{ZOO_REPO}")
    assert (entry.repo_id, entry.revision, entry.arch) == (ZOO_REPO, zoo_repo, "test_resnet")
    assert entry.train == zoo.get_entry(BASE).train and OS50 in entry.description
    assert not store.cache_root.exists(), "loaded as it is: nothing derived"

    # compressed further, from these weights: one-shot (no training) and int8 (calibrated on digits)
    sparser = zoo.load(f"hf-hub:{ZOO_REPO}", sparsity=0.8, method="oneshot", store=store, endpoint=OFFLINE,
                       progress=False)
    assert sparser.zoo.name == f"hf-hub:{ZOO_REPO}+os80" and sparser.zoo.source == "derived"
    assert sparser.zoo.path.parent == store.cache_root / "hf-hub--acme--r18-os50+os80"
    weights = cached_weights(made, OS50)
    zeros_before = {k for k, v in weights.items() if k.endswith("weight") and v.dim() > 1 and (v == 0).any()}
    got = sparser.state_dict()
    assert all((got[k][weights[k] == 0] == 0).all() for k in zeros_before), "pruned further from the pushed zeros"
    int8 = zoo.load(f"hf-hub:{ZOO_REPO}+int8", store=store, endpoint=OFFLINE, progress=False)
    assert int8.zoo.quant == "int8" and set(int8.zoo.report.metrics) == {"top1", "top5"}
    again = zoo.load(f"hf-hub:{ZOO_REPO}", sparsity=0.8, method="oneshot", store=store, endpoint=OFFLINE,
                     progress=False)
    assert again.zoo.source == "cache" and again.zoo.path == sparser.zoo.path

    # carded offline: the repo's model is the family's base, its variants the derived ones
    models = family_models(f"hf-hub:{ZOO_REPO}", store)
    assert {m.zoo.name for m in models} == {f"hf-hub:{ZOO_REPO}", sparser.zoo.name, int8.zoo.name}
    family = cards_of_models(entry, models, store)
    for m in models:
        validate_card(family.cards[m.zoo.name], m.zoo.report)
    assert family.cards[sparser.zoo.name].data.base_model == ZOO_REPO


def test_a_zoo_repo_whose_base_this_registry_lacks_loads_from_its_recorded_entry(
        made: Store, published: Path, olah_hub: OlahServer, tmp_path: Path) -> None:
    files = folder_files(published)
    config = json.loads(files["config.json"].read_text())
    foreign = {**config, "base_model": "tinynet.zoo_elsewhere", "name": "tinynet.zoo_elsewhere_os50"}
    olah_hub.add_repo(FOREIGN_REPO, {**files, "config.json": json.dumps(foreign).encode()}, lfs=LFS)
    store = fresh(tmp_path, made)
    model = zoo.load(f"hf-hub:{FOREIGN_REPO}", store=store, endpoint=olah_hub.endpoint, progress=False)
    assert model.zoo.source == "hf-hub" and same_tensors(model.state_dict(), cached_weights(made, OS50))
    assert zoo.get_entry(f"hf-hub:{FOREIGN_REPO}").input == zoo.get_entry(BASE).input

    unrecorded = {k: v for k, v in foreign.items() if k != "entry"}
    older = olah_hub.add_repo(FOREIGN_REPO, {**files, "config.json": json.dumps(unrecorded).encode()}, lfs=LFS)
    with pytest.raises(UnsupportedModelError, match="tinynet.zoo_elsewhere.*does not record its entry"):
        zoo.resolve(f"hf-hub:{FOREIGN_REPO}@{older}", endpoint=olah_hub.endpoint, store=store)


def test_revisions_of_a_zoo_repo(made: Store, published: Path, olah_hub: OlahServer, tmp_path: Path) -> None:
    files = folder_files(published)
    first = olah_hub.add_repo("acme/versions", files, tag="v1", lfs=LFS)
    weights, _ = load_checkpoint(published)
    dense = zoo.load(BASE, store=made, progress=False)
    olah_hub.add_repo("acme/versions", {**files, "config.json": (made.cached_entries(BASE)[0] / "config.json"),
                                        "model.safetensors": (made.cached_entries(BASE)[0] / "model.safetensors")},
                      lfs=LFS)
    store = fresh(tmp_path, made)
    at_tag = zoo.load("hf-hub:acme/versions@v1", store=store, endpoint=olah_hub.endpoint, progress=False)
    by_kwarg = zoo.load("acme/versions", revision="v1", store=store, endpoint=olah_hub.endpoint, progress=False)
    by_commit = zoo.load(f"hf-hub:acme/versions@{first}", store=store, endpoint=olah_hub.endpoint, progress=False)
    main = zoo.load("hf-hub:acme/versions", store=store, endpoint=olah_hub.endpoint, progress=False)
    for model in (at_tag, by_kwarg, by_commit):
        assert same_tensors(model.state_dict(), weights) and model.zoo.path.name == first
    assert same_tensors(main.state_dict(), dense.state_dict()) and main.zoo.path.name != first
    assert main.zoo.sparsity == 0.0 and main.zoo.recipe is None
    with pytest.raises(InvalidArgumentError, match="contradicts"):
        zoo.load("hf-hub:acme/versions@v1", revision="main2", store=store, endpoint=olah_hub.endpoint)
    with pytest.raises(HubError, match="no-such-branch"):
        zoo.load("hf-hub:acme/versions@no-such-branch", store=store, endpoint=olah_hub.endpoint)
    with pytest.raises(RepoNotFoundError):
        zoo.load("hf-hub:acme/no-such-repo", store=store, endpoint=olah_hub.endpoint)


def test_repos_the_readers_do_not_know_are_one_line_typed_errors(olah_hub: OlahServer, tmp_path: Path) -> None:
    olah_hub.add_repo("acme/no-config", {"weights.bin": b"\0" * 8})
    olah_hub.add_repo("acme/other-format", {"config.json": b'{"model_type": "nothing-known", "width": 3}'})
    store = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache")
    with pytest.raises(UnsupportedModelError, match=r"acme/no-config@main \(commit \w+\) has no config.json.*files: weights.bin"):
        zoo.load("acme/no-config", store=store, endpoint=olah_hub.endpoint)
    with pytest.raises(UnsupportedModelError, match=r"no reader .* knows its config.json \(keys: model_type, width\)") as err:
        zoo.info("hf-hub:acme/other-format", store=store, endpoint=olah_hub.endpoint)
    assert "\n" not in str(err.value)
    olah_hub.add_repo("acme/broken-zoo", {"config.json": b'{"format": "zoo-compressed", "name": "x"}'})
    with pytest.raises(CheckpointError, match="lacks base_model"):
        zoo.resolve("acme/broken-zoo", store=store, endpoint=olah_hub.endpoint)


# ---- timm repos ----------------------------------------------------------------------------------------

def timm_export(tmp_path: Path, seed: int) -> tuple[dict[str, Path], dict[str, torch.Tensor]]:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    source = timm.create_model(TIMM_NAME)
    save_for_hf(source, tmp_path / f"export{seed}", safe_serialization=True)
    return folder_files(tmp_path / f"export{seed}"), source.state_dict()


@pytest.fixture
def imagefolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny ImageNet-style folder as the evaluation and the calibration data of upstream entries."""
    monkeypatch.setenv("ZOO_IMAGEFOLDER_VAL", str(write_imagefolder(tmp_path / "val")))
    monkeypatch.setenv("ZOO_IMAGEFOLDER_TRAIN", str(tmp_path / "val"))
    return tmp_path / "val"


def test_a_timm_repo_in_the_catalog_is_the_catalog_entry_pinned_and_keyed_by_commit(
        olah_hub: OlahServer, tmp_path: Path, imagefolder: Path, made: Store) -> None:
    files, weights = timm_export(tmp_path, 0)
    first = olah_hub.add_repo(f"timm/{TIMM_NAME}", files, lfs=["model.safetensors"])
    store = fresh(tmp_path, made)
    base = zoo.load(f"hf-hub:timm/{TIMM_NAME}", store=store, endpoint=olah_hub.endpoint, progress=False)
    assert base.zoo.name == TIMM_NAME and base.zoo.source == "upstream" and same_tensors(base.state_dict(), weights)
    assert zoo.resolve(f"hf-hub:timm/{TIMM_NAME}", store=store).base.revision == first
    sparse = zoo.load(f"hf-hub:timm/{TIMM_NAME}", sparsity=0.5, store=store, endpoint=olah_hub.endpoint,
                      progress=False)
    assert sparse.zoo.name == f"{TIMM_NAME}_os50" and sparse.zoo.source == "derived"
    entry = zoo.resolve(f"hf-hub:timm/{TIMM_NAME}", store=store).base
    family = cards_of_models(entry, [base, sparse], store)  # carded offline, on the evaluation folder
    for model in (base, sparse):
        validate_card(family.cards[model.zoo.name], model.zoo.report)
    assert family.cards[sparse.zoo.name].data.base_model == f"timm/{TIMM_NAME}"
    (measured,) = (store.cache_root / TIMM_NAME).glob("measured-*")  # the upstream base's report, kept once
    (measured / "report.json").write_text("{")  # damaged: measured again, not an error
    with pytest.warns(UserWarning, match="measured again"):
        again = zoo.load(f"hf-hub:timm/{TIMM_NAME}@{first}", store=store, endpoint=OFFLINE, progress=False)
    assert again.zoo.report is not None and again.zoo.report.metrics == base.zoo.report.metrics

    files, _ = timm_export(tmp_path, 1)
    second = olah_hub.add_repo(f"timm/{TIMM_NAME}", files, lfs=["model.safetensors"])
    assert zoo.resolve(f"hf-hub:timm/{TIMM_NAME}", store=store, endpoint=olah_hub.endpoint).base.revision == second, \
        "main is what the server says now, not the cached commit"
    newer = zoo.load(f"hf-hub:timm/{TIMM_NAME}@{second}", sparsity=0.5, store=store, endpoint=olah_hub.endpoint,
                     progress=False)
    assert zoo.resolve(f"hf-hub:timm/{TIMM_NAME}", store=store, endpoint=OFFLINE).base.revision == second, \
        "unreachable: the cached main"
    assert newer.zoo.source == "derived" and newer.zoo.path != sparse.zoo.path, "a new commit, a new derivation"
    assert zoo.load(f"hf-hub:timm/{TIMM_NAME}@{first}", sparsity=0.5, store=store, endpoint=OFFLINE,
                    progress=False).zoo.path == sparse.zoo.path
    low_bit = zoo.load(f"hf-hub:timm/{TIMM_NAME}@{second}", quant="w4_ptq", store=store, endpoint=olah_hub.endpoint,
                       progress=False, options=made.options)
    assert low_bit.zoo.name == f"{TIMM_NAME}_w4_ptq" and set(low_bit.zoo.report.metrics) == {"top1", "top5"}


def test_a_timm_repo_outside_the_catalog_is_an_hf_hub_entry(olah_hub: OlahServer, tmp_path: Path,
                                                           imagefolder: Path, made: Store) -> None:
    files, weights = timm_export(tmp_path, 2)
    commit = olah_hub.add_repo("acme/tiny-timm", files, lfs=["model.safetensors"])
    store = fresh(tmp_path, made)
    model = zoo.load("hf-hub:acme/tiny-timm", store=store, endpoint=olah_hub.endpoint, progress=False)
    assert model.zoo.name == "hf-hub:acme/tiny-timm" and model.zoo.source == "hf-hub"
    assert same_tensors(model.state_dict(), weights)
    entry = zoo.get_entry("hf-hub:acme/tiny-timm")
    assert (entry.arch, entry.family, entry.revision, entry.input.size) == ("test_resnet", "resnet", commit, (160, 160))
    assert entry.keep_dense == (r"conv1\.0(\..*)?", r"fc(\..*)?") and entry.train is None
    sparse = zoo.load("hf-hub:acme/tiny-timm+os50", store=store, endpoint=OFFLINE, progress=False)
    assert sparse.zoo.name == "hf-hub:acme/tiny-timm+os50" and sparse.zoo.source == "derived"
    assert sparse.zoo.report.params_nonzero < sparse.zoo.report.params_total
    with pytest.raises(InvalidArgumentError, match="oneshot"):
        zoo.load("hf-hub:acme/tiny-timm", sparsity=0.5, method="gmp", store=store, endpoint=OFFLINE)


# ---- pull, then load offline (the CLI and Python) -----------------------------------------------------

def test_pull_then_load_by_repo_id_offline(made: Store, zoo_repo: str, olah_hub: OlahServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = fresh(tmp_path, made)
    env = store_env(store)
    runner = CliRunner()
    pulled = runner.invoke(main, ["pull", ZOO_REPO, "--endpoint", olah_hub.endpoint], env=env)
    assert pulled.exit_code == 0, pulled.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = zoo.load(ZOO_REPO, store=store, progress=False)
    assert model.zoo.source == "hf-hub" and model.zoo.path == store.hub.snapshot(ZOO_REPO)
    assert same_tensors(model.state_dict(), cached_weights(made, OS50))

    info = runner.invoke(main, ["info", ZOO_REPO], env=env)
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["entry"]["repo_id"] == ZOO_REPO
    by_option = runner.invoke(main, ["info", ZOO_REPO, "--hub", str(store.hub.root)],
                              env={**env, "ZOO_HUB": str(tmp_path / "elsewhere")})
    assert by_option.exit_code == 0 and json.loads(by_option.stdout) == json.loads(info.stdout), by_option.output
    compressed = runner.invoke(main, ["compress", ZOO_REPO, "--sparsity", "0.8", "--method", "oneshot"], env=env)
    assert compressed.exit_code == 0, compressed.output
    assert compressed.stdout.startswith(f"hf-hub:{ZOO_REPO}+os80: derived at ")
    listed = runner.invoke(main, ["list", "--filter", "hf-hub:*"], env=env)
    assert listed.exit_code == 0 and f"hf-hub:{ZOO_REPO}+os80" in listed.stdout, listed.output
    evaluated = runner.invoke(main, ["evaluate", f"hf-hub:{ZOO_REPO}+os80"], env=env)
    assert evaluated.exit_code == 0 and f"hf-hub:{ZOO_REPO}+os80" in evaluated.stdout, evaluated.output
    cards = runner.invoke(main, ["card", f"hf-hub:{ZOO_REPO}", "--out", str(tmp_path / "cards")], env=env)
    assert cards.exit_code == 0, cards.output
    assert sorted(Path(p).parent.name for p in cards.stdout.split()) == sorted(
        path_slug(n) for n in (f"hf-hub:{ZOO_REPO}", f"hf-hub:{ZOO_REPO}+os80"))
    pushed = runner.invoke(main, ["push", f"hf-hub:{ZOO_REPO}+os80"], env=env)
    assert pushed.exit_code == 0, pushed.output
    repo_id = f"zoo/{variant_repo_name(f'hf-hub:{ZOO_REPO}+os80')}"
    assert repo_id in store.hub.list_repos()
    refuse_derivation(monkeypatch)
    assert zoo.load(f"hf-hub:{ZOO_REPO}+os80", store=store, progress=False).zoo.source == "hub"
