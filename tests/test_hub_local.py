"""LocalHub: versioned pushes, typed lookups, crash safety, and offline reads by an unmodified huggingface_hub."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import get_cached_repo_tree, hf_hub_download, scan_cache_dir, snapshot_download

import zoo.hub.local as local
from zoo.errors import HubError, InvalidArgumentError, UnknownNameError
from zoo.hub import LocalHub, RepoFileNotFoundError, RevisionNotFoundError, UnknownRepoError, default_hub_root

REPO = "acme/demo"
V1 = {"config.json": b'{"a": 1}', "weights/model.bin": bytes(range(256)) * 8, "README.md": b"# demo\n"}
V2 = {**V1, "config.json": b'{"a": 2}', "extra.txt": b"new file\n"}


def git_blob_sha1(data: bytes) -> str:
    """`git hash-object` of `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def read_folder(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(tmp_path: Path) -> LocalHub:
    return LocalHub(tmp_path / "hub")


@pytest.fixture
def two_revisions(hub: LocalHub, tmp_path: Path) -> tuple[str, str]:
    r1 = hub.push(REPO, write_folder(tmp_path / "v1", V1), message="first")
    r2 = hub.push(REPO, write_folder(tmp_path / "v2", V2), message="second")
    return r1, r2


def test_push_makes_revisions_and_keeps_old_ones(hub: LocalHub, two_revisions: tuple[str, str]) -> None:
    r1, r2 = two_revisions
    # a revision is the sha1 of its commit record, which names each file's blob as the Hub would
    for revision, files, parent, message in ((r1, V1, None, "first"), (r2, V2, r1, "second")):
        record_text = (hub.root / "models--acme--demo" / "zoo-commits" / f"{revision}.json").read_text()
        record = json.loads(record_text)
        assert hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest() == revision
        assert (record["parent"], record["message"]) == (parent, message)
        binary = {"weights/model.bin"}  # LFS on the Hub: named by sha256; text files by their git blob id
        assert record["files"] == {rel: hashlib.sha256(data).hexdigest() if rel in binary else git_blob_sha1(data)
                                   for rel, data in files.items()}
    assert hub.revisions(REPO) == [r1, r2]
    assert hub.list_repos() == [REPO]
    assert read_folder(hub.snapshot(REPO)) == V2
    assert hub.snapshot(REPO) == hub.snapshot(REPO, r2)
    assert read_folder(hub.snapshot(REPO, r1)) == V1
    assert hub.file(REPO, "weights/model.bin", r1).read_bytes() == V1["weights/model.bin"]
    assert hub.has(REPO) and hub.has(REPO, r1) and not hub.has(REPO, "0" * 40) and not hub.has("acme/other")


def test_identical_push_makes_no_empty_revision(hub: LocalHub, two_revisions: tuple[str, str],
                                                tmp_path: Path) -> None:
    again = hub.push(REPO, write_folder(tmp_path / "again", V2), message="same bytes")
    assert again == two_revisions[1]
    assert hub.revisions(REPO) == list(two_revisions)


def test_unmodified_huggingface_hub_reads_it_offline(hub: LocalHub, two_revisions: tuple[str, str]) -> None:
    r1, r2 = two_revisions
    root = hub.root
    latest = hf_hub_download(REPO, "config.json", cache_dir=root, local_files_only=True)
    assert Path(latest).read_bytes() == V2["config.json"]
    old = hf_hub_download(REPO, "weights/model.bin", revision=r1, cache_dir=root, local_files_only=True)
    assert Path(old).read_bytes() == V1["weights/model.bin"]
    snap = snapshot_download(REPO, cache_dir=root, local_files_only=True)
    assert Path(snap) == hub.snapshot(REPO) and read_folder(Path(snap)) == V2
    assert read_folder(Path(snapshot_download(REPO, revision=r1, cache_dir=root, local_files_only=True))) == V1
    tree = {f.path: f for f in get_cached_repo_tree(REPO, revision=r1, cache_dir=root)}
    assert set(tree) == set(V1) and tree["README.md"].size == len(V1["README.md"])
    assert tree["README.md"].blob_id == "fc72a5c1094e203eefcd1c710f060957ebbbaac4"  # `git hash-object`
    info = scan_cache_dir(root)
    assert info.warnings == []
    (repo,) = info.repos
    assert repo.repo_id == REPO and set(repo.refs) == {"main"} and repo.refs["main"].commit_hash == r2
    assert {rev.commit_hash for rev in repo.revisions} == {r1, r2}


def test_blobs_are_named_like_the_hubs_etags(hub: LocalHub, tmp_path: Path) -> None:
    big_text = b"0123456789abcdef\n" * (10 * 1024 * 1024 // 17 + 1)  # >= 10 MiB: LFS even if text
    files = {"text.txt": b"hello", "binary.bin": b"\0\1\2", "big.txt": big_text}
    hub.push(REPO, write_folder(tmp_path / "f", files))
    names = {rel: hub.file(REPO, rel).resolve().name for rel in files}
    assert names["text.txt"] == "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"  # git blob sha1 of "hello"
    assert names["binary.bin"] == hashlib.sha256(b"\0\1\2").hexdigest()
    assert names["big.txt"] == hashlib.sha256(big_text).hexdigest()
    assert not hub.file(REPO, "text.txt").resolve().is_relative_to(tmp_path / "f")


def test_unknown_names_raise_typed_errors_with_suggestions(hub: LocalHub, two_revisions: tuple[str, str]) -> None:
    with pytest.raises(UnknownRepoError, match="did you mean acme/demo") as err:
        hub.snapshot("acme/dmeo")
    assert isinstance(err.value, HubError) and isinstance(err.value, UnknownNameError)
    with pytest.raises(UnknownRepoError):
        hub.revisions("acme/nothing")
    with pytest.raises(RevisionNotFoundError, match="no revision 'v1'"):
        hub.snapshot(REPO, "v1")
    with pytest.raises(RevisionNotFoundError):
        hub.file(REPO, "config.json", "f" * 40)
    with pytest.raises(RepoFileNotFoundError, match="did you mean config.json") as file_err:
        hub.file(REPO, "config.jsn")
    assert isinstance(file_err.value, HubError)
    with pytest.raises(InvalidArgumentError):
        hub.snapshot(REPO, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["demo", "a/b/c", "acme--x/demo", "acme/demo.git", "acme/..demo", "acme/-demo",
                                 "acme/dé", "", None])
def test_invalid_repo_ids_are_refused(hub: LocalHub, tmp_path: Path, bad: object) -> None:
    folder = write_folder(tmp_path / "f", {"a": b"a"})
    with pytest.raises(InvalidArgumentError):
        hub.push(bad, folder)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        hub.has(bad)  # type: ignore[arg-type]
    assert not (tmp_path / "hub").exists()


def test_push_refuses_bad_folders_and_skips_git(hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="not a folder"):
        hub.push(REPO, tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InvalidArgumentError, match="no files"):
        hub.push(REPO, tmp_path / "empty")
    dangling = write_folder(tmp_path / "dangling", {"a": b"a"})
    (dangling / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidArgumentError, match="dangling"):
        hub.push(REPO, dangling)
    with pytest.raises(InvalidArgumentError, match="message"):
        hub.push(REPO, write_folder(tmp_path / "ok", {"a": b"a"}), message=None)  # type: ignore[arg-type]
    with_git = write_folder(tmp_path / "with_git", {"a.txt": b"a", ".git/HEAD": b"ref", "s/.git/x": b"x"})
    hub.push(REPO, with_git)
    assert read_folder(hub.snapshot(REPO)) == {"a.txt": b"a"}


def test_failed_push_leaves_previous_revision_untouched(hub: LocalHub, two_revisions: tuple[str, str],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = hub.root / "models--acme--demo"
    before = sorted(p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*"))
    real_copy, seen = local._copy_hashing, []

    def copy_then_fail(src: Path, dst: Path) -> local._Blob:
        seen.append(src)
        if len(seen) == 2:  # half way: one file copied, readers must still see the old revision
            assert hub.revisions(REPO) == list(two_revisions) and read_folder(hub.snapshot(REPO)) == V2
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(local, "_copy_hashing", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        hub.push(REPO, write_folder(tmp_path / "v3", {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"}))
    assert len(seen) == 2
    assert sorted(p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*")) == before
    assert hub.revisions(REPO) == list(two_revisions) and read_folder(hub.snapshot(REPO)) == V2
    assert Path(hf_hub_download(REPO, "config.json", cache_dir=hub.root, local_files_only=True)).read_bytes() \
        == V2["config.json"]


def test_failed_first_push_leaves_no_repo(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_copy(src: Path, dst: Path) -> local._Blob:
        raise OSError("disk full")

    monkeypatch.setattr(local, "_copy_hashing", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        hub.push(REPO, write_folder(tmp_path / "v1", V1))
    assert hub.list_repos() == [] and not hub.has(REPO)
    info = scan_cache_dir(hub.root)
    assert info.warnings == [] and [len(repo.revisions) for repo in info.repos] == [0]


def test_new_revision_is_complete_before_main_moves(hub: LocalHub, two_revisions: tuple[str, str],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_publish, checked = local._publish_ref, []
    v3 = {"a.txt": b"a", "deep/b.bin": b"\0b"}

    def check_then_publish(staged: Path, ref: Path) -> None:
        new_revision = staged.read_text()
        assert hub.revisions(REPO) == list(two_revisions) and read_folder(hub.snapshot(REPO)) == V2
        assert read_folder(hub.root / "models--acme--demo" / "snapshots" / new_revision) == v3
        checked.append(new_revision)
        real_publish(staged, ref)

    monkeypatch.setattr(local, "_publish_ref", check_then_publish)
    r3 = hub.push(REPO, write_folder(tmp_path / "v3", v3))
    assert checked == [r3] and hub.revisions(REPO) == [*two_revisions, r3]


KILLED_PUSH = textwrap.dedent("""
    import os, sys
    import zoo.hub.local as local
    root, folder, point = sys.argv[1:]
    real_copy, calls = local._copy_hashing, []
    def copy_then_die(src, dst):
        calls.append(src)
        if len(calls) == 2:
            os._exit(9)
        return real_copy(src, dst)
    if point == "copy":
        local._copy_hashing = copy_then_die
    else:
        local._publish_ref = lambda staged, ref: os._exit(9)
    local.LocalHub(root).push("acme/demo", folder, message="killed")
""")


@pytest.mark.parametrize("point", ["copy", "before-ref"])
def test_killed_push_leaves_previous_revision_and_next_push_works(
        hub: LocalHub, two_revisions: tuple[str, str], tmp_path: Path, point: str) -> None:
    v3 = write_folder(tmp_path / "v3", {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"})
    done = subprocess.run([sys.executable, "-c", KILLED_PUSH, str(hub.root), str(v3), point], capture_output=True)
    assert done.returncode == 9, done.stderr.decode()
    repo_dir = hub.root / "models--acme--demo"
    assert list(repo_dir.glob(".zoo-push-*")), "a kill leaves its work folder behind"
    assert hub.revisions(REPO) == list(two_revisions) and read_folder(hub.snapshot(REPO)) == V2
    assert read_folder(Path(snapshot_download(REPO, cache_dir=hub.root, local_files_only=True))) == V2
    assert scan_cache_dir(hub.root).warnings == []
    r3 = hub.push(REPO, v3)
    assert hub.revisions(REPO) == [*two_revisions, r3] and read_folder(hub.snapshot(REPO)) == read_folder(v3)
    assert not list(repo_dir.glob(".zoo-push-*")), "the next push sweeps stale work folders"


def test_concurrent_pushes_are_serialized(hub: LocalHub, two_revisions: tuple[str, str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real_copy = local._copy_hashing

    def slow_copy(src: Path, dst: Path) -> local._Blob:
        time.sleep(0.1)  # widen the window in which an unlocked push would read a stale parent
        return real_copy(src, dst)

    monkeypatch.setattr(local, "_copy_hashing", slow_copy)
    folders = [write_folder(tmp_path / f"c{i}", {"x.txt": f"{i}".encode()}) for i in range(2)]
    threads = [threading.Thread(target=hub.push, args=(REPO, folder)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(hub.revisions(REPO)) == 4
    assert hub.revisions(REPO)[:2] == list(two_revisions)


def test_default_root_comes_from_zoo_hub_or_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_HUB", str(tmp_path / "elsewhere"))
    assert default_hub_root() == tmp_path / "elsewhere" and LocalHub().root == tmp_path / "elsewhere"
    monkeypatch.delenv("ZOO_HUB")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_hub_root() == tmp_path / "home" / ".cache" / "zoo" / "hub"
    assert LocalHub().list_repos() == []
    assert not os.path.exists(tmp_path / "home")
