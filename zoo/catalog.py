"""What the zoo holds right now: registered entries plus the variants published in the local hub or
cached, for `zoo list`, `zoo card` and `zoo push`; and the reports a family's cards compare it with."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.entry import ModelEntry, name_from_path_slug
from zoo.errors import CheckpointError, HubError, InvalidArgumentError, UnknownNameError
from zoo.models import CATALOGS, MODELS, list_entries
from zoo.quant_schemes import canonical_quant
from zoo.store import Store
from zoo.variants import VariantSpec, is_custom_recipe_name, resolve

if TYPE_CHECKING:  # loading models imports torch: `catalog` (what `zoo list` shows) does not need it
    from torch import nn

    from zoo.evaluate import VariantReport

ZOO_ORG = "zoo/"


@dataclass(frozen=True)
class CatalogRow:
    name: str
    family: str
    task: str
    source: str
    sparsity: float
    quant: str | None
    where: str


def _variant_names(store: Store) -> dict[str, str]:
    """Variant names found in the local hub ("hub") and the cache ("cache"); the hub wins. A variant of
    an `hf-hub:` base is published under a repo name that cannot hold its name: its config says it."""
    from zoo.hub_ids import VARIANT_REPO_PREFIX

    found: dict[str, str] = {}
    if store.cache_root.is_dir():
        for folder in sorted(store.cache_root.iterdir()):
            name = name_from_path_slug(folder.name)
            if store.cached_entries(name):
                found[name] = "cache"
    for repo_id in store.hub.list_repos():
        if repo_id.startswith(ZOO_ORG + VARIANT_REPO_PREFIX):
            found[_config_name(store.hub.snapshot(repo_id))] = "hub"
        elif repo_id.startswith(ZOO_ORG):
            found[repo_id[len(ZOO_ORG):]] = "hub"
    return found


def _config_name(folder: Path) -> str:
    from zoo.parsing import load_json
    from zoo.store import CHECKPOINT_CONFIG

    path = folder / CHECKPOINT_CONFIG
    return load_json(path.read_bytes(), what=str(path), error=CheckpointError)["name"]


def _spec_or_none(name: str, store: Store) -> VariantSpec | None:
    """The spec a found variant's name gives; None for a custom-recipe variant (its recipe is in its
    repo, not its name), for a variant of a model this registry does not have, and (with a warning) for
    a variant of an `hf-hub:` base whose repo cannot be read now (offline, not cached). Any other error
    (a malformed name, an invalid sparsity) is raised: it is not a thing to hide from a listing."""
    if is_custom_recipe_name(name):
        return None
    try:
        return resolve(name, store=store)
    except UnknownNameError as err:
        if err.kind == "model":
            return None
        raise
    except HubError as err:
        if "+" not in name:
            raise
        warnings.warn(f"{name} left out: its base's repo cannot be read: {err}", stacklevel=3)
        return None


def catalog(store: Store, *, family: str | None = None, task: str | None = None, source: str | None = None,
            sparsity: float | None = None, quant: str | None = None, filter: str | None = None) -> list[CatalogRow]:
    """Rows for every registered entry and known variant, filtered; `quant="none"` keeps unquantized ones,
    another scheme the variants quantized by it (in any spelling `zoo.quant_schemes` reads). `source`
    "upstream" adds timm's catalog of pretrained checkpoints and "timm" lists that catalog alone (as
    `zoo.models.list_entries`; ~1,800 rows: the default listing leaves them out); `filter` is a
    shell-style wildcard over names (`resnet*`)."""
    import fnmatch

    if quant is not None and quant != "none":
        quant = canonical_quant(quant)
    rows = [CatalogRow(e.name, e.family, e.task, e.source, 0.0, None, "registry" if e.name in MODELS else "catalog")
            for e in list_entries(source=source, filter=filter)]
    for name, where in _variant_names(store).items():
        if filter is not None and not fnmatch.fnmatchcase(name, filter):
            continue
        spec = _spec_or_none(name, store)
        if spec is not None and not spec.is_base:
            base = spec.base
            rows.append(CatalogRow(spec.name, base.family, base.task, base.source, spec.sparsity, spec.quant, where))
    return [
        row for row in rows
        if (family is None or row.family == family)
        and (task is None or row.task == task)
        and (source is None or row.source == ("upstream" if source in CATALOGS else source))
        and (sparsity is None or abs(row.sparsity - sparsity) < 1e-9)
        and (quant is None or (row.quant or "none") == quant)
    ]


def family_models(base: str, store: Store) -> list[nn.Module]:
    """The base model and every variant of it, made from these very base weights, that the hub or the
    cache holds, loaded (found, not made). A variant published from other base weights (an earlier
    training of the base) is left out with a warning; from the cache, only the copy the variant's recipe
    and these base weights key is taken."""
    from zoo.api import base_fingerprint, entry_fingerprint, load, load_cached, variant_cache_folder

    base_spec = resolve(base, store=store)
    if not base_spec.is_base:  # else its family would lack the base's report, and list the variant twice
        raise InvalidArgumentError(f"{base!r} names a variant; its family is that of {base_spec.base.name}")
    base_model = load(base_spec, store=store, progress=False)
    fingerprint = entry_fingerprint(base_spec.base, base_model.zoo.path)
    models, stale = [base_model], []
    for name, where in _variant_names(store).items():
        spec = _spec_or_none(name, store)
        if spec is None or spec.is_base or spec.base.name != base_spec.base.name:
            continue
        if where == "hub" and base_fingerprint(store.hub.snapshot(spec.repo_id)) == fingerprint:
            models.append(load(spec, store=store, progress=False))
            continue
        folder = variant_cache_folder(spec, store, fingerprint)
        if folder.is_dir():
            models.append(load_cached(spec, folder, options=store.options))
        else:
            stale.append(name)
    if stale:
        warnings.warn(f"left out of {base}'s family, made from other weights of {base} than the current ones: "
                      f"{', '.join(stale)}", stacklevel=2)
    return models


def reference_reports(entry: ModelEntry, store: Store, *, progress: bool = False) -> list[VariantReport]:
    """The measured reports of the base models `entry.compare_with` names, loaded like the family's own
    base (from the hub or cache; trained by their recipe if neither has them)."""
    from zoo.api import load

    return [load(name, store=store, progress=progress).zoo.report for name in entry.compare_with]
