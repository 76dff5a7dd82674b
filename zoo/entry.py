"""The dataclasses that describe a registered checkpoint: what it is, where its weights live, how it
is evaluated and (for zoo-native entries) how it is trained. Kept as dataclasses end to end."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from zoo.compress.config import check_block
from zoo.errors import InvalidArgumentError
from zoo.registry import Registry, class_key

NAME_RE = re.compile(r"(?P<arch>[a-z0-9_]+)\.(?P<tag>[a-z0-9_]+)")
HUB_PREFIX = "hf-hub:"  # timm's prefix for a model addressed by its Hub repo id
# `hf-hub:org/name`: the name of an entry made from a Hub repo (zoo.hub_ids); org and name as the Hub allows
HUB_NAME_RE = re.compile(r"hf-hub:(?P<repo_id>[\w.-]+/[\w.-]+)")

Source = Literal["upstream", "zoo"]
OPTIMIZERS = ("sgd", "adamw")
STRUCTURED_METHODS = ("channels", "heads")  # zoo.variants' structured pruning methods
TRAINING_FIELDS = ("name", "family", "task", "input", "num_classes", "label_set", "model_kwargs", "train")


def split_name(name: str) -> tuple[str, str]:
    """`resnet18.zoo_digits` -> (`resnet18`, `zoo_digits`); the one grammar every entry follows."""
    match = NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if not match:
        raise InvalidArgumentError(f"{name!r} is not of the form 'arch.tag' (lower case, digits, '_')")
    return match["arch"], match["tag"]


def is_hub_name(name: str) -> bool:
    """Whether `name` names an entry made from a Hub repo (`hf-hub:org/name`) rather than `arch.tag`."""
    return isinstance(name, str) and HUB_NAME_RE.fullmatch(name) is not None


_PATH_HUB_PREFIX = "hf-hub--"


def path_slug(name: str) -> str:
    """A model or variant name as one folder name: `arch.tag...` as it is; `hf-hub:org/name+os50` as
    `hf-hub--org--name+os50` (the Hub forbids `--` in repo ids, so `name_from_path_slug` reverses it)."""
    if not name.startswith(HUB_PREFIX):
        return name
    org, _, rest = name[len(HUB_PREFIX):].partition("/")
    return f"{_PATH_HUB_PREFIX}{org}--{rest}"


def name_from_path_slug(slug: str) -> str:
    """The name `path_slug` made `slug` from."""
    if not slug.startswith(_PATH_HUB_PREFIX):
        return slug
    org, _, rest = slug[len(_PATH_HUB_PREFIX):].partition("--")
    return f"{HUB_PREFIX}{org}/{rest}"


@dataclass(frozen=True)
class InputSpec:
    """What the model eats: channels, height/width, the normalization applied before it, and (for
    photographs) the evaluation resize: center crop fraction and interpolation, as timm's configs say."""

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def example_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, self.channels, *self.size)


# The dataclasses a ModelEntry's `input` may be, by `class_key`: what a checkpoint config that records its
# entry (zoo.hub_ids.entry_record) may name, and nothing else (no pickle). Families register theirs in
# their light `entries` module.
INPUT_TYPES: Registry[type] = Registry("input type")


def register_input_type(cls: type) -> type:
    """Allows `cls` (a frozen dataclass of plain fields) as a recorded entry's `input`."""
    return INPUT_TYPES.register(class_key(cls), cls)


register_input_type(InputSpec)


@dataclass(frozen=True)
class DataSpec:
    """A dataset registered in `zoo.data` by name, and the split to use."""

    name: str
    split: str = "test"


@dataclass(frozen=True)
class TrainSpec:
    """How a zoo-native base model is trained, reproducibly (seeded, deterministic data order).
    `init_from` names another entry whose trained weights start this one (fine-tuning a pre-trained
    encoder, MAT's proximal initialization); its family registers how in `zoo.models.INITIALIZERS`."""

    data: DataSpec
    epochs: int
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    optimizer: str = "sgd"
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InvalidArgumentError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"TrainSpec.{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InvalidArgumentError(f"TrainSpec.lr must be a number > 0, got {self.lr!r}")


@dataclass(frozen=True)
class ModelEntry:
    """One registered checkpoint, `arch.tag` as in timm; `tag` says whose weights and how made. An entry
    made from a Hub repo (zoo.hub_ids) is named `hf-hub:org/name` instead and names its architecture in
    `architecture` (for `arch.tag` entries it is empty: the name's arch is the architecture).
    `input` is the family's own frozen dataclass describing what the model eats (InputSpec for images);
    `num_classes` and `label_set` apply to classifiers only. `keep_dense` names the modules the default
    recipes never prune; `prune_block` = (rows, cols) makes them prune whole blocks of that shape
    (Sparse WaveRNN's 16x1) instead of single weights. `compare_with` names base models of the same
    task that this family's cards show beside it (MAT beside the Transformer of equal size).
    `structured` names the structured pruning the family's model supports ("channels": CNN filters;
    "heads": attention heads and FFN neurons), None where it has none; the sweep builds it."""

    name: str
    family: str
    task: str
    repo_id: str
    source: Source
    input: Any
    eval_data: DataSpec
    num_classes: int = 0
    label_set: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    revision: str = "main"
    train: TrainSpec | None = None
    keep_dense: tuple[str, ...] = ()
    prune_block: tuple[int, int] | None = None
    compare_with: tuple[str, ...] = ()
    structured: str | None = None
    description: str = ""
    license: str = "apache-2.0"
    architecture: str = ""

    def __post_init__(self) -> None:
        if is_hub_name(self.name):
            if not self.architecture:
                raise InvalidArgumentError(f"{self.name}: an entry named by its Hub repo needs its architecture")
        else:
            split_name(self.name)
        if self.prune_block is not None:
            check_block(self.prune_block)
        if self.structured is not None and self.structured not in STRUCTURED_METHODS:
            raise InvalidArgumentError(f"structured must be None or one of {', '.join(STRUCTURED_METHODS)}, "
                                       f"got {self.structured!r}")
        if self.source == "zoo" and self.train is None:
            raise InvalidArgumentError(f"zoo-native entry {self.name!r} needs a TrainSpec")

    @property
    def arch(self) -> str:
        return self.architecture or split_name(self.name)[0]

    @property
    def tag(self) -> str:
        """The name's tag; for an `hf-hub:` entry, its repo id (whose weights, as a tag says)."""
        return HUB_NAME_RE.fullmatch(self.name)["repo_id"] if is_hub_name(self.name) else split_name(self.name)[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def training_identity(self) -> dict[str, Any]:
        """The fields that decide what weights training produces (a trained base's cache key): not
        its description, evaluation, publishing or compression defaults, so changing those keeps it."""
        return {name: value for name, value in self.to_dict().items() if name in TRAINING_FIELDS}
