"""The vision family's data sets.

`digits` is scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): real data that
ships with a dependency, so the zoo-native models train and evaluate offline. `imagefolder` is the real
loader for ImageNet-style folders (class sub-folders of images), used for upstream checkpoints; its root
comes from the `ZOO_IMAGEFOLDER_<SPLIT>` environment variable or an explicit path.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from zoo.data import DATASET_DESCRIPTIONS, DATASETS
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError, NoEvaluationDataError

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
SPLITS = ("train", "test")


@lru_cache(maxsize=8)
def _digits_tensors(split: str, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise InvalidArgumentError(f"digits has splits {SPLITS}, not {split!r}")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED, stratify=labels.numpy(),
    )
    index = torch.as_tensor(train_idx if split == "train" else test_idx)
    images = F.interpolate(images[index], size=size, mode="bilinear", align_corners=False)
    images = (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return images, labels[index]


DATASET_DESCRIPTIONS.register(
    "digits", "scikit-learn's bundled handwritten digits (1,797 8x8 grey images, 10 classes), stratified 80/20 "
              "train/test split with seed 0, upsampled to 32x32")


@DATASETS.decorator("digits")
def digits(split: str, entry: ModelEntry) -> Dataset:
    """scikit-learn digits, stratified 80/20 split (seed 0), upsampled to the model's input size."""
    spec = entry.input
    if spec.channels != 1:
        raise InvalidArgumentError(f"digits is grey (1 channel); the model wants {spec.channels}")
    return TensorDataset(*_digits_tensors(split, tuple(spec.size), tuple(spec.mean), tuple(spec.std)))


def imagefolder_root(split: str) -> Path:
    variable = f"ZOO_IMAGEFOLDER_{split.upper()}"
    root = os.environ.get(variable)
    if not root:
        raise NoEvaluationDataError(f"no {split} data: set {variable} to an ImageNet-style folder "
                                    "(one sub-folder per class)")
    if not Path(root).is_dir():
        raise InvalidArgumentError(f"{variable}={root} is not a folder")
    return Path(root)


DATASET_DESCRIPTIONS.register("imagefolder", "an ImageNet-style folder of class sub-folders (ImageNet-1k validation)")


@DATASETS.decorator("imagefolder")
def imagefolder(split: str, entry: ModelEntry) -> Dataset:
    """Class-per-folder images (ImageNet validation layout), resized and center-cropped as timm does."""
    spec = entry.input
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    transform = create_transform(
        input_size=(spec.channels, *spec.size), interpolation=spec.interpolation, mean=spec.mean, std=spec.std,
        crop_pct=spec.crop_pct, is_training=False,
    )
    return ImageFolder(str(imagefolder_root(split)), transform=transform)


# The user's images (zoo.userdata) ------------------------------------------------------------------

def image_transform(entry: ModelEntry, training: bool):
    """timm's transform for the entry's input: its evaluation resize and center crop (crop_pct,
    interpolation), or its training transform (random resized crop, horizontal flip, color jitter), then
    the entry's normalization; grey inputs for a 1-channel model."""
    from timm.data import create_transform

    spec = entry.input
    return create_transform(input_size=(spec.channels, *spec.size), is_training=training,
                            interpolation=spec.interpolation, mean=spec.mean, std=spec.std, crop_pct=spec.crop_pct)


class UserImages(Dataset):
    """`(image tensor, label)` rows of the user's images: PIL images, paths, or datasets' image dicts
    (`{"path", "bytes"}`), converted to the model's channels (grey "L" or "RGB") and transformed."""

    def __init__(self, entry: ModelEntry, images, labels: list[int], training: bool):
        if entry.input.channels not in (1, 3):
            raise InvalidArgumentError(f"{entry.name} takes {entry.input.channels}-channel images; user images "
                                       "are read as grey (1) or RGB (3)")
        self.images, self.labels = images, labels
        self.mode = "L" if entry.input.channels == 1 else "RGB"
        self.transform = image_transform(entry, training)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(_pil(self.images[index]).convert(self.mode)), self.labels[index]


def _pil(value):
    import io

    from PIL import Image

    from zoo.userdata import UserDataError

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    if isinstance(value, (str, os.PathLike, io.BytesIO)):
        try:
            image = Image.open(value)
            image.load()  # read now: the file is closed after
            return image
        except OSError as err:
            raise UserDataError(f"cannot read the image {value}: {err}") from None
    raise UserDataError(f"an image column holds images (or their paths), not {type(value).__name__}")
