"""Block pruning (Sparse WaveRNN): whole blocks zero, exact counts, the lowest-mean-|w| blocks chosen,
the cubic schedule followed while training, and the recipe configs validated and serialized."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.compress.block import (
    BlockPruningConfig, GradualBlockPruningConfig, apply_block_pruning, apply_gradual_block_pruning, block_masks,
    block_scores,
)
from zoo.compress.pruning import cubic_sparsity
from zoo.compress.recipe import Recipe, RecipeContext
from zoo.errors import InvalidArgumentError, RecipeError


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 64), nn.Conv2d(4, 16, 2))


def block_view(w: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    bh, bw = block
    m = w.detach().reshape(w.shape[0], -1)
    return m.reshape(m.shape[0] // bh, bh, m.shape[1] // bw, bw).permute(0, 2, 1, 3).flatten(2)


@pytest.mark.parametrize("block", [(4, 4), (16, 1)])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_whole_blocks_are_pruned_exactly_and_the_weakest_ones(block: tuple[int, int], sparsity: float) -> None:
    model = net()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")}
    masks = apply_block_pruning(model, sparsity, block=block, scope="layer")
    assert set(masks) == {"0", "2", "3"}
    for name, module in model.named_modules():
        if name not in masks:
            continue
        blocks = block_view(module.weight, block)
        zero = (blocks == 0).all(-1)
        untouched = (blocks == block_view(before[name], block)).all(-1)
        assert bool((zero | untouched).all()), f"{name}: a block is partly pruned"
        n_blocks = zero.numel()
        assert int(zero.sum()) == math.floor(sparsity * n_blocks), name
        assert int((module.weight == 0).sum()) == math.floor(sparsity * n_blocks) * block[0] * block[1]
        scores = block_view(before[name], block).abs().mean(-1)
        assert float(scores[zero].max()) <= float(scores[~zero].min()), f"{name}: a stronger block was pruned"


def test_global_scope_ranks_blocks_of_all_layers_together() -> None:
    model = net()
    with torch.no_grad():
        model[2].weight.mul_(100.0)  # this layer's blocks all outrank the others'
    masks = apply_block_pruning(model, 0.3, block=(4, 4), scope="global")
    counts = {n: int((~m).sum()) // 16 for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values()) // 16  # 96 + 192 + 16 blocks: 91 pruned, none in "2"
    assert sum(counts.values()) == math.floor(0.3 * total)
    assert counts["2"] == 0 and counts["0"] > 0


def test_layers_and_keep_dense_choose_what_is_pruned() -> None:
    model = net()
    masks = apply_block_pruning(model, 0.5, block=(16, 1), layers=(r"\d",), keep_dense=("0",))
    assert set(masks) == {"2", "3"}
    assert int((model[0].weight == 0).sum()) == 0
    with pytest.raises(InvalidArgumentError, match="no prunable layer"):
        apply_block_pruning(net(), 0.5, layers=("recurrent",))


def test_zero_sparsity_changes_nothing_and_ties_are_broken_exactly() -> None:
    model = net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_block_pruning(model, 0.0)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    weights = {"w": torch.ones(8, 8)}  # every block ties
    assert int((~block_masks(weights, 0.5, (4, 4))["w"]).sum()) == 32


@pytest.mark.parametrize("shape, block", [((10, 8), (4, 4)), ((16, 6), (4, 4)), ((8, 8), (16, 1))])
def test_shapes_that_do_not_split_into_blocks_are_refused(shape: tuple[int, int], block: tuple[int, int]) -> None:
    with pytest.raises(InvalidArgumentError, match="does not split"):
        block_scores(torch.randn(*shape), block)


@pytest.mark.parametrize("kwargs", [{"block": (0, 4)}, {"block": (4,)}, {"block": [4, 4]}, {"sparsity": 1.0},
                                    {"scope": "row"}])
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    args = {"sparsity": 0.5, "block": (4, 4), "scope": "layer", **kwargs}
    with pytest.raises(InvalidArgumentError):
        block_masks({"w": torch.randn(16, 16)}, args["sparsity"], args["block"], args["scope"])


def test_gradual_block_pruning_follows_the_cubic_schedule() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    data = [(torch.randn(8, 16), torch.randn(8, 1)) for _ in range(20)]
    seen: list[float] = []

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        seen.append(float((m[0].weight == 0).float().mean()))  # sparsity left by the previous step
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    context = RecipeContext(train_batches=lambda epoch: data, loss_fn=loss_fn, progress=False)
    masks = apply_gradual_block_pruning(model, context, final_sparsity=0.75, epochs=2, lr=0.01, block=(4, 4),
                                        layers=("0",), begin_fraction=0.0, end_fraction=0.5, frequency=2)
    begin, end, n_blocks = 0, 20, 32
    for step, got in enumerate(seen[1:]):  # seen[s + 1] is the sparsity after step s
        last_prune = min(step - step % 2, end) if step < end else end
        target = cubic_sparsity(last_prune, initial=0.0, final=0.75, begin=begin, end=end)
        assert got == math.floor(target * n_blocks) / n_blocks, f"step {step}"
    assert int((model[0].weight == 0).sum()) == 24 * 16
    assert int((model[2].weight == 0).sum()) == 0 and int((~masks["0"]).sum()) == 24 * 16


def test_configs_round_trip_and_apply_through_a_recipe() -> None:
    recipe = Recipe((BlockPruningConfig(sparsity=0.5, block=(16, 1), layers=("2",)),
                     GradualBlockPruningConfig(final_sparsity=0.9, block=(4, 4), epochs=3, optimizer="adamw")))
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    model = Recipe(recipe.steps[:1]).apply(net())
    assert int((model[2].weight == 0).sum()) == 64 * 48 // 2 and int((model[0].weight == 0).sum()) == 0


@pytest.mark.parametrize("kwargs", [{"block": (0, 4)}, {"block": (4, 4, 4)}, {"final_sparsity": 1.0},
                                    {"optimizer": "lion"}, {"layers": ("(",)}, {"end_fraction": 0.0},
                                    {"initial_sparsity": 0.95}])
def test_invalid_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(RecipeError):
        GradualBlockPruningConfig(**{"final_sparsity": 0.9, **kwargs})
