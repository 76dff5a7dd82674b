"""The real Hugging Face Hub path: download, pull into the local hub, upload, through huggingface_hub.

`endpoint=None` and `token=None` leave the choice to huggingface_hub (HF_ENDPOINT, HF_TOKEN or the
stored login). Every huggingface_hub failure leaves as a typed HubError (see zoo.hub.errors) with a
one-line message; the original error stays chained as `__cause__`. Nothing here touches the network
at import time.

The endpoint is not trusted with paths. huggingface_hub's own `snapshot_download` names cache files
after what the server answers (`trees/<sha>.json`, `snapshots/<sha>/<path>`, `blobs/<etag>`,
`.no_exist/<X-Repo-Commit>/...`) without checking it, so a hostile endpoint could write outside the
cache. `download` therefore asks for the revision's commit id and file listing itself (HfApi), refuses
any answer that is not a 40-hex commit id or a plain relative path (`validate_listing`), then fetches
each listed file by its validated commit and path over huggingface_hub's HTTP session into a temporary
file, refusing more bytes than the listing declares (and any file declared over `MAX_FILE_BYTES`),
checks its hash against the listing (sha256 for LFS files, the git blob id for others), and only then
moves it into the Hugging Face cache layout under a name the zoo computed. Nothing the server sends
after the listing names a path. An answer refused is an `InvalidResponseError` (`OversizedFileError`
for sizes), one line.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_url, snapshot_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers

from zoo.atomic import atomic_path, atomic_write_json, atomic_write_text
from zoo.errors import HubError, InvalidArgumentError
from zoo.hub.errors import (
    HubConnectionError,
    InvalidResponseError,
    OversizedFileError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from zoo.hub.local import COMMIT_ID, LocalHub, folder_files, validate_repo_id

_MAIN = "main"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _is_transport_error(error: BaseException | None) -> bool:
    """A failure below HTTP (refused, timed out, offline mode), not a server's answer."""
    return isinstance(error, (hf_errors.OfflineModeIsEnabled, ConnectionError, TimeoutError)) or (
        isinstance(error, hf_errors.HTTPError) and not isinstance(error, hf_errors.HfHubHTTPError)
    )


@contextmanager
def _hub_errors(action: str, repo_id: str, revision: str | None, endpoint: str | None) -> Iterator[None]:
    """Translate huggingface_hub's errors raised inside the block into typed one-line HubErrors."""
    where = hub_url(endpoint)
    what = f"{action} {repo_id}" + (f"@{revision}" if revision is not None else "")
    try:
        yield
    except hf_errors.HFValidationError as error:
        raise InvalidArgumentError(f"{what}: {_first_line(error)}") from error
    except hf_errors.RevisionNotFoundError as error:
        raise RevisionNotFoundError(f"{what}: revision {revision!r} not found at {where}") from error
    except hf_errors.RepositoryNotFoundError as error:
        either = "repository" if revision in (None, _MAIN) else f"repository or its revision {revision!r}"
        raise RepoNotFoundError(
            f"{what}: {either} not found at {where} (if it is private or gated, pass a token that can read it)"
        ) from error
    except hf_errors.LocalEntryNotFoundError as error:  # the listing failed and nothing is cached
        cause = error.__cause__
        if _is_transport_error(cause):
            raise HubConnectionError(f"{what}: cannot reach {where}: {_first_line(cause)}") from error
        if isinstance(cause, hf_errors.EntryNotFoundError):  # no file tree for that revision
            raise RevisionNotFoundError(f"{what}: revision {revision!r} not found at {where}") from error
        raise HubError(f"{what} failed: {_first_line(cause or error)}") from error
    except hf_errors.LocalTokenNotFoundError as error:
        raise HubError(f"{what}: no token; pass token= or set HF_TOKEN") from error
    except hf_errors.HfHubHTTPError as error:
        detail = f" ({error.server_message.strip()})" if error.server_message else ""
        raise HubError(f"{what} failed at {where}: {_first_line(error)}{detail}") from error
    except Exception as error:
        if _is_transport_error(error):
            raise HubConnectionError(f"{what}: cannot reach {where}: {_first_line(error)}") from error
        raise


