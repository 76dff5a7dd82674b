"""The vision family's builder: timm architectures (ResNet, MobileNet, EfficientNet, and every family of
timm's catalog)."""
from __future__ import annotations

import timm
from torch import nn

from zoo.entry import ModelEntry
from zoo.families.vision import structured  # noqa: F401  (registers the timm models' structured hooks)
from zoo.families.vision.entries import MODEL_FAMILIES, timm_family
from zoo.models import FAMILIES


def build_timm(entry: ModelEntry) -> nn.Module:
    """A timm architecture with the entry's kwargs (classes, channels; a catalog entry's `pretrained_cfg`
    tag, whose config sets its classes and input size), randomly initialized."""
    return timm.create_model(entry.arch, pretrained=False, **entry.model_kwargs)


for _arch in timm.list_models():
    timm_family(_arch)  # every family a timm entry can have, in MODEL_FAMILIES
for _family in MODEL_FAMILIES:
    FAMILIES.register(_family, build_timm)