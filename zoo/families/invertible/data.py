"""Image patches from the photographs that ship inside scikit-image's wheel (`skimage.data`).

Real RGB photographs, available offline: the data of the zoo's image-rescaling and image-compression
models. The split is by image, so the test patches come from photographs never seen in training:

- train: astronaut, coffee, hubble_deep_field, retina, immunohistochemistry, and both views of
  stereo_motorcycle; patches on a grid with the input's `train_stride` (default 3/4 of the patch:
  overlapping; a larger stride gives fewer patches), nearly flat patches (pixel standard deviation
  below 2/255, e.g. retina's black border) left out;
- test: chelsea (a cat) and rocket; non-overlapping patches on a grid, none left out.

Only images bundled with the wheel are read (never `skimage.data`'s downloadable ones), so no network
is ever touched. Pixel values are RGB in [0, 1] (float32); each dataset item is a 1-tuple `(patch,)`.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from zoo.data import DATASET_DESCRIPTIONS, DATASETS
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.families.invertible.entries import DATASET_NAME, PatchInput

TRAIN_IMAGES = ("astronaut", "coffee", "hubble_deep_field", "retina", "immunohistochemistry",
                "motorcycle_left", "motorcycle_right")
TEST_IMAGES = ("chelsea", "rocket")
SPLIT_IMAGES = {"train": TRAIN_IMAGES, "test": TEST_IMAGES}
FLAT_STD = 2.0 / 255.0


def bundled_image(name: str) -> np.ndarray:
    """One of the RGB photographs bundled with scikit-image, as an (H, W, 3) uint8 array."""
    from skimage import data

    if name == "motorcycle_left":
        return data.stereo_motorcycle()[0]
    if name == "motorcycle_right":
        return data.stereo_motorcycle()[1]
    if name not in TRAIN_IMAGES + TEST_IMAGES:
        raise InvalidArgumentError(f"unknown bundled image {name!r}; known: {', '.join(TRAIN_IMAGES + TEST_IMAGES)}")
    return getattr(data, name)()


def grid_patches(image: np.ndarray, patch: int, stride: int) -> torch.Tensor:
    """All `patch` x `patch` crops of an (H, W, 3) uint8 image on a grid of `stride`, as (N, 3, p, p)
    floats in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    crops = tensor.unfold(1, patch, stride).unfold(2, patch, stride)  # (3, nh, nw, p, p)
    return crops.permute(1, 2, 0, 3, 4).reshape(-1, 3, patch, patch).contiguous()


@lru_cache(maxsize=8)
def patches(split: str, patch: int, train_stride: int | None = None) -> torch.Tensor:
    """The deterministic patches of a split (see the module docstring), (N, 3, patch, patch)."""
    if split not in SPLIT_IMAGES:
        raise InvalidArgumentError(f"{DATASET_NAME} has splits {tuple(SPLIT_IMAGES)}, not {split!r}")
    stride = (train_stride or max(1, patch * 3 // 4)) if split == "train" else patch
    chunks = [grid_patches(bundled_image(name), patch, stride) for name in SPLIT_IMAGES[split]]
    result = torch.cat(chunks)
    if split == "train":
        result = result[result.flatten(1).std(dim=1) >= FLAT_STD]
    return result


DATASET_DESCRIPTIONS.register(
    DATASET_NAME, f"RGB patches of the photographs bundled with scikit-image (train: {', '.join(TRAIN_IMAGES)}; "
                  f"test, non-overlapping patches: {', '.join(TEST_IMAGES)})")


@DATASETS.decorator(DATASET_NAME)
def skimage_patches(split: str, entry: ModelEntry) -> Dataset:
    """RGB patches of scikit-image's bundled photographs at the entry's patch size (`PatchInput`)."""
    if not isinstance(entry.input, PatchInput):
        kind = type(entry.input).__name__
        raise InvalidArgumentError(f"{DATASET_NAME} feeds models whose input is a PatchInput, not {kind}")
    return TensorDataset(patches(split, entry.input.patch, entry.input.train_stride))
