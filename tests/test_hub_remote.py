"""zoo.hub.remote against a real Hub-compatible server (olah on loopback): downloads, errors, pull, and timm."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, hf_hub_download

from olah_server import OlahServer
from zoo.errors import HubError, InvalidArgumentError
from zoo.hub import HubConnectionError, LocalHub, RepoNotFoundError, RevisionNotFoundError, download, pull
from zoo.hub.local import folder_files

REPO = "zoo-tests/demo"
V1 = {"config.json": b'{"v": 1}', "sub/data.bin": bytes(range(256)) * 16}
V2 = {"config.json": b'{"v": 2}', "sub/data.bin": bytes(range(256)) * 16, "README.md": b"# demo\n"}
DEV = {"config.json": b'{"v": "dev"}'}


def read_folder(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def isolated_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep huggingface_hub's default cache (read from the env at import) out of ~/.cache."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def point_huggingface_hub_at(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What HF_ENDPOINT does when set before huggingface_hub is imported: it reads it into two constants."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture(scope="module")
def demo(olah_hub: OlahServer) -> dict[str, str]:
    """`zoo-tests/demo`: v1 (tagged v1), then v2 on main, and a `dev` branch; returns their commit ids."""
    v1 = olah_hub.add_repo(REPO, V1, tag="v1", lfs=["sub/data.bin"])
    v2 = olah_hub.add_repo(REPO, V2, lfs=["sub/data.bin"])
    dev = olah_hub.add_repo(REPO, DEV, branch="dev")
    olah_hub.add_repo(REPO, V2, branch="main", lfs=["sub/data.bin"])  # back on main, same files as v2
    return {"v1": v1, "v2": v2, "dev": dev}


def test_olah_starts_in_a_few_seconds(olah_hub: OlahServer) -> None:
    assert olah_hub.startup_s < 10


def test_download_by_branch_tag_and_commit(olah_hub: OlahServer, demo: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    main = download(REPO, endpoint=olah_hub.endpoint, cache_dir=cache)
    assert read_folder(main) == V2 and main.parent.parent == cache / "models--zoo-tests--demo"
    assert read_folder(download(REPO, revision="v1", endpoint=olah_hub.endpoint, cache_dir=cache)) == V1
    by_commit = download(REPO, revision=demo["v1"], endpoint=olah_hub.endpoint, cache_dir=cache)
    assert by_commit.name == demo["v1"] and read_folder(by_commit) == V1
    assert read_folder(download(REPO, revision="dev", endpoint=olah_hub.endpoint, cache_dir=cache)) == DEV


def test_download_uses_huggingface_hub_defaults(olah_hub: OlahServer, demo: dict[str, str],
                                               isolated_hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point_huggingface_hub_at(olah_hub.endpoint, monkeypatch)
    folder = download(REPO, revision="v1")
    assert read_folder(folder) == V1 and folder.is_relative_to(isolated_hf_cache)


def test_missing_repo_or_revision_is_a_hub_error(olah_hub: OlahServer, demo: dict[str, str],
                                                 tmp_path: Path) -> None:
    endpoint = olah_hub.endpoint
    with pytest.raises(RepoNotFoundError, match="zoo-tests/nothing.*not found at http://127.0.0.1") as err:
        download("zoo-tests/nothing", endpoint=endpoint, cache_dir=tmp_path)
    assert isinstance(err.value, HubError) and "\n" not in str(err.value)
    # olah answers an unknown branch like an unknown repo (401); the real Hub says RevisionNotFound
    with pytest.raises(HubError, match="revision 'no-such-branch'"):
        download(REPO, revision="no-such-branch", endpoint=endpoint, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError, match="0{40}"):
        download(REPO, revision="0" * 40, endpoint=endpoint, cache_dir=tmp_path)
    with pytest.raises(InvalidArgumentError):
        download("not a repo", endpoint=endpoint, cache_dir=tmp_path)


def test_unreachable_endpoint_is_a_connection_error(tmp_path: Path) -> None:
    from olah_server import _free_port

    with pytest.raises(HubConnectionError, match="cannot reach http://127.0.0.1"):
        download(REPO, endpoint=f"http://127.0.0.1:{_free_port()}", cache_dir=tmp_path)


def test_pull_into_local_hub(olah_hub: OlahServer, demo: dict[str, str], tmp_path: Path) -> None:
    hub = LocalHub(tmp_path / "hub")
    first = pull(REPO, hub, revision="v1", endpoint=olah_hub.endpoint)
    second = pull(REPO, hub, endpoint=olah_hub.endpoint)
    assert hub.revisions(REPO) == [first, second]
    assert read_folder(hub.snapshot(REPO, first)) == V1 and read_folder(hub.snapshot(REPO)) == V2
    record = (hub.root / "models--zoo-tests--demo" / "zoo-commits" / f"{first}.json").read_text()
    assert demo["v1"] in record and olah_hub.endpoint in record
    offline = hf_hub_download(REPO, "sub/data.bin", cache_dir=hub.root, local_files_only=True)
    assert Path(offline).read_bytes() == V2["sub/data.bin"]
    with pytest.raises(RepoNotFoundError):
        pull("zoo-tests/nothing", hub, endpoint=olah_hub.endpoint)
    assert hub.list_repos() == [REPO]


def test_timm_loads_pretrained_weights_from_the_server(olah_hub: OlahServer, isolated_hf_cache: Path,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm calls hf_hub_download without an endpoint, so URLs come from huggingface_hub.constants (set from
    HF_ENDPOINT at import): the test sets the env and patches those constants, as a fresh process would see them."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    source = timm.create_model("test_resnet.r160_in1k")
    save_for_hf(source, tmp_path / "export", safe_serialization=True)  # model.safetensors + config.json
    files = folder_files(tmp_path / "export")
    assert set(files) == {"model.safetensors", "config.json"}
    olah_hub.add_repo("timm/test_resnet.r160_in1k", files, lfs=["model.safetensors"])

    point_huggingface_hub_at(olah_hub.endpoint, monkeypatch)
    expected = {k: v.numpy().tobytes() for k, v in source.state_dict().items()}
    for name in ("test_resnet.r160_in1k", "hf-hub:timm/test_resnet.r160_in1k"):
        loaded = timm.create_model(name, pretrained=True)
        got = loaded.state_dict()
        assert set(got) == set(expected)
        assert all(got[k].numpy().tobytes() == expected[k] for k in expected), name
    assert (isolated_hf_cache / "models--timm--test_resnet.r160_in1k" / "refs" / "main").is_file()
