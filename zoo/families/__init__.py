"""The model families, one sub-package each, imported lazily by name (as timm's `_model_to_module`).

A family's package `zoo.families.<family>` holds:

- `entries.py`: its registry entries, as plain dataclasses (no torch, no transformers: listing every
  entry is cheap), and what the family provides: `MODEL_FAMILIES` (the `ModelEntry.family` names its
  builders serve), `TASKS` and `DATASETS` (the names its task and data modules register);
- `model.py`, `task.py`, `data.py`: the architecture (registered in `zoo.models.FAMILIES`, with any
  `INITIALIZERS`), the task (`zoo.tasks.TASKS`) and the data sets (`zoo.data.DATASETS`).

The core never imports a family at module level: `zoo.models`, `zoo.tasks` and `zoo.data` call
`ensure_entries` (all `entries` modules) and `ensure_model_family` / `ensure_task` / `ensure_dataset`
(one family's `model`, `task` and `data` modules, the first time one of them is needed).
"""
from __future__ import annotations

import importlib
from types import ModuleType

FAMILY_MODULES: dict[str, str] = {
    "vision": "zoo.families.vision",
    "translation": "zoo.families.translation",
    "mcbert": "zoo.families.mcbert",
    "wavernn": "zoo.families.wavernn",
    "invertible": "zoo.families.invertible",
    "transformers": "zoo.families.transformers",
}
RUNTIME_MODULES = ("data", "task", "model")  # imported together: a family's code assumes all three


def entries_module(family: str) -> ModuleType:
    """`zoo.families.<family>.entries` (imported, which registers its entries)."""
    return importlib.import_module(f"{FAMILY_MODULES[family]}.entries")


def ensure_entries() -> None:
    """Every family's entries registered (light: no model, task or data code is imported)."""
    for family in FAMILY_MODULES:
        entries_module(family)


def ensure_family(family: str) -> None:
    """`family`'s model, task and data modules imported (each registers what it provides)."""
    for name in RUNTIME_MODULES:
        importlib.import_module(f"{FAMILY_MODULES[family]}.{name}")


def ensure_all() -> None:
    for family in FAMILY_MODULES:
        ensure_family(family)


def _provider(attribute: str, name: str) -> str | None:
    """The family whose entries module lists `name` in `attribute` (None: no family does)."""
    for family in FAMILY_MODULES:
        if name in getattr(entries_module(family), attribute):
            return family
    return None


def _ensure_provider(attribute: str, name: str) -> None:
    family = _provider(attribute, name)
    if family is not None:  # else the registry lookup that follows names the unknown item
        ensure_family(family)


def ensure_model_family(name: str) -> None:
    """The family package that builds `ModelEntry.family == name` imported."""
    _ensure_provider("MODEL_FAMILIES", name)


def ensure_task(name: str) -> None:
    _ensure_provider("TASKS", name)


def ensure_dataset(name: str) -> None:
    _ensure_provider("DATASETS", name)
