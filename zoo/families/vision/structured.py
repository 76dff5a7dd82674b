"""How the vision family's timm models are channel-pruned, saved and rebuilt.

Channel pruning itself is the core's (torch-pruning's dependency graph works on any timm CNN). What
the family adds is the architecture's description in timm's own pruned-model format: the shape of
every state-dict tensor, `key:[d0, d1, ...]` joined by `***` (the format of timm's `_pruned/*.txt`
files), which `timm.models._prune.adapt_model_from_string(timm.create_model(arch), string)` turns into
the pruned model. So the saved config rebuilds the model with plain timm code.
"""
from __future__ import annotations

from typing import Any

from timm.models._prune import adapt_model_from_string
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from torch import nn

from zoo.compress.structured import StructuredHooks, register_structured
from zoo.errors import CheckpointError

FORMAT = "timm-pruned"
SEPARATOR = "***"


def pruned_string(model: nn.Module) -> str:
    """The model's state-dict shapes in timm's pruned-model string format."""
    return SEPARATOR.join(f"{key}:{list(tensor.shape)}" for key, tensor in model.state_dict().items())


def describe(model: nn.Module) -> dict[str, Any]:
    return {"format": FORMAT, "timm_pruned": pruned_string(model)}


def rebuild(model: nn.Module, architecture: dict[str, Any]) -> nn.Module:
    """`model` (timm's default architecture) adapted to the saved widths, on `model`'s device."""
    if architecture.get("format") != FORMAT or not isinstance(architecture.get("timm_pruned"), str):
        raise CheckpointError(f"a {type(model).__name__} architecture must be {FORMAT!r} with a 'timm_pruned' "
                              f"string, got keys {sorted(architecture)}")
    try:
        return adapt_model_from_string(model, architecture["timm_pruned"])
    except (KeyError, ValueError, IndexError) as err:
        raise CheckpointError(f"the saved timm pruned-model string does not fit {type(model).__name__}: "
                              f"{err!r}") from None


HOOKS = StructuredHooks(describe=describe, rebuild=rebuild, channels=True)
for _model_type in (ResNet, EfficientNet, MobileNetV3):  # resnet*, mobilenetv2*/efficientnet*, mobilenetv3*
    register_structured(_model_type, HOOKS)
