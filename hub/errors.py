"""Typed hub errors: every one is a `HubError`, so callers catch the family or one case by type."""
from __future__ import annotations

from collections.abc import Iterable

from zoo.errors import HubError, UnknownNameError


class RepoNotFoundError(HubError, LookupError):
    """A repository does not exist (or is private/gated and the token gives no access)."""


class UnknownRepoError(UnknownNameError, RepoNotFoundError):
    """A repository is not in the local hub; the message lists the closest repo ids it holds."""

    def __init__(self, repo_id: str, known: Iterable[str]):
        super().__init__("hub repo", repo_id, known)


class RevisionNotFoundError(HubError, LookupError):
    """A repository exists but the branch, tag or commit asked for does not."""


class RepoFileNotFoundError(UnknownNameError, HubError):
    """A file is not part of the revision asked for; the message lists the closest file names."""

    def __init__(self, where: str, filename: str, known: Iterable[str]):
        super().__init__(f"file in {where}", filename, known)


class HubConnectionError(HubError, ConnectionError):
    """The endpoint cannot be reached (refused, timed out, or offline mode is on)."""


class InvalidResponseError(HubError, ValueError):
    """A Hub endpoint answered something the zoo refuses to write with: a commit id that is not 40 hex
    digits, a file path that is absolute or leaves the repo, a listing that contradicts itself, or a file
    whose bytes are not the ones its listing declares (size or hash). Raised before anything is written
    outside a temporary file of the download."""


class OversizedFileError(InvalidResponseError):
    """A file is larger than its listing declares, or the listing declares it larger than the limit."""
