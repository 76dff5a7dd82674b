"""Compression recipes: config dataclasses (data), one handler per config type, and functional forms."""
from zoo.compress.block import (
    BlockPruningConfig, GradualBlockPruningConfig, apply_block_pruning, apply_gradual_block_pruning,
)
from zoo.compress.config import CONFIG_TYPES, CompressionConfig, register_config
from zoo.compress.pruning import (
    GradualMagnitudePruningConfig, MagnitudePruningConfig, apply_gradual_magnitude_pruning,
    apply_magnitude_pruning, cubic_sparsity, magnitude_masks, prunable_weights,
)
from zoo.compress.quantization import Int8PTQConfig, apply_int8_ptq
from zoo.compress.recipe import HANDLERS, Recipe, RecipeContext, handles

__all__ = [
    "BlockPruningConfig", "GradualBlockPruningConfig", "apply_block_pruning", "apply_gradual_block_pruning",
    "CONFIG_TYPES", "CompressionConfig", "GradualMagnitudePruningConfig", "HANDLERS", "Int8PTQConfig",
    "MagnitudePruningConfig", "Recipe", "RecipeContext", "apply_gradual_magnitude_pruning",
    "apply_int8_ptq", "apply_magnitude_pruning", "cubic_sparsity", "handles", "magnitude_masks",
    "prunable_weights", "register_config",
]
