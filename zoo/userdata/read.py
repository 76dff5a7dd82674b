"""Reading the user's data: the input column's values and the labels of every example (`read_rows`).

ImageNet-style folders are listed here (image paths, read when a batch needs them); the other formats go
through Hugging Face `datasets`. Local files are read into memory (`keep_in_memory`) with datasets' Arrow
cache in a temporary folder removed after, so reading them writes nothing to the user's cache; a Hub data
set is read through the Hugging Face cache, as `load_dataset` does.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from zoo.userdata import IMAGE_SUFFIXES, TABULAR_SUFFIXES, UserData, UserDataError, data_files
from zoo.userdata.classes import Labels


@dataclass(frozen=True)
class Rows:
    """The examples of a data set: the input column's values (lazily indexable) and their labels."""

    inputs: Sequence[Any]
    labels: Labels

    def __len__(self) -> int:
        return len(self.labels.values)


def read_rows(data: UserData, column: str) -> Rows:
    """The `column` values (the task's input: "image" or "text", renamed by the data's options) and the
    labels of `data`'s examples; `UserDataError` for a missing column, no examples or unusable labels."""
    if data.format == "folder":
        if column != "image":
            raise UserDataError(f"{data.source} is an ImageNet-style folder of images; this task reads {column}")
        return _folder_rows(Path(data.source))
    name = data.image_column if column == "image" else data.text_column
    return _dataset_rows(data, name or column, texts=column == "text")


def _folder_rows(root: Path) -> Rows:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserDataError(f"{root} has no class sub-folders (an ImageNet-style folder holds one per class)")
    paths, labels = [], []
    for name in classes:
        for path in data_files(root / name):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(path))
                labels.append(name)
    if not paths:
        raise UserDataError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class sub-folders")
    return Rows(tuple(paths), Labels.of_names(labels, sorted(set(labels))))


class _Column(Sequence):
    """One column of a datasets Dataset, each row read (and an image decoded) when indexed."""

    def __init__(self, dataset: Any, column: str):
        self.dataset, self.column = dataset.select_columns([column]), column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        return self.dataset[int(index)][self.column]


def _dataset_rows(data: UserData, column: str, *, texts: bool) -> Rows:
    """The rows of a datasets data set; with `texts`, its `column` must hold strings (sentences)."""
    dataset = load(data)
    if len(dataset) == 0:
        raise UserDataError(f"{data.describe()} has no examples")
    for needed in (column, data.label_column):
        if needed not in dataset.column_names:
            raise UserDataError(f"{data.source} has no column {needed!r} (its columns: "
                                f"{', '.join(dataset.column_names)}); name it with the column options")
    if texts:
        bad = next((t for t in dataset[column] if not isinstance(t, str)), None)
        if bad is not None:
            raise UserDataError(f"a text column holds strings, not {type(bad).__name__} ({bad!r})")
    return Rows(_Column(dataset, column), _labels(dataset, data))


def _labels(dataset: Any, data: UserData) -> Labels:
    from datasets import ClassLabel

    feature = dataset.features[data.label_column]
    values = dataset[data.label_column]
    if any(v is None for v in values):
        raise UserDataError(f"{data.source}: column {data.label_column!r} has empty labels")
    if isinstance(feature, ClassLabel):
        return Labels.of_names([feature.names[v] for v in values], feature.names)
    if all(isinstance(v, str) for v in values):
        return Labels.of_names(values)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise UserDataError(f"{data.source}: column {data.label_column!r} has negative class indices")
        return Labels(tuple(values), None)
    raise UserDataError(f"{data.source}: column {data.label_column!r} holds {feature}; labels must be class names "
                        "(strings) or class indices (integers)")


def load(data: UserData) -> Any:
    """The `datasets.Dataset` of `data`'s split (not for the `folder` format)."""
    import datasets

    if data.format == "hub":
        return _hub_split(data.source, data.split, data.revision)
    root = Path(data.source)
    if data.format == "imagefolder":
        kwargs: dict[str, Any] = {"data_dir": str(root)}
    else:
        files = [str(p) for p in data_files(root) if TABULAR_SUFFIXES.get(p.suffix.lower()) == data.format]
        kwargs = {"data_files": files}
    with tempfile.TemporaryDirectory(prefix="zoo-datasets-") as cache, _quiet(datasets):
        try:
            return datasets.load_dataset(data.format, split=data.split or "train", cache_dir=cache,
                                         keep_in_memory=True, **kwargs)
        except (ValueError, KeyError, datasets.exceptions.DatasetGenerationError) as err:
            raise UserDataError(f"datasets cannot read {data.source} as {data.format} (split "
                                f"{data.split or 'train'!r}): {' '.join(str(err).split())[:300]}") from None


@contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """datasets' per-split progress bars off while a small local file is read (restored after)."""
    enabled = datasets.utils.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


@lru_cache(maxsize=8)
def _hub_split(repo_id: str, split: str, revision: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(repo_id, split=split, revision=revision)
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        raise UserDataError(f"cannot load the Hub data set {repo_id!r} (split {split!r}): "
                            f"{' '.join(str(err).split())[:300]}") from None


def hub_fingerprint(data: UserData) -> str:
    """A Hub data set's identity: its id, revision, split and datasets' fingerprint of the loaded split."""
    import hashlib

    dataset = _hub_split(data.source, data.split, data.revision)
    return hashlib.sha256(f"{data.source}\0{data.revision}\0{data.split}\0{dataset._fingerprint}".encode()).hexdigest()
