"""The real Hugging Face Hub path: download, pull into the local hub, upload, through huggingface_hub.

`endpoint=None` and `token=None` leave the choice to huggingface_hub (HF_ENDPOINT, HF_TOKEN or the
stored login). Every huggingface_hub failure leaves as a typed HubError (see zoo.hub.errors) with a
one-line message; the original error stays chained as `__cause__`. Nothing here touches the network
at import time.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, snapshot_download
from huggingface_hub import errors as hf_errors

from zoo.errors import HubError, InvalidArgumentError
from zoo.hub.errors import HubConnectionError, RepoNotFoundError, RevisionNotFoundError
from zoo.hub.local import LocalHub, folder_files, validate_repo_id

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


def download(repo_id: str, *, revision: str = _MAIN, endpoint: str | None = None, token: str | None = None,
             cache_dir: Path | str | None = None, local_files_only: bool = False) -> Path:
    """Download one revision (branch, tag or commit id) of a model repo; returns its snapshot folder.

    Files land in the Hugging Face cache layout under `cache_dir` (default: huggingface_hub's cache).
    With `local_files_only`, only that cache is read (no network; HubError if the revision is not there).
    """
    validate_repo_id(repo_id)
    with _hub_errors("download", repo_id, revision, endpoint):
        folder = snapshot_download(repo_id, repo_type="model", revision=revision, endpoint=endpoint, token=token,
                                   cache_dir=cache_dir, local_files_only=local_files_only)
    return Path(folder)


def pull(repo_id: str, local_hub: LocalHub, *, revision: str = _MAIN, endpoint: str | None = None,
         token: str | None = None) -> str:
    """Download a remote revision and push it into `local_hub` under the same repo id.

    The download goes to a temporary cache, removed afterwards (nothing lands in ~/.cache).
    Returns the local revision id; its message names the remote commit it came from.
    """
    with tempfile.TemporaryDirectory(prefix="zoo-pull-") as cache:
        folder = download(repo_id, revision=revision, endpoint=endpoint, token=token, cache_dir=cache)
        origin = hub_url(endpoint)
        message = f"pull {repo_id}@{revision} (commit {folder.name}) from {origin}"
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
