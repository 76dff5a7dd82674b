"""Models addressed by their Hub repo id: `hf-hub:org/name`, `hf-hub:org/name@revision` or a bare
`org/name` (registry names never hold a '/'), and their variants, `hf-hub:org/name+os50`.

A repo is read at one revision from the local hub (`Store.hub`) when it has the repo, else from the
Hugging Face cache (no network), else from the endpoint (`endpoint=` or HF_ENDPOINT): its `config.json`
and file list become a `RepoSnapshot`, and the readers of `zoo.repo_readers.REPO_READERS` turn it into
a `ModelEntry` (the first that answers wins; this module's `zoo` reader, for the zoo's own checkpoint
format, is asked first). The entry is pinned to the commit the revision resolved to (for the local hub,
its revision id), so what is derived from it is keyed by that commit's weights.

The zoo's checkpoint config records the entry of the model it holds (`entry_record`: family, task, the
input dataclass by its registered type, evaluation data, classes, `keep_dense`...), so a repo pushed
from another zoo, whose base this registry lacks, still loads; input types come from an allowlist
(`zoo.entry.INPUT_TYPES`), never from pickle.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.entry import HUB_PREFIX, INPUT_TYPES, DataSpec, ModelEntry, TrainSpec, is_hub_name
from zoo.errors import CheckpointError, InvalidArgumentError, UnknownNameError, UnsupportedModelError
from zoo.models import get_entry, remember_entry
from zoo.registry import class_key
from zoo.repo_readers import REPO_READERS, RepoSnapshot
from zoo.store import CHECKPOINT_CONFIG as CONFIG_FILE
from zoo.store import Store

_REFERENCE_RE = re.compile(r"(?:hf-hub:)?(?P<repo_id>[^/@+:\s]+/[^/@+:\s]+)(?:@(?P<revision>[^+\s]+))?"
                           r"(?:\+(?P<suffix>\S+))?")
ZOO_READER = "zoo"
_RECORDED = ("family", "task", "input", "eval_data", "num_classes", "label_set", "keep_dense", "prune_block",
             "structured", "train", "description", "license")


@dataclass(frozen=True)
class HubReference:
    """A parsed Hub-id name: the repo, the revision it names (None: not named) and a variant suffix."""

    repo_id: str
    revision: str | None
    suffix: str | None

    @property
    def entry_name(self) -> str:
        return HUB_PREFIX + self.repo_id


def is_hub_reference(name: object) -> bool:
    """Whether `name` addresses a Hub repo (`hf-hub:...` or `org/name...`) rather than a registry name."""
    return isinstance(name, str) and (name.startswith(HUB_PREFIX) or "/" in name)


def parse_hub_reference(name: str) -> HubReference:
    from zoo.hub import validate_repo_id

    match = _REFERENCE_RE.fullmatch(name)
    if match is None:
        raise InvalidArgumentError(f"{name!r} is not a Hub id: hf-hub:org/name[@revision][+variant] or org/name")
    return HubReference(validate_repo_id(match["repo_id"]), match["revision"], match["suffix"])


VARIANT_REPO_PREFIX = "hf-hub_"


def variant_repo_name(name: str) -> str:
    """The repo name (under `zoo/`) a variant of an `hf-hub:` entry is published to: `hf-hub_org_name_os50`
    (a repo id cannot hold ':', '/' or '+'; the variant's own name is in the repo's config), or, past the
    Hub's 96 characters, `hf-hub_<digest>`."""
    import hashlib

    base, _, suffix = name[len(HUB_PREFIX):].partition("+")
    org, _, repo = base.partition("/")
    slug = VARIANT_REPO_PREFIX + "_".join(part for part in (org, repo, suffix) if part)
    return slug if len(slug) <= 96 else VARIANT_REPO_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:24]


# Reading a repo ---------------------------------------------------------------------------------------

def read_repo(repo_id: str, revision: str = "main", *, store: Store | None = None,
              endpoint: str | None = None) -> tuple[Path, RepoSnapshot]:
    """The snapshot folder of `repo_id` at `revision` and what readers see of it: from the local hub if
    it has that revision; else a commit id from the Hugging Face cache when it holds it (a commit never
    changes), a branch or tag as the endpoint says it is now (huggingface_hub falls back to the cached
    copy when the endpoint cannot be reached or HF_HUB_OFFLINE is set, as `from_pretrained` does), so a
    new commit on `main` is seen (HubErrors as zoo.hub raises)."""
    from zoo.hub import cached_or_download, download, folder_files
    from zoo.hub.local import COMMIT_ID

    store = store or Store()
    if store.hub.has(repo_id, revision):
        folder = store.hub.snapshot(repo_id, revision)
    elif COMMIT_ID.fullmatch(revision):  # a commit never changes: the cache's copy is it
        folder = cached_or_download(repo_id, revision=revision, endpoint=endpoint)
    else:
        folder = download(repo_id, revision=revision, endpoint=endpoint)
    from zoo.parsing import load_json

    config_path = folder / CONFIG_FILE
    config = load_json(config_path.read_bytes(), what=f"{repo_id}@{revision}: its {CONFIG_FILE}",
                       error=UnsupportedModelError) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{repo_id}@{revision}: its {CONFIG_FILE} is not a JSON object")
    return folder, RepoSnapshot(repo_id, folder.name, config, tuple(folder_files(folder)))


