"""A hostile Hub on loopback: `zoo pull`, `zoo.hub.download` and `zoo.load("hf-hub:...")` against an endpoint
that lies (commit ids that climb out of the cache, paths that leave the repo, files bigger than declared,
bytes that are not the ones listed, and ETag / X-Repo-Commit headers naming paths outside). Each lie is a typed
one-line HubError, nothing is written outside the folders each call owns, and the local hub keeps its state.

The server is `http.server` in a thread answering the three endpoints the zoo asks: the revision's info
(`/api/models/{repo}/revision/{rev}`), its recursive file listing (`/api/models/{repo}/tree/{commit}`) and
each file (`/{repo}/resolve/{commit}/{path}`); it logs every request so a test can tell what was asked.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import constants, snapshot_download

import zoo
import zoo.hub.remote as remote
from zoo.cli import main
from zoo.errors import HubError, InvalidArgumentError
from zoo.hub import InvalidResponseError, LocalHub, OversizedFileError, download, folder_files, pull

REPO = "acme/x"
COMMIT = "1234567890abcdef1234567890abcdef12345678"
ESCAPE = "../../../../outside/x"  # from <cache>/models--acme--x/trees/: four levels up
CONFIG = b'{"format": "not-a-zoo-model"}'
WEIGHTS = bytes(range(256)) * 64


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class ServedFile:
    """A file as listed (path, size, hashes of `content`) and as served (`body`, default `content`)."""

    path: str
    content: bytes
    lfs: bool = False
    declared_size: int | None = None
    body: bytes | None = None

    def tree_entry(self) -> dict:
        size = len(self.content) if self.declared_size is None else self.declared_size
        entry = {"type": "file", "path": self.path, "size": size, "oid": git_blob_id(self.content)}
        if self.lfs:
            oid = hashlib.sha256(self.content).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
            entry["oid"] = git_blob_id(pointer.encode())
            entry["lfs"] = {"oid": hashlib.sha256(self.content).hexdigest(), "size": size,
                            "pointerSize": len(pointer)}
        return entry


@dataclass
class Scenario:
    """What the server answers: the commit id for any revision, the listing and the files."""

    sha: object = COMMIT
    files: list[ServedFile] = field(default_factory=lambda: [ServedFile("config.json", CONFIG),
                                                             ServedFile("weights.bin", WEIGHTS, lfs=True)])
    tree: list | None = None  # a raw listing, instead of the files' entries
    resolve_headers: dict[str, str] = field(default_factory=dict)


class HostileHub:
    def __init__(self) -> None:
        self.scenario = Scenario()
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _answer(self, head: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                status, headers, body = hub.route(urllib.parse.unquote(self.path.split("?")[0]))
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, path: str) -> tuple[int, dict[str, str], bytes]:
        scenario = self.scenario
        as_json = {"Content-Type": "application/json"}
        api = f"/api/models/{REPO}/"
        if path.startswith(api + "revision/"):
            return 200, as_json, json.dumps({"id": REPO, "sha": scenario.sha, "private": False}).encode()
        if path.startswith(api + "tree/"):
            tree = scenario.tree if scenario.tree is not None else [f.tree_entry() for f in scenario.files]
            return 200, as_json, json.dumps(tree).encode()
        prefix = f"/{REPO}/resolve/"
        if path.startswith(prefix):
            _, _, rel = path[len(prefix):].partition("/")
            for served in scenario.files:
                if served.path == rel:
                    body = served.content if served.body is None else served.body
                    headers = {"ETag": f'"{git_blob_id(served.content)}"', "X-Repo-Commit": str(scenario.sha),
                               **scenario.resolve_headers}
                    return 200, headers, body
        return 404, {"X-Error-Code": "EntryNotFound"}, b"not found"


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileHub]:
    hub = HostileHub()
    thread = threading.Thread(target=hub.server.serve_forever, daemon=True)
    thread.start()
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


@pytest.fixture
def server(hostile: HostileHub) -> HostileHub:
    hostile.scenario, hostile.requests = Scenario(), []
    return hostile


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Deep folders for every root, so a four-level escape still lands inside `tmp_path` where it shows;
    huggingface_hub's cache, the zoo's hub and cache, and the temporary folder all live there."""
    base = tmp_path / "a" / "b" / "c"
    for name in ("hf", "hub", "cache", "tmp"):
        (base / name).mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HOME", str(base / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(base / "hf"))
    monkeypatch.setenv("HF_HOME", str(base / "hf_home"))
    monkeypatch.setenv("ZOO_HUB", str(base / "hub"))
    monkeypatch.setenv("ZOO_CACHE", str(base / "cache"))
    monkeypatch.setattr("tempfile.tempdir", str(base / "tmp"))
    return base