def hub_url(endpoint: str | None = None) -> str:
    """The Hub `endpoint` names, or huggingface_hub's default one (HF_ENDPOINT, else huggingface.co)."""
    return (endpoint or constants.ENDPOINT).rstrip("/")


# What an endpoint may answer ----------------------------------------------------------------------------

MAX_FILE_BYTES = constants.MAX_HTTP_DOWNLOAD_SIZE  # 50 GB: the most the Hub serves over plain HTTP
MAX_FILES = 100_000  # files in one revision's listing
MAX_PATH_CHARS = 1024  # a repo path, all segments
MAX_SEGMENT_BYTES = 255  # one segment, UTF-8: the usual file-name limit
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_commit_id(value: object, where: str) -> str:
    """`value` if it is a commit id (40 lowercase hex digits), else InvalidResponseError."""
    if not isinstance(value, str) or not COMMIT_ID.fullmatch(value):
        raise InvalidResponseError(f"{where}: the endpoint answered commit id {_shown(value)}, not 40 hex digits")
    return value


def check_repo_path(value: object, where: str) -> str:
    """`value` if it is a plain relative repo path ('a/b.json'), else InvalidResponseError: no absolute
    path, no '.' or '..' or empty segment, no backslash, NUL or other control character, bounded length."""
    why = None
    if not isinstance(value, str) or not value:
        why = "is not a non-empty string"
    elif len(value) > MAX_PATH_CHARS:
        why = f"is longer than {MAX_PATH_CHARS} characters"
    elif any(ord(char) < 32 or char in "\\\x7f" for char in value):
        why = "holds a backslash, NUL or control character"
    elif value.startswith("/"):
        why = "is absolute"
    elif any(part in ("", ".", "..") for part in value.split("/")):
        why = "has an empty, '.' or '..' segment"
    elif any(len(part.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for part in value.split("/")):
        why = f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
    if why is not None:
        raise InvalidResponseError(f"{where}: the endpoint listed file path {_shown(value)}, which {why}")
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class RemoteFile:
    """One file of a validated listing: its path, declared size, git blob id (of the LFS pointer, for
    an LFS file) and, for an LFS file, the sha256 of its bytes. Its bytes must hash to `blob_name`."""

    path: str
    size: int
    blob_id: str
    sha256: str | None = None

    @property
    def blob_name(self) -> str:
        """The blob's name in the Hugging Face cache: what the Hub serves as the file's ETag, and the
        hash its bytes must have (sha256 for an LFS file, the git blob sha1 for the others)."""
        return self.sha256 if self.sha256 is not None else self.blob_id

    def tree_entry(self) -> dict:
        """Its entry in huggingface_hub's tree-listing cache (`trees/<commit>.json`, format 1)."""
        if self.sha256 is None:
            return {"size": self.size, "blob_id": self.blob_id}
        return {"size": self.size, "blob_id": self.blob_id, "lfs_sha256": self.sha256, "lfs_size": self.size}


def validate_listing(items: Iterable[object], where: str, *, max_file_bytes: int | None = None) -> list[RemoteFile]:
    """The files of a `list_repo_tree(recursive=True)` answer, each path, size and hash checked; folders
    dropped. InvalidResponseError for a bad entry, a path listed twice, or a path that is both a file and
    a folder; OversizedFileError for a file declared over `max_file_bytes` (default MAX_FILE_BYTES)."""
    limit = MAX_FILE_BYTES if max_file_bytes is None else max_file_bytes
    files: dict[str, RemoteFile] = {}
    for item in items:
        if not isinstance(item, RepoFile):
            continue  # a folder: its files are listed too (recursive)
        path = check_repo_path(item.path, where)
        size, lfs = item.size, item.lfs
        if not isinstance(item.blob_id, str) or not COMMIT_ID.fullmatch(item.blob_id):
            raise InvalidResponseError(f"{where}: the endpoint listed {path} with blob id {_shown(item.blob_id)}")
        if lfs is not None and (lfs.size != size or not isinstance(lfs.sha256, str)
                                or not _SHA256.fullmatch(lfs.sha256)):
            raise InvalidResponseError(f"{where}: the endpoint listed {path} with an invalid LFS record (size "
                                       f"{_shown(size)} and {_shown(lfs.size)}, sha256 {_shown(lfs.sha256)})")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidResponseError(f"{where}: the endpoint listed {path} with size {_shown(size)}")
        if size > limit:
            raise OversizedFileError(f"{where}: {path} is declared {size} bytes, over the limit of {limit}")
        if path in files:
            raise InvalidResponseError(f"{where}: the endpoint listed {path} twice")
        if len(files) >= MAX_FILES:
            raise InvalidResponseError(f"{where}: the endpoint listed more than {MAX_FILES} files")
        files[path] = RemoteFile(path, size, item.blob_id, lfs.sha256 if lfs is not None else None)
    folders = {path.rsplit("/", 1)[0] for path in files if "/" in path}
    folders |= {folder.rsplit("/", i)[0] for folder in folders for i in range(1, folder.count("/") + 1)}
    clash = sorted(folders & set(files))
    if clash:
        raise InvalidResponseError(f"{where}: the endpoint listed {clash[0]} as both a file and a folder")
    return [files[path] for path in sorted(files)]


# Fetching ---------------------------------------------------------------------------------------------------

class _BoundedWriter:
    """A file object for huggingface_hub's `http_get` that refuses to grow past `limit` bytes."""

    def __init__(self, raw: BinaryIO, limit: int, what: str):
        self._raw, self._limit, self._what = raw, limit, what

    def write(self, data: bytes) -> int:
        if self._raw.tell() + len(data) > self._limit:
            raise OversizedFileError(f"{self._what}: the endpoint sent more than the {self._limit} bytes "
                                     "its listing declares")
        return self._raw.write(data)

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        return self._raw.truncate(size)


def _hash_of(path: Path, file: RemoteFile) -> str:
    digest = hashlib.sha256() if file.sha256 is not None else hashlib.sha1(b"blob %d\0" % file.size)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(repo_id: str, commit: str, file: RemoteFile, dest: Path, *, endpoint: str | None,
           headers: dict[str, str]) -> None:
    """Download `file` at `commit` into the existing empty file `dest`: no more than its declared size,
    exactly its declared size and hash, else InvalidResponseError (dest then holds a partial file)."""
    what = f"{repo_id}@{commit[:12]}: {file.path}"
    url = hf_hub_url(repo_id, file.path, revision=commit, endpoint=endpoint)
    with dest.open("wb") as raw:
        try:
            http_get(url, _BoundedWriter(raw, file.size, what), headers=dict(headers), expected_size=file.size,
                     displayed_filename=file.path)
        except OSError as error:  # http_get's consistency check: fewer bytes than declared
            if raw.tell() == file.size:
                raise
            raise InvalidResponseError(f"{what}: the endpoint sent {raw.tell()} bytes, its listing declares "
                                       f"{file.size}") from error
    got, want = _hash_of(dest, file), file.blob_name
    if got != want:
        kind = "sha256" if file.sha256 is not None else "git blob id"
        raise InvalidResponseError(f"{what}: the bytes sent have {kind} {got}, its listing declares {want}")


@dataclass(frozen=True)
class _Listing:
    commit: str
    files: list[RemoteFile]


def _list_revision(api: HfApi, repo_id: str, revision: str, where: str) -> _Listing:
    """The commit `revision` names and its validated file listing, asked of the endpoint through HfApi
    (which writes nothing); a malformed JSON answer is an InvalidResponseError, not a TypeError."""
    try:
        if COMMIT_ID.fullmatch(revision):
            commit = revision
        else:
            commit = check_commit_id(api.repo_info(repo_id, revision=revision, repo_type="model").sha, where)
        try:
            items = list(api.list_repo_tree(repo_id, revision=commit, recursive=True, repo_type="model"))
        except hf_errors.EntryNotFoundError as error:  # no file tree at that commit
            raise hf_errors.RevisionNotFoundError(str(error), response=error.response) from error
        return _Listing(commit, validate_listing(items, f"{where} (commit {commit[:12]})"))
    except hf_errors.HFValidationError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, HubError):
            raise
        raise InvalidResponseError(f"{where}: the endpoint's answer is malformed ({type(error).__name__}: "
                                   f"{_first_line(error)})") from error