def hub_entry(repo_id: str, revision: str = "main", *, store: Store | None = None,
              endpoint: str | None = None) -> ModelEntry:
    """The entry a repo's config makes, pinned to the commit `revision` resolves to; remembered for
    `zoo.models.get_entry` for the rest of the process. UnsupportedModelError when no reader knows it."""
    from zoo.families import ensure_entries

    ensure_entries()  # the families register their readers in their entries modules
    _, repo = read_repo(repo_id, revision, store=store, endpoint=endpoint)
    for name in sorted(REPO_READERS, key=lambda name: name != ZOO_READER):
        entry = REPO_READERS.get(name)(repo)
        if entry is not None:
            return remember_entry(entry) if is_hub_name(entry.name) else entry
    where = f"{repo_id}@{revision} (commit {repo.commit})"
    if not repo.config:
        raise UnsupportedModelError(f"{where} has no {CONFIG_FILE}, so no reader can tell what it holds "
                                    f"(files: {', '.join(repo.files[:8]) or 'none'})")
    keys = ", ".join(sorted(repo.config)[:12])
    raise UnsupportedModelError(f"{where}: no reader ({', '.join(sorted(REPO_READERS))}) knows its {CONFIG_FILE} "
                                f"(keys: {keys})")


# The zoo's own checkpoint format ----------------------------------------------------------------------

def entry_record(entry: ModelEntry) -> dict[str, Any]:
    """What a checkpoint config records of the entry its model belongs to, in JSON types: enough, with the
    config's `arch` and `model_kwargs`, to rebuild the entry where the registry lacks it."""
    if class_key(type(entry.input)) not in INPUT_TYPES:
        raise InvalidArgumentError(f"{entry.name}: its input type {class_key(type(entry.input))} is not registered "
                                   "(zoo.entry.register_input_type), so a checkpoint cannot record it")
    record = {key: getattr(entry, key) for key in _RECORDED}
    record["input"] = {"type": class_key(type(entry.input)), **dataclasses.asdict(entry.input)}
    record["eval_data"] = dataclasses.asdict(entry.eval_data)
    record["train"] = dataclasses.asdict(entry.train) if entry.train is not None else None
    return json.loads(json.dumps(record))  # tuples as lists, as the file will hold them


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def entry_fields_from_record(record: Any, where: str) -> dict[str, Any]:
    """ModelEntry fields from an `entry_record`; the input dataclass from the registered types only."""
    if not isinstance(record, dict) or set(record) != set(_RECORDED):
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"{where}: its recorded entry must have exactly {', '.join(_RECORDED)}; got {got}")
    fields = {key: _tuples(value) for key, value in record.items()}
    try:
        spec = dict(record["input"])
        input_type = INPUT_TYPES.get(spec.pop("type"))
        fields["input"] = input_type(**{key: _tuples(value) for key, value in spec.items()})
        fields["eval_data"] = DataSpec(**record["eval_data"])
        if record["train"] is not None:
            train = dict(record["train"])
            fields["train"] = TrainSpec(**{**train, "data": DataSpec(**train["data"])})
    except (TypeError, KeyError, ValueError, AttributeError, UnknownNameError) as err:
        raise CheckpointError(f"{where}: its recorded entry does not rebuild: {err}"[:300]) from None
    return fields


def _base_fields(config: dict[str, Any], where: str) -> dict[str, Any]:
    """The entry fields of the model a zoo checkpoint holds: its recorded entry, else (checkpoints written
    before the zoo recorded it) its base's registry or catalog entry."""
    if config.get("entry") is not None:
        return entry_fields_from_record(config["entry"], where)
    if not isinstance(config.get("base_model"), str):
        raise CheckpointError(f"{where}: its config names no base model (base_model={config.get('base_model')!r}) "
                              "and records no entry, so nothing says what it holds")
    try:
        base = get_entry(config["base_model"])
    except UnknownNameError:
        raise UnsupportedModelError(f"{where} holds a variant of {config['base_model']!r}, which this zoo does not "
                                    "have, and its config does not record its entry") from None
    return {key: getattr(base, key) for key in _RECORDED}


@REPO_READERS.decorator(ZOO_READER)
def read_zoo_repo(repo: RepoSnapshot) -> ModelEntry | None:
    """A repo in the zoo's checkpoint format (pushed by `zoo push` or pulled from a team Hub): an entry
    `hf-hub:org/name` whose weights are the repo's, with its base's family, task, input and training data
    (so it can be derived from again, fine-tuning where the base could)."""
    from zoo.compress.checkpoint import FORMAT_NAME, check_config

    config = dict(repo.config)
    if config.get("format") != FORMAT_NAME:
        return None
    where = f"{repo.repo_id}@{repo.commit[:12]}"
    check_config(config, f"{where}: its {CONFIG_FILE}")  # the schema: types, required keys, ranges
    fields = _base_fields(config, where)
    train = fields.get("train")
    if train is not None and train.init_from is not None:  # the weights are here: nothing to start from
        fields["train"] = dataclasses.replace(train, init_from=None)
    fields["description"] = (f"{config['name']} from the Hub repo {repo.repo_id} (commit {repo.commit[:12]}): "
                             f"{fields['description']}")
    return ModelEntry(name=repo.entry_name, repo_id=repo.repo_id, revision=repo.commit, source="upstream",
                      architecture=config["arch"], model_kwargs=dict(config["model_kwargs"]), **fields)
