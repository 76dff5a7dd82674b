"""The zoo's embedded hub: a folder laid out exactly like the Hugging Face Hub cache, written atomically.

An unmodified huggingface_hub reads it offline, with the hub's root as its cache:
`hf_hub_download(repo_id, filename, cache_dir=root, local_files_only=True)` and
`snapshot_download(repo_id, cache_dir=root, local_files_only=True)`. Per repo:

    root/models--{org}--{name}/
        blobs/<id>                   file contents. id = sha256 for LFS-like files (binary, or 10 MiB and
                                     more: what the Hub keeps in LFS/Xet), git blob sha1 for the others:
                                     the ETag the Hub serves for the same file, hence the name the HF
                                     cache gives it
        snapshots/<revision>/...     one folder per revision, relative symlinks into ../../blobs
        refs/main                    the revision `main` points at (40 hex, no newline, as HF writes it)
        trees/<revision>.json        huggingface_hub's tree-listing cache (format 1); its offline
                                     snapshot_download uses it to check a snapshot is complete
        zoo-commits/<revision>.json  the zoo's log: parent, message, time and files of each revision
        .zoo-push-<random>/          work folder of a push in flight; the next push of the repo sweeps it
    root/.locks/zoo/<repo folder>.lock   a repo's push lock
    root/.locks/zoo-staging/push-<random>/   where `zoo push` assembles a repo before pushing it (here or to
                                     a Hub); one a killed push left is swept by the next (zoo.locks.scratch_folder)

A revision is a 40-hex id (the sha1 of its commit record), shaped like a Hub commit id; it is not a
git commit. Crash safety: a push copies and hashes every file into its work folder, then moves blobs,
records and the finished snapshot folder into place with `os.replace`/`os.rename`, and moves
`refs/main` last, again by `os.replace`. Until that last step the new revision is invisible to
`revisions`/`snapshot`, and `main` keeps pointing at a complete snapshot, so an exception or a kill at
any point leaves the previous revision intact. Durability: every blob, record and snapshot link, and
the folders that name them, are fsynced before `refs/main` moves (and the ref after), so a power cut
cannot leave `main` naming a revision whose files were never written. Pushes to one repo are serialized by a file lock under
`root/.locks/` (a folder HF's cache scanner skips).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock
from huggingface_hub.errors import HFValidationError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from huggingface_hub.utils import validate_repo_id as _hf_validate_repo_id

from zoo.atomic import atomic_write_json, fsync_path
from zoo.errors import HubError, InvalidArgumentError
from zoo.hub.errors import RepoFileNotFoundError, RevisionNotFoundError, UnknownRepoError

_MAIN = "main"
_REPO_PREFIX = "models--"
_COMMITS = "zoo-commits"
_WORK_PREFIX = ".zoo-push-"
COMMIT_ID = re.compile(r"[0-9a-f]{40}")  # a commit id (the Hub's, and the local hub's revision ids)
_LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub refuses plain-git files from 10 MiB on
_BINARY_PROBE = 8000  # git's binary heuristic: a NUL byte in the first 8000 bytes
_CHUNK = 1 << 20
_TREE_FORMAT = 1  # huggingface_hub._tree_cache.TREE_CACHE_FORMAT_VERSION


def default_hub_root() -> Path:
    """The local hub's default folder: `$ZOO_HUB` if set, else `~/.cache/zoo/hub`."""
    return Path(os.environ.get("ZOO_HUB") or "~/.cache/zoo/hub").expanduser()