# Download, pull ---------------------------------------------------------------------------------------------

def _cached_snapshot(repo_id: str, revision: str, cache_dir: Path | str | None) -> Path:
    """The cached snapshot of `revision`, without the network; its folder is checked to be a commit's."""
    folder = Path(snapshot_download(repo_id, repo_type="model", revision=revision, cache_dir=cache_dir,
                                    local_files_only=True))
    storage = folder.parent.parent
    if not COMMIT_ID.fullmatch(folder.name) or folder.parent.name != "snapshots" \
            or storage.name != repo_folder_name(repo_id=repo_id, repo_type="model"):
        raise HubError(f"download {repo_id}@{revision}: the cache's ref points at {folder}, not a commit's snapshot")
    return folder


def _write_to_cache(repo_id: str, revision: str, listing: _Listing, cache_dir: Path | str | None, *,
                    endpoint: str | None, token: str | None) -> Path:
    """Fetch the listed files into the Hugging Face cache layout, every name computed here:
    blobs/<sha256 or git sha1>, snapshots/<commit>/<path> (relative links), trees/<commit>.json and,
    for a branch or tag, refs/<revision>. A blob appears only complete and verified (atomic rename)."""
    root = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser().resolve()
    storage = root / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = storage / "snapshots" / listing.commit
    blobs = storage / "blobs"

    blobs.mkdir(parents=True, exist_ok=True)
    headers = build_hf_headers(token=token, library_name="zoo")
    for file in listing.files:
        blob = blobs / file.blob_name
        if not (snapshot / file.path).exists() and not blob.is_file():
            with atomic_path(blob) as tmp:
                _fetch(repo_id, listing.commit, file, tmp, endpoint=endpoint, headers=headers)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in listing.files:
        link = snapshot / file.path
        if link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        staged = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.symlink(os.path.relpath(blobs / file.blob_name, link.parent), staged)
        os.replace(staged, link)
    tree = {"format_version": 1, "files": {file.path: file.tree_entry() for file in listing.files}}
    atomic_write_json(storage / "trees" / f"{listing.commit}.json", tree, indent=1, sort_keys=True)
    if revision != listing.commit:
        atomic_write_text(storage / "refs" / revision, listing.commit)
    return snapshot


