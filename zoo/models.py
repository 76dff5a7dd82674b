"""The model registry: every checkpoint the zoo knows, by `arch.tag`, and the family builders.

Entries come from the families' light `entries` modules (imported on the first lookup); builders and
initializers from their `model` modules, imported when an entry of theirs is first built. Importing
this module imports neither torch nor any family.

Besides the registered entries, a family may offer a *catalog*: a large set of names (timm's ~1,800
pretrained checkpoints) whose entries are made on demand from the library's own configs, so nothing is
registered one by one and the library is imported only when the catalog is asked. `get_entry` asks the
catalogs after a registry miss; `list_entries(source=<catalog>)` lists one. Entries made from Hub repos
(`hf-hub:org/name`, zoo.hub_ids) are remembered for the process once read (`remember_entry`).
"""
from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zoo.entry import ModelEntry
from zoo.errors import UnknownNameError
from zoo.registry import Registry

if TYPE_CHECKING:
    from torch import nn

MODELS: Registry[ModelEntry] = Registry("model")
FAMILIES: Registry[Callable[[ModelEntry], nn.Module]] = Registry("model family")
# family -> fn(entry, trained model of entry.train.init_from) -> the model to train, initialized from it
INITIALIZERS: Registry[Callable[[ModelEntry, nn.Module], nn.Module]] = Registry("initializer")




@dataclass(frozen=True)
class EntryCatalog:
    """Entries made on demand: `names()` every name the catalog holds, `entry(name)` the entry for one
    of them (None for any other name). Both may import the library behind the catalog; neither is
    called until the catalog is asked."""

    names: Callable[[], Iterable[str]]
    entry: Callable[[str], "ModelEntry | None"]


CATALOGS: Registry[EntryCatalog] = Registry("model catalog")
_READ_FROM_HUB: dict[str, ModelEntry] = {}  # `hf-hub:` entries read in this process, by name


def register_entry(entry: ModelEntry) -> ModelEntry:
    return MODELS.register(entry.name, entry)


def remember_entry(entry: ModelEntry) -> ModelEntry:
    """Keeps an entry made from a Hub repo (zoo.hub_ids) for `get_entry` for the rest of the process; the
    last revision read of a repo wins."""
    _READ_FROM_HUB[entry.name] = entry
    return entry


def get_entry(name: str) -> ModelEntry:
    """The registered entry `name`, else a catalog's (timm's pretrained checkpoints: imports timm), else an
    `hf-hub:` entry read earlier in this process; UnknownNameError with the closest names otherwise."""
    _ensure_families()
    if name in MODELS:
        return MODELS.get(name)
    if name in _READ_FROM_HUB:
        return _READ_FROM_HUB[name]
    for _, found in CATALOGS.items():
        entry = found.entry(name)
        if entry is not None:
            return entry
    raise UnknownNameError("model", name, _close_names(name))


def _close_names(name: str) -> list[str]:
    """The names a miss suggests: the registry's closest first, then the catalogs' (timm's ~1,800 would
    otherwise crowd out `resnet18.zoo_digits` for `resnet18`); every name when none is close."""
    import difflib

    local = [*MODELS, *_READ_FROM_HUB]
    cataloged = [n for _, found in CATALOGS.items() for n in found.names()]
    close = difflib.get_close_matches(name, local, n=5, cutoff=0.5)
    close += difflib.get_close_matches(name, cataloged, n=5 - len(close), cutoff=0.5) if len(close) < 5 else []
    return close or [*local, *cataloged]


def list_entries(*, family: str | None = None, task: str | None = None, source: str | None = None,
                 filter: str | None = None) -> list[ModelEntry]:
    """Registered entries, filtered. `source` "zoo" keeps the zoo-native ones; "upstream" the registered
    upstream ones and every catalog's (all upstream; imports their libraries); a catalog's name ("timm")
    that catalog's alone. `filter` is a shell-style wildcard over names, as `timm.list_models` takes
    (`resnet*`, `*_in1k`)."""
    _ensure_families()

    def wanted(name: str) -> bool:
        return filter is None or fnmatch.fnmatchcase(name, filter)

    candidates = [] if source in CATALOGS else [
        entry for name, entry in MODELS.items() if (source is None or entry.source == source) and wanted(name)]
    for catalog_name, catalog in CATALOGS.items():
        if source in (catalog_name, "upstream"):
            candidates += [catalog.entry(name) for name in sorted(catalog.names()) if wanted(name)]
    return [entry for entry in candidates
            if (family is None or entry.family == family) and (task is None or entry.task == task)]


def family_builder(entry: ModelEntry) -> Callable[[ModelEntry], nn.Module]:
    """The builder of `entry.family`, its family's model module imported on first use."""
    _ensure_model_family(entry.family)
    return FAMILIES.get(entry.family)


def family_initializer(entry: ModelEntry) -> Callable[[ModelEntry, nn.Module], nn.Module]:
    """How `entry.family` starts a model from another entry's trained weights (`TrainSpec.init_from`)."""
    _ensure_model_family(entry.family)
    return INITIALIZERS.get(entry.family)


def build_model(entry: ModelEntry) -> nn.Module:
    """The entry's architecture, randomly initialized, in eval mode."""
    return family_builder(entry)(entry).eval()


def build_empty_model(entry: ModelEntry) -> nn.Module:
    """The entry's architecture on the meta device, without running its weight initializers: a shell
    for weights that are about to be assigned (what `zoo.load` does), in eval mode."""
    import torch

    with torch.device("meta"), _skip_torch_init():
        return build_model(entry)


_INITIALIZERS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)


@contextlib.contextmanager
def _skip_torch_init() -> Iterator[None]:
    """torch.nn.init's initializers as no-ops (as transformers' `no_init_weights` does): on the meta
    device they only cost time, about half of building a ResNet-50 shell."""
    import torch

    saved = {name: getattr(torch.nn.init, name) for name in _INITIALIZERS}
    try:
        for name in saved:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _ensure_families() -> None:
    from zoo.families import ensure_entries  # on first use, keeping `import zoo` light

    ensure_entries()


def _ensure_model_family(family: str) -> None:
    if family not in FAMILIES:
        from zoo.families import ensure_model_family

        ensure_model_family(family)