def validate_repo_id(repo_id: object) -> str:
    """Return `repo_id` if it is `org/name` under the Hub's rules, else raise InvalidArgumentError."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InvalidArgumentError(f"repo id must be 'org/name', got {repo_id!r}")
    try:
        _hf_validate_repo_id(repo_id)
    except HFValidationError as error:
        raise InvalidArgumentError(f"invalid repo id {repo_id!r}: {error}") from None
    return repo_id


def folder_files(folder: Path | str) -> dict[str, Path]:
    """Map repo path -> file for every file under `folder`, sorted.

    A symlink to a file is followed only when its target (the whole chain) lies inside `folder`, so a link
    to /etc/passwd is never pushed or uploaded as part of it; in a Hub-cache snapshot folder
    (`<repo>/snapshots/<revision>`, the local hub's and huggingface_hub's), links into that repo's
    `blobs/` are the layout's own and followed too. A symlink to a folder is never followed (which also
    rules out link cycles): it is refused. Skips `.git/` and `.cache/huggingface/` exactly as
    huggingface_hub's uploads do. Raises InvalidArgumentError for a missing or empty folder, a link
    leaving it or to a folder, or an entry that is not a regular file (a dangling link, a FIFO).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidArgumentError(f"{folder} is not a folder")
    real = folder.resolve()
    roots = [real] + ([real.parent.parent / "blobs"] if real.parent.name == "snapshots" else [])
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):  # does not descend into links to folders
        dirnames[:] = sorted(name for name in dirnames if name != ".git")
        for name in dirnames:
            if Path(dirpath, name).is_symlink():
                raise InvalidArgumentError(f"{Path(dirpath, name)} is a link to a folder; links to folders are "
                                           "not followed: copy the folder in instead")
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink() and not any(path.resolve().is_relative_to(root) for root in roots):
                raise InvalidArgumentError(f"{path} is a link to {path.resolve()}, outside {folder}; "
                                           "only links to files inside it are followed")
            if not path.is_file():
                raise InvalidArgumentError(f"{path} is not a regular file (a dangling link?)")
            found[path.relative_to(folder).as_posix()] = path
    kept = filter_repo_objects(found, ignore_patterns=DEFAULT_IGNORE_PATTERNS)
    files = {rel: found[rel] for rel in sorted(kept)}
    if not files:
        raise InvalidArgumentError(f"{folder} holds no files")
    return files


@dataclass(frozen=True)
class _Blob:
    """One file's content identity, as the Hub would name and describe it."""

    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    @property
    def name(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1

    def tree_entry(self) -> dict:
        """The file's entry in huggingface_hub's tree-listing cache (blob_id: git id of what git stores)."""
        if not self.lfs:
            return {"size": self.size, "blob_id": self.git_sha1}
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
        pointer_id = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer.encode()).hexdigest()
        return {"size": self.size, "blob_id": pointer_id, "lfs_sha256": self.sha256, "lfs_size": self.size}


