"""The vision family's builder: timm architectures (ResNet, MobileNet, EfficientNet)."""
from __future__ import annotations

import timm
from torch import nn

from zoo.entry import ModelEntry
from zoo.families.vision import structured  # noqa: F401  (registers the timm models' structured hooks)
from zoo.families.vision.entries import MODEL_FAMILIES
from zoo.models import FAMILIES


def build_timm(entry: ModelEntry) -> nn.Module:
    """A timm architecture with the entry's kwargs (classes, channels), randomly initialized."""
    return timm.create_model(entry.arch, pretrained=False, **entry.model_kwargs)


for _family in MODEL_FAMILIES:
    FAMILIES.register(_family, build_timm)