"""Where the zoo keeps things: the local hub (published repos) and the cache of derived variants.

Defaults: `$ZOO_HUB` or `~/.cache/zoo/hub`, and `$ZOO_CACHE` or `~/.cache/zoo/variants`.
A cache entry is a checkpoint folder written atomically (zoo.compress.checkpoint) plus `report.json`;
what a killed save leaves beside it (`.tmp-`/`.old-` folders, its `.lock`) is never an entry.
`Store.options` (default: `$ZOO_TRAIN_OPTIONS`, else each entry's own recipe) says how much training
and measuring what this store derives gets; departures from the recipe are part of the cache keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from zoo.atomic import is_leftover, leftover_target, recover_folder
from zoo.entry import path_slug
from zoo.hub.local import LocalHub
from zoo.options import TrainOptions
from zoo.signing import SigningPolicy

REPORT_FILE = "report.json"
CHECKPOINT_CONFIG = "config.json"  # zoo.compress.checkpoint.CONFIG_FILE (that module imports torch)


def default_cache_root() -> Path:
    return Path(os.environ.get("ZOO_CACHE") or "~/.cache/zoo/variants").expanduser()


@dataclass
class Store:
    """The local hub and the variant cache a `zoo.load` call reads and writes, the training options of what
    it derives there, and which signatures a published repo it loads must carry (zoo.signing; default: the
    environment's `ZOO_TRUSTED_KEYS` / `ZOO_REQUIRE_SIGNATURES`, none)."""

    hub: LocalHub = field(default_factory=LocalHub)
    cache_root: Path = field(default_factory=default_cache_root)
    options: TrainOptions = field(default_factory=TrainOptions.from_env)
    signing: SigningPolicy = field(default_factory=SigningPolicy.from_env)

    def cache_dir(self, name: str, key: str) -> Path:
        """`cache_root/<name>/<key>`, the name as one folder (`zoo.entry.path_slug`: `hf-hub:` names)."""
        return self.cache_root / path_slug(name) / key

    def cached_entries(self, name: str) -> list[Path]:
        """The cache folders holding a checkpoint of `name`, sorted. A checkpoint that a killed save moved
        aside is put back first, and the leftovers of killed saves are swept where no save is in flight
        (`zoo.compress.checkpoint.recover_checkpoint`); they are never entries."""
        folder = self.cache_root / path_slug(name)
        if not folder.is_dir():
            return []
        names = [p.name for p in folder.iterdir()]
        keys = {n for n in names if not is_leftover(n)} | {k for k in map(leftover_target, names) if k}
        return sorted(folder / key for key in keys
                      if recover_folder(folder / key, complete=CHECKPOINT_CONFIG, blocking=False))
