"""The user's own data: fine-tuning and evaluation data the user names, instead of the entry's registered data set.

`UserData` names a data set, as data (frozen, validated, JSON in a variant's config and its identity):

- `folder`: an ImageNet-style folder, one sub-folder of images per class (train and validation are two
  folders, given separately). Read by the zoo itself; the classes are the sub-folder names, sorted.
- `csv`, `json` (`.json` or `.jsonl`), `parquet`: a file, or a folder of such files, read by Hugging Face
  `datasets` (`load_dataset(format, data_files=...)`). datasets calls their one split `train`; a slice
  (`train[:80%]`, `train[80%:]`) takes part of it.
- `imagefolder`: a local folder read by datasets' `imagefolder` builder (class sub-folders, or a metadata file).
- `hub`: a data set on the Hugging Face Hub by its id, written `hf-hub:org/name` (or `format="hub"`), through
  `load_dataset` (the Hugging Face cache first); its split must be named.

`format="auto"` (the default) tells them apart: `hf-hub:` ids, files by suffix, a folder of csv / json /
parquet files by theirs, any other folder as `folder`. The task reads its input column (`image` or `text`,
or `image_column` / `text_column`) and `label_column` (`label`). Labels are class names (strings, a
datasets `ClassLabel`, or the sub-folders) or class indices (integers); how they meet the model's
classes: `zoo.userdata.classes`.

Identity (`UserData.identity`): the format, split, columns and a content fingerprint: for local data the
SHA-256 over every file's path (relative to the data's root), size and full contents (every byte is read;
data sets that fit fine-tuning on a CPU are small, and moving or touching the files then changes nothing),
kept per process by (path, size, mtime); for a Hub data set its id, revision and datasets' own fingerprint of
the loaded split. A variant made from user data carries `_d<8 hex>` of that identity in its name (zoo.variants).

The task a model has decides whether it takes user data: a family declares the tasks (with the fine-tuning
hyper-parameters an entry without a TrainSpec gets) in its light `entries` module as `USER_DATA_TASKS`, and
its `task` module registers in `USER_DATA_ADAPTERS` how rows become batches (`UserDataAdapter`). Named
classes of a label set are registered in `LABEL_NAMES` (by `ModelEntry.label_set`). Nothing here imports
torch or a family at import time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.entry import HUB_PREFIX, DataSpec, ModelEntry, TrainSpec
from zoo.errors import InvalidArgumentError
from zoo.registry import Registry

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

FORMATS = ("folder", "csv", "json", "parquet", "imagefolder", "hub")
CONFIG_KEY = "user_data"  # where a checkpoint's config records the user data it was made / measured with
TABULAR_SUFFIXES = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_SPLIT = "train"  # what datasets calls the one split of local files


class UserDataError(InvalidArgumentError):
    """The user's data cannot be used as named: missing file or folder, unknown format, missing column,
    no examples, labels the model cannot take, a task that takes no user data."""


@dataclass(frozen=True)
class UserData:
    """A data set the user names (see the module docstring). `source`: a local file or folder (kept as its
    absolute path), or a Hub data set id. `split` (datasets' formats only; default `train` for local files,
    required for the Hub), `image_column` / `text_column` (default `image` / `text`), `label_column`,
    `revision` (Hub only)."""

    source: str
    format: str = "auto"
    split: str | None = None
    image_column: str | None = None
    text_column: str | None = None
    label_column: str = "label"
    revision: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "format", "label_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UserDataError(f"UserData.{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("split", "image_column", "text_column", "revision"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise UserDataError(f"UserData.{name} must be None or a non-empty string, got {value!r}")
        fmt, source = self.format, self.source
        if fmt not in ("auto", *FORMATS):
            raise UserDataError(f"unknown data format {fmt!r}; supported: auto, {', '.join(FORMATS)}")
        if source.startswith(HUB_PREFIX) or fmt == "hub":
            source = source.removeprefix(HUB_PREFIX)
            if fmt not in ("auto", "hub") or not source:
                raise UserDataError(f"{self.source!r} names a Hub data set: its format is 'hub', not {fmt!r}")
            fmt = "hub"
            if self.split is None:
                raise UserDataError(f"name the split of the Hub data set {source!r} (e.g. split='validation')")
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise UserDataError(f"no such file or folder: {path}")
            source, fmt = str(path.resolve()), _local_format(path.resolve(), fmt)
            if self.revision is not None:
                raise UserDataError(f"revision applies to Hub data sets, not to the local {source}")
        if fmt == "folder" and self.split is not None:
            raise UserDataError(f"an ImageNet-style folder is one split ({source}): give the training and the "
                                "evaluation data as two folders, without split")
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "format", fmt)

    @classmethod
    def of(cls, value: UserData | str | os.PathLike[str], **options: Any) -> UserData:
        """`value` as UserData: itself (then no `options`), or a path / `hf-hub:` id with `options`."""
        if isinstance(value, UserData):
            if options:
                raise UserDataError(f"{value.source}: a UserData already says its format, split and columns")
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls(str(value), **options)
        raise UserDataError(f"data must be a path, an hf-hub: data set id or a UserData, got {type(value).__name__}")

    @property
    def is_local(self) -> bool:
        return self.format != "hub"

    @property
    def split_name(self) -> str:
        """The split as reports and cards name it: a folder's own name, else datasets' split."""
        if self.format == "folder":
            return Path(self.source).name
        return self.split or DEFAULT_SPLIT

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """The content fingerprint (module docstring): SHA-256 hex."""
        if self.is_local:
            return local_fingerprint(Path(self.source))
        from zoo.userdata.read import hub_fingerprint

        return hub_fingerprint(self)

    def identity(self) -> dict[str, Any]:
        """What decides the examples this names: everything but where local files are, plus the content."""
        fields = {k: v for k, v in self.to_dict().items() if k != "source" or not self.is_local}
        return {**fields, "split": self.split_name if self.format != "folder" else None,
                "fingerprint": self.fingerprint()}

    def dataset_id(self) -> str:
        """How reports and cards name the data set: the Hub id, or `local:<name>@<fingerprint[:8]>`."""
        if not self.is_local:
            return self.source
        return f"local:{Path(self.source).name}@{self.fingerprint()[:8]}"

    def describe(self) -> str:
        what = {"folder": "the ImageNet-style folder", "imagefolder": "the image folder (datasets' imagefolder)",
                "hub": "the Hugging Face Hub data set", "csv": "the csv data", "json": "the JSON data",
                "parquet": "the parquet data"}[self.format]
        where = f"`{self.source}`" + (f" at revision {self.revision}" if self.revision else "")
        split = "" if self.format == "folder" else f", split `{self.split_name}`"
        columns = ", ".join(f"{k.removesuffix('_column')} column `{v}`" for k, v in self.to_dict().items()
                            if k.endswith("_column") and v is not None)
        return f"{what} {where}{split} ({columns}; content SHA-256 {self.fingerprint()[:16]}...)"


def _local_format(path: Path, fmt: str) -> str:
    if path.is_file():
        suffix = TABULAR_SUFFIXES.get(path.suffix.lower())
        if fmt == "auto":
            if suffix is None:
                raise UserDataError(f"cannot tell the format of {path} from its suffix; give format= one of "
                                    f"{', '.join(f for f in FORMATS if f in TABULAR_SUFFIXES.values())}")
            return suffix
        if fmt not in TABULAR_SUFFIXES.values():
            raise UserDataError(f"{path} is a file; format {fmt!r} reads a folder")
        return fmt
    if fmt in ("folder", "imagefolder"):
        return fmt
    suffixes = {TABULAR_SUFFIXES.get(p.suffix.lower()) for p in path.iterdir() if p.is_file()
                and not p.name.startswith(".")}
    if fmt == "auto":
        tabular = suffixes - {None}
        return tabular.pop() if len(tabular) == 1 and None not in suffixes else "folder"
    if fmt not in suffixes:
        raise UserDataError(f"the folder {path} holds no {fmt} files")
    return fmt


_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def data_files(root: Path) -> list[Path]:
    """The regular files of a local data set (a file: itself; a folder: every file under it, hidden ones
    left out), sorted."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def local_fingerprint(root: Path) -> str:
    """SHA-256 over the relative path, size and content hash of every file of the data set at `root`."""
    digest = hashlib.sha256()
    for path in data_files(root):
        name = path.name if root.is_file() else path.relative_to(root).as_posix()
        digest.update(f"{name}\0{path.stat().st_size}\0{_file_hash(path)}\n".encode())
    return digest.hexdigest()