def _check_revision(revision: object) -> str:
    if not isinstance(revision, str):
        raise InvalidArgumentError(f"revision must be a string, got {type(revision).__name__}")
    try:  # it names refs/<revision> in the cache: the same rules as a repo path
        return check_repo_path(revision, "revision")
    except InvalidResponseError:
        raise InvalidArgumentError(f"invalid revision {revision!r}: give a branch, tag or commit id") from None


def _is_unreachable(error: BaseException) -> bool:
    """The endpoint cannot answer now (down, offline mode, a 5xx): the cached copy may serve."""
    return _is_transport_error(error) or (
        isinstance(error, hf_errors.HfHubHTTPError) and error.response is not None
        and error.response.status_code >= 500
    )


def download(repo_id: str, *, revision: str = _MAIN, endpoint: str | None = None, token: str | None = None,
             cache_dir: Path | str | None = None, local_files_only: bool = False) -> Path:
    """Download one revision (branch, tag or commit id) of a model repo; returns its snapshot folder.

    Files land in the Hugging Face cache layout under `cache_dir` (default: huggingface_hub's cache),
    each one validated against the endpoint's listing before it is moved there (module doc). When the
    endpoint cannot be reached (or answers 5xx), a copy already in the cache serves, as huggingface_hub
    does. With `local_files_only`, only that cache is read (no network; HubError if the revision is not there).
    """
    validate_repo_id(repo_id)
    revision = _check_revision(revision)
    where = f"download {repo_id}@{revision}"
    with _hub_errors("download", repo_id, revision, endpoint):
        if local_files_only:
            return _cached_snapshot(repo_id, revision, cache_dir)
        try:
            listing = _list_revision(HfApi(endpoint=endpoint, token=token), repo_id, revision, where)
        except Exception as error:
            if not _is_unreachable(error):
                raise
            try:
                return _cached_snapshot(repo_id, revision, cache_dir)
            except hf_errors.LocalEntryNotFoundError:
                raise error from None
        return _write_to_cache(repo_id, revision, listing, cache_dir, endpoint=endpoint, token=token)


