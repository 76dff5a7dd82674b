"""The model registry: every checkpoint the zoo knows, by `arch.tag`, and the family builders."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from zoo.entry import ModelEntry
from zoo.registry import Registry

MODELS: Registry[ModelEntry] = Registry("model")
FAMILIES: Registry[Callable[[ModelEntry], nn.Module]] = Registry("model family")


def register_entry(entry: ModelEntry) -> ModelEntry:
    return MODELS.register(entry.name, entry)


def get_entry(name: str) -> ModelEntry:
    _ensure_families()
    return MODELS.get(name)


def list_entries(*, family: str | None = None, task: str | None = None, source: str | None = None) -> list[ModelEntry]:
    _ensure_families()
    return [
        entry for _, entry in MODELS.items()
        if (family is None or entry.family == family)
        and (task is None or entry.task == task)
        and (source is None or entry.source == source)
    ]


def build_model(entry: ModelEntry) -> nn.Module:
    """The entry's architecture, randomly initialized, in eval mode."""
    _ensure_families()
    return FAMILIES.get(entry.family)(entry).eval()


def _ensure_families() -> None:
    import zoo.families  # noqa: F401  (registration happens on first use, keeping `import zoo` light)
