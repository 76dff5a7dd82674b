"""zoo.hub.upload: one commit with every file. Offline with HfApi replaced, against olah's refusal, and live
against a real Hub when ZOO_LIVE_HUB_ENDPOINT and ZOO_LIVE_HUB_TOKEN (optional ZOO_LIVE_HUB_NAMESPACE) are set."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

import zoo.hub.remote as remote
from olah_server import OlahServer, _free_port
from zoo.errors import HubError, InvalidArgumentError
from zoo.hub import HubConnectionError, download, upload

FILES = {"config.json": b'{"arch": "tiny"}', "weights/model.safetensors": os.urandom(64 * 1024), "README.md": b"# t\n"}
LIVE_VARS = ("ZOO_LIVE_HUB_ENDPOINT", "ZOO_LIVE_HUB_TOKEN")


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def read_folder(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class FakeApi:
    """Stands in for HfApi: records calls; `fail` makes create_commit answer 403 like a read-only token."""

    instances: list[FakeApi] = []

    def __init__(self, endpoint: str | None = None, token: str | None = None, fail: bool = False):
        self.endpoint, self.token, self.fail, self.calls = endpoint, token, fail, []
        FakeApi.instances.append(self)

    def create_repo(self, repo_id: str, **kwargs: object) -> None:
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id: str, operations: list[CommitOperationAdd], **kwargs: object) -> SimpleNamespace:
        self.calls.append(("create_commit", repo_id, {"operations": operations, **kwargs}))
        if self.fail:
            request = httpx2.Request("POST", f"{self.endpoint}/api/models/{repo_id}/commit/main")
            raise HfHubHTTPError("403 Forbidden: token has no write access",
                                 response=httpx2.Response(403, request=request))
        return SimpleNamespace(oid="c" * 40)


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    FakeApi.instances = []
    monkeypatch.setattr(remote, "HfApi", FakeApi)
    return FakeApi


def test_upload_makes_exactly_one_commit_with_all_files(fake_api: type[FakeApi], tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "model", {**FILES, ".git/HEAD": b"ref: x"})
    commit = upload(folder, "acme/tiny", endpoint="http://hub.test", token="hf_t", message="add tiny", private=True)
    assert commit == "c" * 40
    (api,) = fake_api.instances
    assert (api.endpoint, api.token) == ("http://hub.test", "hf_t")
    assert [call[0] for call in api.calls] == ["create_repo", "create_commit"]
    assert api.calls[0][1:] == ("acme/tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    _, repo_id, kwargs = api.calls[1]
    assert repo_id == "acme/tiny" and kwargs["commit_message"] == "add tiny"
    sent = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in kwargs["operations"]}
    assert sent == FILES


def test_upload_errors_become_hub_errors(fake_api: type[FakeApi], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setattr(remote, "HfApi", lambda endpoint=None, token=None: FakeApi(endpoint, token, fail=True))
    folder = write_folder(tmp_path / "model", FILES)
    with pytest.raises(HubError, match="upload to acme/tiny failed at http://hub.test: 403 Forbidden") as err:
        upload(folder, "acme/tiny", endpoint="http://hub.test", token="hf_t", message="m")
    assert "\n" not in str(err.value) and isinstance(err.value.__cause__, HfHubHTTPError)


def test_upload_refuses_bad_input_before_any_request(fake_api: type[FakeApi], tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "model", FILES)
    with pytest.raises(InvalidArgumentError, match="message"):
        upload(folder, "acme/tiny", message="  ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="no files"):
        upload(tmp_path / "empty", "acme/tiny", message="m")
    with pytest.raises(InvalidArgumentError):
        upload(folder, "acme/bad--name", message="m")
    assert fake_api.instances == []


def test_upload_to_a_real_server_that_refuses_or_is_down(olah_hub: OlahServer, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "model", FILES)
    with pytest.raises(HubError, match="405 Method Not Allowed"):  # olah serves downloads only
        upload(folder, "acme/tiny", endpoint=olah_hub.endpoint, token="hf_t", message="m")
    with pytest.raises(HubConnectionError, match="cannot reach"):
        upload(folder, "acme/tiny", endpoint=f"http://127.0.0.1:{_free_port()}", token="hf_t", message="m")


@pytest.mark.live
def test_live_upload_download_roundtrip(tmp_path: Path) -> None:
    missing = [name for name in LIVE_VARS if not os.environ.get(name)]
    if missing:
        pytest.skip(f"live Hub test: set {' and '.join(LIVE_VARS)} (optionally ZOO_LIVE_HUB_NAMESPACE); "
                    f"missing {', '.join(missing)}")
    endpoint, token = os.environ["ZOO_LIVE_HUB_ENDPOINT"], os.environ["ZOO_LIVE_HUB_TOKEN"]
    api = HfApi(endpoint=endpoint, token=token)
    namespace = os.environ.get("ZOO_LIVE_HUB_NAMESPACE") or api.whoami()["name"]
    repo_id = f"{namespace}/zoo-live-{uuid.uuid4().hex[:12]}"
    folder = write_folder(tmp_path / "model", FILES)
    try:
        commit = upload(folder, repo_id, endpoint=endpoint, token=token, message="zoo live test", private=True)
        history = api.list_repo_commits(repo_id)
        assert history[0].commit_id == commit
        if len(history) > 1:  # every file arrived in our one commit, none before it
            assert set(api.list_repo_files(repo_id, revision=history[1].commit_id)).isdisjoint(FILES)
        got = read_folder(download(repo_id, revision=commit, endpoint=endpoint, token=token, cache_dir=tmp_path / "c"))
        got.pop(".gitattributes", None)
        assert got == FILES
    finally:
        api.delete_repo(repo_id, missing_ok=True)