def cached_or_download(repo_id: str, *, revision: str = _MAIN, endpoint: str | None = None) -> Path:
    """The snapshot folder of `revision` from the Hugging Face cache when it holds it (no network), else
    downloaded (`download`): for a revision that cannot change under it, a commit id."""
    try:
        return download(repo_id, revision=revision, local_files_only=True)
    except HubError:
        return download(repo_id, revision=revision, endpoint=endpoint)


def pull(repo_id: str, local_hub: LocalHub, *, revision: str = _MAIN, endpoint: str | None = None,
         token: str | None = None) -> str:
    """Download a remote revision and push it into `local_hub` under the same repo id.

    The files are fetched and validated (module doc) into a temporary folder, removed afterwards
    (nothing lands in ~/.cache); the local hub changes only once every file has passed. Returns the
    local revision id; its message names the remote commit it came from.
    """
    validate_repo_id(repo_id)
    revision = _check_revision(revision)
    with _hub_errors("pull", repo_id, revision, endpoint):
        listing = _list_revision(HfApi(endpoint=endpoint, token=token), repo_id, revision, f"pull {repo_id}@{revision}")
        if not listing.files:
            raise HubError(f"pull {repo_id}@{revision}: commit {listing.commit} has no files")
        headers = build_hf_headers(token=token, library_name="zoo")
        with tempfile.TemporaryDirectory(prefix="zoo-pull-") as tmp:
            folder = Path(tmp, "files")
            for file in listing.files:
                dest = folder / file.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                _fetch(repo_id, listing.commit, file, dest, endpoint=endpoint, headers=headers)
            message = f"pull {repo_id}@{revision} (commit {listing.commit}) from {hub_url(endpoint)}"
            return local_hub.push(repo_id, folder, message=message)


def upload(folder: Path | str, repo_id: str, *, endpoint: str | None = None, token: str | None = None,
           message: str, private: bool = False) -> str:
    """Create `repo_id` if needed, then add every file of `folder` to it in ONE commit; returns its id.

    Files already on the remote and absent from `folder` stay (Hub upload semantics); `.git/` and
    `.cache/huggingface/` are skipped as huggingface_hub does.
    """
    validate_repo_id(repo_id)
    if not isinstance(message, str) or not message.strip():
        raise InvalidArgumentError("upload needs a non-empty commit message")
    files = folder_files(folder)
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for rel, path in files.items()]
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors("upload to", repo_id, None, endpoint):
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=message, repo_type="model")
    return commit.oid