# Fine-tuning on user data -------------------------------------------------------------------------

@dataclass(frozen=True)
class FineTuning:
    """Fine-tuning hyper-parameters on the user's data; each None keeps the default: the entry's TrainSpec
    where it has one (a zoo-native entry), else its task's `USER_DATA_TASKS` defaults. `epochs` are the
    fine-tuning epochs of the recipe's fine-tuning steps (`TrainOptions.finetune_epochs`, when set, still
    shortens them)."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(f"FineTuning.{name} must be None or a positive integer, got {value!r}")
        for name in ("lr", "weight_decay", "label_smoothing"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
                                      or (name == "lr" and value == 0) or (name == "label_smoothing" and value >= 1)):
                raise InvalidArgumentError(f"FineTuning.{name} out of range: {value!r}")

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class TaskDefaults:
    """A task's fine-tuning on user data for an entry without a TrainSpec (an upstream checkpoint):
    `epochs` is the run the default recipes take half of (as of a base's TrainSpec), so fine-tuning is
    `epochs // 2` unless `FineTuning.epochs` or `TrainOptions.finetune_epochs` says otherwise."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: str
    weight_decay: float
    label_smoothing: float


USER_DATA_SPLIT = DataSpec("user-data", "train")  # what a derived TrainSpec names: its batches come from UserData


def user_data_tasks() -> dict[str, TaskDefaults]:
    """Every task that takes user data, with its defaults, as the families' entries modules declare them."""
    from zoo.families import FAMILY_MODULES, entries_module

    tasks: dict[str, TaskDefaults] = {}
    for family in FAMILY_MODULES:
        tasks.update(getattr(entries_module(family), "USER_DATA_TASKS", {}))
    return tasks


def check_takes_user_data(entry: ModelEntry) -> TaskDefaults:
    tasks = user_data_tasks()
    if entry.task not in tasks:
        raise UserDataError(f"{entry.name}'s task ({entry.task}) takes no user data; the tasks that do: "
                            f"{', '.join(sorted(tasks))}")
    return tasks[entry.task]


def finetune_spec(entry: ModelEntry, finetuning: FineTuning | None = None) -> TrainSpec:
    """The TrainSpec the recipes fine-tune `entry` by on user data: the entry's own (its optimizer, lr, batch
    size, weight decay, label smoothing, seed) or its task's `TaskDefaults`, with `finetuning`'s overrides
    (its `epochs` apply through `VariantSpec.recipe`, as fine-tuning epochs)."""
    defaults = check_takes_user_data(entry)
    if entry.train is not None:
        base = {f: getattr(entry.train, f) for f in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing",
                                                      "seed", "optimizer")}
    else:
        base = {**dataclasses.asdict(defaults), "seed": 0}
    overrides = (finetuning or FineTuning()).overrides()
    overrides.pop("epochs", None)
    return TrainSpec(data=USER_DATA_SPLIT, **{**base, **overrides})