def files_under(root: Path) -> set[str]:
    """Every file and link under `root` (folders left out: an empty one may be made and kept)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink() or not p.is_dir()}


def assert_only_verified_blobs_added(place: Path, before: set[str]) -> None:
    """Nothing appeared under the test's root but blobs in huggingface_hub's cache, each holding the bytes its
    name hashes (a file that passed before another failed stays, as huggingface_hub keeps it); no snapshot,
    ref or tree listing appears."""
    root = place.parent.parent.parent
    added = files_under(root) - before
    assert {path for path in added if not path.startswith("a/b/c/hf/models--acme--x/blobs/")} == set()
    for path in added:
        data = (root / path).read_bytes()
        assert path.rsplit("/", 1)[1] in (git_blob_id(data), hashlib.sha256(data).hexdigest())


def point_at(server: HostileHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """What HF_ENDPOINT does when set before huggingface_hub is imported."""
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")


LIES = {
    "traversal sha": (Scenario(sha=ESCAPE), InvalidResponseError, "commit id '../../../../outside/x'"),
    "non-hex sha": (Scenario(sha="z" * 40), InvalidResponseError, "not 40 hex digits"),
    "upper-case sha": (Scenario(sha=COMMIT.upper()), InvalidResponseError, "not 40 hex digits"),
    "no sha": (Scenario(sha=None), InvalidResponseError, "commit id None"),
    "dotdot path": (Scenario(files=[ServedFile("../../x", b"x")]), InvalidResponseError, r"'\.\./\.\./x'.*'\.\.'"),
    "absolute path": (Scenario(files=[ServedFile("/etc/x", b"x")]), InvalidResponseError, "is absolute"),
    "inner dotdot": (Scenario(files=[ServedFile("a/../../x", b"x")]), InvalidResponseError, "segment"),
    "backslash path": (Scenario(files=[ServedFile("..\\..\\x", b"x")]), InvalidResponseError, "backslash"),
    "nul path": (Scenario(files=[ServedFile("a\0b", b"x")]), InvalidResponseError, "NUL"),
    "empty segment": (Scenario(files=[ServedFile("a//b", b"x")]), InvalidResponseError, "empty"),
    "long path": (Scenario(files=[ServedFile("a" * 300, b"x")]), InvalidResponseError, "longer than 255"),
    "file and folder": (Scenario(files=[ServedFile("a", b"x"), ServedFile("a/b", b"y")]), InvalidResponseError,
                        "both a file and a folder"),
    "listed twice": (Scenario(files=[ServedFile("a", b"x"), ServedFile("a", b"x")]), InvalidResponseError, "twice"),
    "malformed listing": (Scenario(tree=[{"type": "file", "path": "a"}]), InvalidResponseError, "malformed"),
    "bad size": (Scenario(tree=[{"type": "file", "path": "a", "size": -1, "oid": git_blob_id(b"")}]),
                 InvalidResponseError, "size -1"),
    "body over declared": (Scenario(files=[ServedFile("config.json", CONFIG),
                                           ServedFile("weights.bin", WEIGHTS, lfs=True, body=WEIGHTS * 100)]),
                           OversizedFileError, "more than the 16384 bytes"),
    "body under declared": (Scenario(files=[ServedFile("weights.bin", WEIGHTS, lfs=True, body=WEIGHTS[:100])]),
                            InvalidResponseError, "sent 100 bytes"),
    "other bytes": (Scenario(files=[ServedFile("weights.bin", WEIGHTS, lfs=True, body=WEIGHTS[::-1])]),
                    InvalidResponseError, "sha256"),
    "other text": (Scenario(files=[ServedFile("config.json", CONFIG, body=CONFIG.upper())]), InvalidResponseError,
                   "git blob id"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_download_refuses_each_lie_and_writes_nothing(server: HostileHub, place: Path, lie: str) -> None:
    scenario, error, message = LIES[lie]
    server.scenario = scenario
    before = files_under(place.parent.parent.parent)
    with pytest.raises(error, match=message) as caught:
        download(REPO, endpoint=server.endpoint, cache_dir=place / "hf")
    assert isinstance(caught.value, HubError) and "\n" not in str(caught.value)
    assert_only_verified_blobs_added(place, before)


def test_declared_over_the_limit_is_refused_before_any_file_is_asked(server: HostileHub, place: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "MAX_FILE_BYTES", 1000)
    with pytest.raises(OversizedFileError, match="weights.bin is declared 16384 bytes, over the limit of 1000"):
        download(REPO, endpoint=server.endpoint, cache_dir=place / "hf")
    assert not any("/resolve/" in request for request in server.requests)
    assert files_under(place) == set()


def test_an_honest_answer_downloads_and_lying_headers_name_nothing(server: HostileHub, place: Path) -> None:
    """The same server, honest listing: the download works (so the refusals above are the validation's),
    and the ETag / X-Repo-Commit headers that would send huggingface_hub's writes outside are never used."""
    server.scenario.resolve_headers = {"ETag": f'"{ESCAPE}"', "X-Linked-Etag": ESCAPE, "X-Repo-Commit": ESCAPE}
    folder = download(REPO, endpoint=server.endpoint, cache_dir=place / "hf")
    assert folder == place / "hf" / "models--acme--x" / "snapshots" / COMMIT
    assert {rel: (folder / rel).read_bytes() for rel in ("config.json", "weights.bin")} == {
        "config.json": CONFIG, "weights.bin": WEIGHTS}
    storage = place / "hf" / "models--acme--x"
    assert (storage / "refs" / "main").read_text() == COMMIT
    assert sorted(p.name for p in (storage / "blobs").iterdir()) == sorted(
        [git_blob_id(CONFIG), hashlib.sha256(WEIGHTS).hexdigest()])
    assert all(path.startswith("hf/") for path in files_under(place))
    # an unmodified huggingface_hub reads what was written, offline
    assert Path(snapshot_download(REPO, cache_dir=place / "hf", local_files_only=True)) == folder
    assert [r.split("?")[0] for r in server.requests] == [
        f"GET /api/models/{REPO}/revision/main", f"GET /api/models/{REPO}/tree/{COMMIT}",
        f"GET /{REPO}/resolve/{COMMIT}/config.json", f"GET /{REPO}/resolve/{COMMIT}/weights.bin"]


@pytest.fixture
def local_hub_with_v1(place: Path) -> tuple[LocalHub, str, dict[str, bytes]]:
    hub = LocalHub(place / "hub")
    (place / "v1").mkdir()
    (place / "v1" / "config.json").write_bytes(b'{"v": 1}')
    return hub, hub.push(REPO, place / "v1", message="v1"), {"config.json": b'{"v": 1}'}


def assert_hub_kept(hub: LocalHub, v1: str, files: dict[str, bytes]) -> None:
    assert hub.revisions(REPO) == [v1]
    snapshot = hub.snapshot(REPO)
    assert {rel: path.read_bytes() for rel, path in folder_files(snapshot).items()} == files
    assert not list(hub.root.rglob(".zoo-push-*"))


@pytest.mark.parametrize("lie", ["traversal sha", "dotdot path", "absolute path", "body over declared", "other bytes"])
def test_pull_refuses_and_keeps_the_local_hub(server: HostileHub, place: Path, lie: str,
                                             local_hub_with_v1: tuple[LocalHub, str, dict[str, bytes]]) -> None:
    hub, v1, files = local_hub_with_v1
    server.scenario = LIES[lie][0]
    before = files_under(place.parent.parent.parent)
    with pytest.raises(LIES[lie][1], match=LIES[lie][2]):
        pull(REPO, hub, endpoint=server.endpoint)
    assert files_under(place.parent.parent.parent) == before
    assert_hub_kept(hub, v1, files)
    assert list((place / "tmp").iterdir()) == []  # the download folder is gone


def test_pull_of_an_honest_answer_makes_a_revision(server: HostileHub, place: Path,
                                                   local_hub_with_v1: tuple[LocalHub, str, dict[str, bytes]]) -> None:
    hub, v1, _ = local_hub_with_v1
    server.scenario.resolve_headers = {"ETag": f'"{ESCAPE}"', "X-Repo-Commit": ESCAPE}
    v2 = pull(REPO, hub, endpoint=server.endpoint)
    assert hub.revisions(REPO) == [v1, v2]
    assert hub.file(REPO, "weights.bin").read_bytes() == WEIGHTS
    assert all(path.startswith("hub/") or path.startswith("v1/") for path in files_under(place))


@pytest.mark.parametrize("lie", ["traversal sha", "absolute path", "body over declared"])
def test_cli_pull_gives_one_line(server: HostileHub, place: Path, lie: str,
                                 local_hub_with_v1: tuple[LocalHub, str, dict[str, bytes]]) -> None:
    hub, v1, files = local_hub_with_v1
    server.scenario = LIES[lie][0]
    before = files_under(place.parent.parent.parent)
    result = CliRunner().invoke(main, ["pull", REPO, "--endpoint", server.endpoint, "--hub", str(hub.root),
                                       "--cache", str(place / "cache")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {LIES[lie][1].__name__}: ") and REPO in line and re.search(LIES[lie][2], line)
    assert files_under(place.parent.parent.parent) == before
    assert_hub_kept(hub, v1, files)


@pytest.mark.parametrize("lie", ["traversal sha", "non-hex sha", "dotdot path", "absolute path", "body over declared"])
def test_load_by_hub_id_refuses(server: HostileHub, place: Path, lie: str, monkeypatch: pytest.MonkeyPatch) -> None:
    point_at(server, monkeypatch)
    server.scenario = LIES[lie][0]
    before = files_under(place.parent.parent.parent)
    with pytest.raises(LIES[lie][1], match=LIES[lie][2]) as caught:
        zoo.load(f"hf-hub:{REPO}")
    assert "\n" not in str(caught.value)
    assert_only_verified_blobs_added(place, before)


@pytest.mark.parametrize("revision", ["../x", "/etc", "a\\b", ""])
def test_a_revision_that_would_name_a_path_outside_is_refused(place: Path, revision: str) -> None:
    with pytest.raises(InvalidArgumentError, match="revision"):
        download(REPO, revision=revision, endpoint="http://127.0.0.1:9", cache_dir=place / "hf")


# A pushed folder's links (LocalHub.push, zoo.hub.upload, folder_files) -------------------------------------

@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_bytes(b"not for the hub\n")
    return path


def folder_with(tmp_path: Path, make_link) -> Path:
    folder = tmp_path / "repo"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_bytes(b"{}")
    make_link(folder)
    return folder


OUTSIDE_LINKS = {
    "absolute to a file outside": lambda folder, secret: (folder / "leak.txt").symlink_to(secret),
    "relative climbing out": lambda folder, secret: (folder / "sub" / "leak.txt").symlink_to("../../secret.txt"),
    "to /etc/passwd": lambda folder, secret: (folder / "passwd").symlink_to("/etc/passwd"),
    "inside link to an outside link": lambda folder, secret: (
        (folder / "sub" / "hop").symlink_to(secret), (folder / "leak.txt").symlink_to("sub/hop")),
    "to a folder outside": lambda folder, secret: (folder / "etc").symlink_to(secret.parent),
    "to a folder inside": lambda folder, secret: (folder / "again").symlink_to("sub"),
    "to its own folder (a cycle)": lambda folder, secret: (folder / "sub" / "loop").symlink_to(".."),
}


@pytest.mark.parametrize("case", sorted(OUTSIDE_LINKS))
def test_push_refuses_links_leaving_the_folder_or_to_folders(tmp_path: Path, secret: Path, case: str) -> None:
    folder = folder_with(tmp_path, lambda f: OUTSIDE_LINKS[case](f, secret))
    hub = LocalHub(tmp_path / "hub")
    with pytest.raises(InvalidArgumentError, match="outside|link to a folder") as caught:
        hub.push(REPO, folder)
    assert "\n" not in str(caught.value)
    assert hub.list_repos() == [] and not any(p.is_file() and p.read_bytes() == secret.read_bytes()
                                              for p in (tmp_path / "hub").rglob("*"))
    with pytest.raises(InvalidArgumentError):  # upload checks the folder before any request
        remote.upload(folder, REPO, endpoint="http://127.0.0.1:9", message="m")


def test_push_follows_a_link_to_a_file_inside(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, lambda f: (f / "alias.json").symlink_to("config.json"))
    hub = LocalHub(tmp_path / "hub")
    hub.push(REPO, folder)
    assert hub.file(REPO, "alias.json").read_bytes() == b"{}" and not hub.file(REPO, "alias.json").resolve() \
        .is_relative_to(folder)


def test_a_snapshot_may_link_into_its_own_blobs_only(tmp_path: Path, secret: Path) -> None:
    """A Hub-cache snapshot's files link into ../../blobs (the layout's own): followed; any other link
    leaving the snapshot, even into another repo's blobs, is refused."""
    hub = LocalHub(tmp_path / "hub")
    hub.push(REPO, folder_with(tmp_path, lambda f: None))
    hub.push("acme/other", folder_with(tmp_path / "o", lambda f: (f / "o.txt").write_text("o")))
    snapshot = hub.snapshot(REPO)
    assert set(folder_files(snapshot)) == {"config.json"}
    (snapshot / "other.txt").symlink_to(hub.file("acme/other", "o.txt").resolve())
    with pytest.raises(InvalidArgumentError, match="outside"):
        folder_files(snapshot)
    (snapshot / "other.txt").unlink()
    (snapshot / "leak.txt").symlink_to(secret)
    with pytest.raises(InvalidArgumentError, match="outside"):
        folder_files(snapshot)