@dataclass(frozen=True)
class _Commit:
    """A revision's record; its sha1 is the revision id."""

    parent: str | None
    message: str
    created: str
    files: dict[str, str]  # repo path -> blob name

    def revision_id(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def _copy_hashing(src: Path, dst: Path) -> _Blob:
    """Copy `src` to the new file `dst` in one pass, hashing what is written (sha256 and git sha1)."""
    size = src.stat().st_size
    sha256, git_sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    copied, binary = 0, False
    with src.open("rb") as fin, dst.open("xb") as fout:
        while chunk := fin.read(_CHUNK):
            if copied < _BINARY_PROBE:
                binary = binary or b"\0" in chunk[: _BINARY_PROBE - copied]
            sha256.update(chunk)
            git_sha1.update(chunk)
            fout.write(chunk)
            copied += len(chunk)
    if copied != size:
        raise HubError(f"{src} changed while being pushed ({size} bytes, then {copied})")
    return _Blob(size, sha256.hexdigest(), git_sha1.hexdigest(), lfs=binary or size >= _LFS_MIN_SIZE)


class LocalHub:
    """A Hub-cache-shaped folder of model repos with versioned, atomic pushes (see the module doc)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root is not None else default_hub_root()

    def __repr__(self) -> str:
        return f"LocalHub({str(self.root)!r})"

    @property
    def staging_root(self) -> Path:
        """Where repos are assembled before a push (under `.locks/`, which HF's cache scanner skips)."""
        return self.root / ".locks" / "zoo-staging"

    # ---- reading -------------------------------------------------------------------------------
    def list_repos(self) -> list[str]:
        """Ids of the repos that have at least one revision, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name[len(_REPO_PREFIX):].replace("--", "/")
            for entry in self.root.iterdir()
            if entry.name.startswith(_REPO_PREFIX) and (entry / "refs" / _MAIN).is_file()
            and (entry / _COMMITS).is_dir()
        )

    def revisions(self, repo_id: str) -> list[str]:
        """Revision ids of `repo_id`, oldest first, the last one being `main`."""
        repo_dir = self._repo_dir(repo_id)
        chain: list[str] = []
        revision = self._head(repo_id, repo_dir)
        while revision is not None:
            if revision in chain:
                raise HubError(f"{repo_id} is corrupted: its history loops at revision {revision}")
            chain.append(revision)
            revision = self._commit(repo_id, repo_dir, revision).parent
        return chain[::-1]

    def has(self, repo_id: str, revision: str = _MAIN) -> bool:
        """Whether `repo_id` exists with `revision` ("main" or a revision id); bad ids still raise."""
        try:
            self._resolve(repo_id, revision)
        except (UnknownRepoError, RevisionNotFoundError):
            return False
        return True

    def snapshot(self, repo_id: str, revision: str = _MAIN) -> Path:
        """Folder holding the files of `revision` ("main" or a revision id) of `repo_id`."""
        repo_dir, revision, _ = self._resolve(repo_id, revision)
        folder = repo_dir / "snapshots" / revision
        if not folder.is_dir():
            raise HubError(f"{repo_id} is corrupted: revision {revision} has no snapshot folder")
        return folder

    def file(self, repo_id: str, filename: str, revision: str = _MAIN) -> Path:
        """Path of one file of a revision; RepoFileNotFoundError (with close names) if it has none."""
        repo_dir, revision, commit = self._resolve(repo_id, revision)
        if filename not in commit.files:
            raise RepoFileNotFoundError(f"{repo_id}@{revision}", filename, commit.files)
        return repo_dir / "snapshots" / revision / filename

    # ---- writing -------------------------------------------------------------------------------
    def push(self, repo_id: str, folder: Path | str, *, message: str = "") -> str:
        """Store every file of `folder` as one new revision of `repo_id` and move `main` to it.

        Returns the new revision id. Earlier revisions stay loadable. Like the Hub, a push whose files
        are byte for byte those of `main` makes no empty revision and returns `main`'s id.
        """
        repo_dir = self._repo_dir(repo_id)
        if not isinstance(message, str):
            raise InvalidArgumentError(f"push message must be a string, got {type(message).__name__}")
        files = folder_files(folder)
        (repo_dir / "snapshots").mkdir(parents=True, exist_ok=True)  # HF's scanner wants it, even when empty
        lock_path = self.root / ".locks" / "zoo" / f"{repo_dir.name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path):
            for stale in repo_dir.glob(f"{_WORK_PREFIX}*"):  # left by a killed push; we hold the lock
                shutil.rmtree(stale)
            work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=repo_dir))
            try:
                return self._push_locked(repo_id, repo_dir, files, message, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _push_locked(self, repo_id: str, repo_dir: Path, files: dict[str, Path], message: str,
                     work: Path) -> str:
        parent = self._read_ref(repo_dir)
        staged = work / "blobs"
        staged.mkdir()
        blobs = {rel: _copy_hashing(src, staged / str(i)) for i, (rel, src) in enumerate(files.items())}
        created = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        commit = _Commit(parent, message, created, {rel: blob.name for rel, blob in blobs.items()})
        if parent is not None and self._commit(repo_id, repo_dir, parent).files == commit.files:
            return parent
        revision = commit.revision_id()

        blobs_dir = repo_dir / "blobs"
        snapshot = work / "snapshot"  # same depth below repo_dir as snapshots/<revision>: links stay valid
        for rel, blob in blobs.items():
            link = snapshot / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blobs_dir / blob.name, link.parent), link)
        tree = {"format_version": _TREE_FORMAT, "files": {rel: blob.tree_entry() for rel, blob in blobs.items()}}
        atomic_write_json(work / "tree.json", tree, indent=1, sort_keys=True)
        atomic_write_json(work / "commit.json", asdict(commit), indent=1, sort_keys=True)
        (work / "ref").write_text(revision, encoding="utf-8")

        for name in ("blobs", "trees", _COMMITS, "snapshots", "refs"):
            (repo_dir / name).mkdir(exist_ok=True)
        for i, blob in enumerate(blobs.values()):
            target = blobs_dir / blob.name
            if not target.exists():  # content-addressed: an existing blob already holds these bytes
                fsync_path(staged / str(i))
                os.replace(staged / str(i), target)
        fsync_path(blobs_dir)
        for folder in sorted({link.parent for link in snapshot.rglob("*")} | {snapshot}, reverse=True):
            fsync_path(folder)  # the snapshot's links (the records were fsynced by atomic_write_json)
        os.replace(work / "tree.json", repo_dir / "trees" / f"{revision}.json")
        os.replace(work / "commit.json", repo_dir / _COMMITS / f"{revision}.json")
        os.rename(snapshot, repo_dir / "snapshots" / revision)
        for name in ("trees", _COMMITS, "snapshots"):
            fsync_path(repo_dir / name)  # the renames above, durable before main names the revision
        _publish_ref(work / "ref", repo_dir / "refs" / _MAIN)
        return revision

    # ---- internals -----------------------------------------------------------------------------
    def _repo_dir(self, repo_id: str) -> Path:
        return self.root / repo_folder_name(repo_id=validate_repo_id(repo_id), repo_type="model")

    @staticmethod
    def _read_ref(repo_dir: Path) -> str | None:
        ref = repo_dir / "refs" / _MAIN
        if not ref.is_file():
            return None
        revision = ref.read_text(encoding="utf-8")
        if not COMMIT_ID.fullmatch(revision):
            raise HubError(f"{ref} is corrupted: {revision[:60]!r} is not a revision id")
        return revision

    def _head(self, repo_id: str, repo_dir: Path) -> str:
        head = self._read_ref(repo_dir)
        if head is None:
            raise UnknownRepoError(repo_id, self.list_repos())
        return head

    @staticmethod
    def _commit(repo_id: str, repo_dir: Path, revision: str) -> _Commit:
        path = repo_dir / _COMMITS / f"{revision}.json"
        try:
            return _Commit(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise HubError(f"{repo_id} is not a zoo hub repo or is corrupted: no record of {revision}") from None
        except (ValueError, TypeError) as error:
            raise HubError(f"{path} is corrupted: {error}") from None

    def _resolve(self, repo_id: str, revision: str) -> tuple[Path, str, _Commit]:
        repo_dir = self._repo_dir(repo_id)
        head = self._head(repo_id, repo_dir)
        if not isinstance(revision, str):
            raise InvalidArgumentError(f"revision must be a string, got {type(revision).__name__}")
        if revision == _MAIN:
            resolved = head
        elif COMMIT_ID.fullmatch(revision) and revision in self.revisions(repo_id):
            resolved = revision
        else:
            raise RevisionNotFoundError(
                f"{repo_id} has no revision {revision!r}: give 'main' or one of its "
                f"{len(self.revisions(repo_id))} revision ids (main is {head})"
            )
        return repo_dir, resolved, self._commit(repo_id, repo_dir, resolved)


def _publish_ref(staged: Path, ref: Path) -> None:
    """Point a ref at a new revision in one step, durably: the last move of a push."""
    fsync_path(staged)
    os.replace(staged, ref)
    fsync_path(ref.parent)