def data_tag(identity: dict[str, Any]) -> str:
    """The 8 hex digits a variant name carries for the data (and fine-tuning) it was made with."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


# What families register ----------------------------------------------------------------------------

# label set (ModelEntry.label_set) -> its class names in the model's output order (called on first use)
LABEL_NAMES: Registry[Callable[[], tuple[str, ...]]] = Registry("label set")


def label_names(entry: ModelEntry) -> tuple[str, ...] | None:
    """The class names of `entry`'s outputs, in order, where its label set registered them."""
    from zoo.families import ensure_entries

    ensure_entries()  # the entries modules register the label sets
    if entry.label_set not in LABEL_NAMES:
        return None
    names = tuple(LABEL_NAMES.get(entry.label_set)())
    return names if len(names) == entry.num_classes else None


@dataclass(frozen=True)
class UserDataAdapter:
    """How a task takes user data (registered by its family's task module in `USER_DATA_ADAPTERS`).

    `column`: which input column it reads ("image" or "text": the option `image_column` / `text_column`
    that applies, and that column's default name). `dataset(entry, inputs, labels, training)`: a torch
    Dataset of `(model input, label index)` rows, from the column's values (PIL images, image paths or
    datasets' image dicts; strings) and class indices; `training` selects training-time transforms.
    `with_classes(entry, n)`: the entry whose model has `n` outputs. `reset_classifier(model, n)`: the model's
    classifier replaced by a freshly initialized one of `n` outputs, in place (timm's `num_classes=n`)."""

    column: str
    dataset: Callable[[ModelEntry, Sequence[Any], list[int], bool], Dataset]
    with_classes: Callable[[ModelEntry, int], ModelEntry]
    reset_classifier: Callable[[nn.Module, int], None]


USER_DATA_ADAPTERS: Registry[UserDataAdapter] = Registry("user-data task")
