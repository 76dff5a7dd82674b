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
