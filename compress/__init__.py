"""Compression recipes: config dataclasses (data), one handler per config type, and functional forms.

Names are imported on first use (PEP 562 module `__getattr__`), so `import zoo.compress` imports
neither torch nor the handlers until one of them is asked for; then every config module is imported at
once, so that a recipe read from JSON or YAML finds every registered config type and handler.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.compress.block import (
        BlockPruningConfig, GradualBlockPruningConfig, apply_block_pruning, apply_gradual_block_pruning,
    )
    from zoo.compress.config import CONFIG_TYPES, CompressionConfig, register_config
    from zoo.compress.distill import DistillationConfig, distill_loss, distilling, frozen_copy, output_logits
    from zoo.compress.es_masks import ESMaskConfig, apply_es_masks
    from zoo.compress.lowbit import (
        QATConfig, QuantizedWeight, WeightGrid, apply_qat, bcgd_step, dequantize_weight, quantize_activation, quantize_weight,
    )
    from zoo.compress.lowbit_ptq import LowBitPTQConfig, apply_lowbit_ptq, gptq_quantize
    from zoo.compress.nm import (
        GradualNMPruningConfig, NMPruningConfig, apply_gradual_nm_pruning, apply_nm_pruning, is_nm, nm_mask,
        nm_masks,
    )
    from zoo.compress.pruning import (
        GradualMagnitudePruningConfig, MagnitudePruningConfig, apply_gradual_magnitude_pruning,
        apply_magnitude_pruning, cubic_sparsity, magnitude_masks, prunable_weights,
    )
    from zoo.compress.quantization import Int8PTQConfig, apply_int8_ptq
    from zoo.compress.recipe import HANDLERS, Recipe, RecipeContext, handles
    from zoo.compress.snap import (
        OnlineGRUHooks, OnlineSequence, SnApTrainingConfig, apply_snap_training, register_online_gru,
    )
    from zoo.compress.sparse_training import SparseTrainingConfig, apply_sparse_training, sparse_training_flops
    from zoo.compress.structured import (
        ChannelPruningConfig, HeadPruningConfig, StructuredHooks, apply_channel_pruning, apply_gradual_channel_pruning,
        apply_gradual_head_pruning, apply_head_pruning, register_structured,
    )

_MODULES = {
    "zoo.compress.block": ("BlockPruningConfig", "GradualBlockPruningConfig", "apply_block_pruning",
                           "apply_gradual_block_pruning"),
    "zoo.compress.config": ("CONFIG_TYPES", "CompressionConfig", "register_config"),
    "zoo.compress.distill": ("DistillationConfig", "distill_loss", "distilling", "frozen_copy", "output_logits"),
    "zoo.compress.lowbit": ("QATConfig", "QuantizedWeight", "WeightGrid", "apply_qat", "bcgd_step", "dequantize_weight",
                            "quantize_weight", "quantize_activation"),
    "zoo.compress.lowbit_ptq": ("LowBitPTQConfig", "apply_lowbit_ptq", "gptq_quantize"),
    "zoo.compress.nm": ("GradualNMPruningConfig", "NMPruningConfig", "apply_gradual_nm_pruning", "apply_nm_pruning",
                        "is_nm", "nm_mask", "nm_masks"),
    "zoo.compress.es_masks": ("ESMaskConfig", "apply_es_masks"),
    "zoo.compress.pruning": ("GradualMagnitudePruningConfig", "MagnitudePruningConfig",
                             "apply_gradual_magnitude_pruning", "apply_magnitude_pruning", "cubic_sparsity",
                             "magnitude_masks", "prunable_weights"),
    "zoo.compress.quantization": ("Int8PTQConfig", "apply_int8_ptq"),
    "zoo.compress.recipe": ("HANDLERS", "Recipe", "RecipeContext", "handles"),
    "zoo.compress.snap": ("OnlineGRUHooks", "OnlineSequence", "SnApTrainingConfig", "apply_snap_training",
                          "register_online_gru"),
    "zoo.compress.sparse_training": ("SparseTrainingConfig", "apply_sparse_training", "sparse_training_flops"),
    "zoo.compress.structured": ("ChannelPruningConfig", "HeadPruningConfig", "StructuredHooks",
                                "apply_channel_pruning", "apply_gradual_channel_pruning",
                                "apply_gradual_head_pruning", "apply_head_pruning", "register_structured"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_WHERE)


def register_all() -> None:
    """Imports every step module, which registers its config type (the deserialization allowlist) and
    its handler: what reading a recipe needs first."""
    for each in _MODULES:
        importlib.import_module(each)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo.compress' has no attribute {name!r}")
    register_all()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
