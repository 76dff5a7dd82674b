"""How a Hub repo that is not in the registry becomes a `ModelEntry`: readers, one per repo format.

A family registers, in its light `entries` module, a reader for the repos it can build (timm's
`config.json` with `architecture` and `pretrained_cfg`, a transformers `config.json` with a supported
`model_type`, ...). `zoo.load("hf-hub:org/name")` reads the repo's `config.json` and file list at one
revision and asks each reader in turn; the first that returns an entry wins. A reader never downloads:
it gets what was read for it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from zoo.entry import HUB_PREFIX, ModelEntry
from zoo.registry import Registry


@dataclass(frozen=True)
class RepoSnapshot:
    """What a reader sees of one revision of a repo: its id, the commit the revision resolved to, its
    parsed `config.json` (empty when it has none) and the paths of its files."""

    repo_id: str
    commit: str
    config: Mapping[str, Any]
    files: tuple[str, ...]

    @property
    def entry_name(self) -> str:
        """The name an entry made from this repo carries: `hf-hub:org/name`."""
        return HUB_PREFIX + self.repo_id


RepoReader = Callable[[RepoSnapshot], "ModelEntry | None"]
REPO_READERS: Registry[RepoReader] = Registry("repo reader")
