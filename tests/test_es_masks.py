"""ES masks: the fitness shaping, the NES step on the logits against hand computations, the density kept on
schedule, exact final counts, the vectorized and the sequential evaluation agreeing, the config, and that
it learns: on a linear map with a planted sparse solution it finds the support a random mask misses."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from zoo.compress import ESMaskConfig, Recipe, RecipeContext, apply_es_masks
from zoo.compress import es_masks
from zoo.compress.config import CompressionConfig
from zoo.compress.es_masks import MaskDistribution, centred_ranks, nes_gradient, renormalize_logits, top_k_masks
from zoo.compress.pruning import apply_masks, cubic_sparsity
from zoo.errors import InvalidArgumentError, RecipeError
from zoo.training import train


# Fitness shaping ---------------------------------------------------------------------------------

def test_centred_ranks_hand_values() -> None:
    # fitness -L for L = (1, 3, 2): ranks (2, 0, 1) of 3 -> r / 2 - 1/2
    assert centred_ranks(-torch.tensor([1.0, 3.0, 2.0])).tolist() == [0.5, -0.5, 0.0]
    assert centred_ranks(torch.tensor([10.0, -4.0, 0.0, 7.0, 1.0])).tolist() == [0.5, -0.5, -0.25, 0.25, 0.0]


def test_centred_ranks_ties_share_their_mean_rank() -> None:
    # ranks of (2, 2, 0, 5): the 2s share (1 + 2) / 2 = 1.5 -> 1.5 / 3 - 1/2 = 0
    assert centred_ranks(torch.tensor([2.0, 2.0, 0.0, 5.0])).tolist() == [0.0, 0.0, -0.5, 0.5]
    assert centred_ranks(torch.full((6,), 3.0)).tolist() == [0.0] * 6, "no information, no update"
    with pytest.raises(InvalidArgumentError):
        centred_ranks(torch.tensor([1.0]))


# The NES step on a 3-weight toy with fixed samples -----------------------------------------------

SAMPLES = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
LOSSES = torch.tensor([1.0, 3.0, 2.0])  # shaped fitness (1/2, -1/2, 0)


def test_nes_gradient_hand_computation() -> None:
    probs = torch.sigmoid(torch.tensor([0.3, -1.0, 2.0]))
    # (1/3) sum_k A_k (m_k - p) = (1/3)(1/2 (m_1 - p) - 1/2 (m_2 - p)) = (1/6)(1, -1, 0): the p terms cancel
    expected = torch.tensor([1.0, -1.0, 0.0]) / 6
    assert torch.allclose(nes_gradient(SAMPLES, probs, LOSSES), expected)
    # four samples, unequal counts: A = (1/2, -1/6, 1/6, -1/2) for L = (0, 2, 1, 5)
    samples = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    shaped = torch.tensor([0.5, -1 / 6, 1 / 6, -0.5])
    by_hand = sum(a * (m - probs) for a, m in zip(shaped, samples)) / 4
    assert torch.allclose(nes_gradient(samples, probs, torch.tensor([0.0, 2.0, 1.0, 5.0])), by_hand)


def test_sgd_step_on_the_logits_by_hand() -> None:
    dist = MaskDistribution([3], scope="layer", density=0.5, lr=0.6, optimizer="sgd")
    assert dist.logits.tolist() == [0.0, 0.0, 0.0]
    dist.step(SAMPLES, LOSSES, 0.5)
    # theta + 0.6 * (1/6, -1/6, 0) = (0.1, -0.1, 0): symmetric about 0, so its mean p is 1/2 already
    assert torch.allclose(dist.logits.detach(), torch.tensor([0.1, -0.1, 0.0]), atol=1e-7)
    dist.step(SAMPLES, LOSSES, 0.3)  # (0.2, -0.2, 0) shifted by the b with mean sigmoid = 0.3
    shifted = dist.logits.detach() - torch.tensor([0.2, -0.2, 0.0])
    assert torch.allclose(shifted, shifted[0].expand(3), atol=1e-6), "one shift for the whole group"
    assert dist.probs.double().mean().item() == pytest.approx(0.3, abs=1e-6)


def test_adam_first_step_moves_each_logit_by_lr_times_the_sign() -> None:
    dist = MaskDistribution([3], scope="layer", density=0.5, lr=0.25, optimizer="adam")
    dist.step(SAMPLES, LOSSES, 0.5)  # Adam's bias-corrected first step is lr * g / |g| (0 where g = 0)
    assert torch.allclose(dist.logits.detach(), torch.tensor([0.25, -0.25, 0.0]), atol=1e-6)


def test_renormalize_hits_the_density_and_keeps_the_differences() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 4
    for density in (0.01, 0.1, 0.5, 0.95):
        before = logits.clone()
        shift = renormalize_logits(logits, density)
        assert torch.sigmoid(logits.double()).mean().item() == pytest.approx(density, abs=1e-6)  # float32 logits
        assert torch.allclose(logits - before, torch.tensor(shift, dtype=torch.float32).expand(1000), atol=1e-5)
    with pytest.raises(InvalidArgumentError):
        renormalize_logits(logits, 1.0)


def test_global_scope_renormalizes_all_weights_together() -> None:
    dist = MaskDistribution([4, 6], scope="global", density=0.5, lr=1.0, optimizer="sgd")
    with torch.no_grad():
        dist.logits.copy_(torch.tensor([3.0, 3, 3, 3, -1, -1, -1, -1, -1, -1]))
    dist.step(torch.zeros(2, 10), torch.tensor([1.0, 1.0]), 0.2)  # no information: only the shift
    probs = dist.probs.double()
    assert probs.mean().item() == pytest.approx(0.2, abs=1e-6)
    assert probs[:4].mean() > 0.2 > probs[4:].mean(), "the layers keep their different densities"


# Final masks ---------------------------------------------------------------------------------------

def test_top_k_masks_keep_exactly_the_largest_with_ties_by_position() -> None:
    weights = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    logits = torch.tensor([0.5, 2.0, 0.5, 0.5, -1.0, 0.0, 3.0, 1.0, -2.0, 1.0])
    layer = top_k_masks(logits, weights, 0.5, "layer")  # keep 3 of 6 and 2 of 4
    assert layer["a"].reshape(-1).tolist() == [True, True, True, False, False, False]
    assert layer["b"].tolist() == [True, True, False, False]
    glob = top_k_masks(logits, weights, 0.6, "global")  # keep 10 - 6 = 4: 3.0, 2.0, 1.0, 1.0
    assert glob["a"].reshape(-1).tolist() == [False, True, False, False, False, False]
    assert glob["b"].tolist() == [True, True, False, True]


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def tiny_context(seed: int = 0, n: int = 64, batch: int = 16) -> RecipeContext:
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    data = [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]
    return RecipeContext(train_batches=lambda epoch: data, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                         progress=False, seed=seed)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("fixed_fraction", [0.0, 0.25])
def test_final_mask_keeps_exactly_the_target_count(scope: str, fixed_fraction: float) -> None:
    torch.manual_seed(0)
    model = TinyMLP()
    masks = apply_es_masks(model, tiny_context(), sparsity=0.9, epochs=2, lr=0.05, population=4, scope=scope,
                           fixed_fraction=fixed_fraction, end_fraction=0.5)
    sizes = {"fc1": 128, "fc2": 48}
    if scope == "layer":
        for name, n in sizes.items():
            assert int(masks[name].sum()) == n - math.floor(0.9 * n), name
    else:
        assert sum(int(m.sum()) for m in masks.values()) == 176 - math.floor(0.9 * 176)
    for name, module in (("fc1", model.fc1), ("fc2", model.fc2)):
        assert bool((module.weight[~masks[name]] == 0).all()), f"{name}: pruned weights are zero"
    assert model.fc1.bias.count_nonzero() > 0, "biases are never masked"


def test_density_follows_the_schedule_at_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[float]] = []
    step = MaskDistribution.step

    def recording(self: MaskDistribution, samples: torch.Tensor, losses: torch.Tensor, density: float) -> None:
        step(self, samples, losses, density)
        seen.append([density] + [self.probs[g].double().mean().item() for g in self.groups])

    monkeypatch.setattr(MaskDistribution, "step", recording)
    apply_es_masks(TinyMLP(), tiny_context(), sparsity=0.8, epochs=3, lr=0.05, population=4, initial_sparsity=0.1,
                   end_fraction=0.5, fixed_fraction=0.25)
    total, end = 12, 6
    assert len(seen) == total - 3, "no ES step once the mask is fixed"
    for t, (target, *means) in enumerate(seen):
        assert target == pytest.approx(1 - cubic_sparsity(t + 1, initial=0.1, final=0.8, begin=0, end=end))
        assert means == pytest.approx([target, target], abs=1e-6), "each layer's mean p at the target"
    assert seen[-1][0] == pytest.approx(0.2)


def test_vectorized_and_sequential_evaluations_agree() -> None:
    models = []
    for vectorized in (True, False):
        torch.manual_seed(0)
        model = TinyMLP()
        masks = apply_es_masks(model, tiny_context(), sparsity=0.7, epochs=2, lr=0.05, population=4,
                               vectorized=vectorized)
        models.append((model, masks))
    (a, masks_a), (b, masks_b) = models
    assert all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_it_needs_data_and_a_valid_sparsity() -> None:
    with pytest.raises(RecipeError, match="ES masks needs train_batches, loss_fn"):
        apply_es_masks(TinyMLP(), RecipeContext(), sparsity=0.5, epochs=1, lr=0.1)
    for bad in (dict(sparsity=0.0), dict(sparsity=1.0), dict(sparsity=0.5, population=1),
                dict(sparsity=0.5, initial_sparsity=0.6), dict(sparsity=0.5, end_fraction=0.9, fixed_fraction=0.2)):
        with pytest.raises(InvalidArgumentError):
            apply_es_masks(TinyMLP(), tiny_context(), epochs=1, lr=0.1, **bad)


# The config ----------------------------------------------------------------------------------------

def test_config_round_trips_and_runs_through_its_handler() -> None:
    config = ESMaskConfig(sparsity=0.75, epochs=1, population=4, scope="global", vectorized=False)
    recipe = Recipe((config,))
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert CompressionConfig.from_dict(config.to_dict()) == config
    model = recipe.apply(TinyMLP(), tiny_context())
    kept = int((model.fc1.weight != 0).sum() + (model.fc2.weight != 0).sum())
    assert kept <= 176 - math.floor(0.75 * 176)


@pytest.mark.parametrize("bad", [
    dict(sparsity=0.0), dict(sparsity=1.0), dict(population=1), dict(population=2.5), dict(mask_lr=0.0),
    dict(mask_optimizer="rmsprop"), dict(initial_sparsity=0.0), dict(initial_sparsity=0.95),
    dict(end_fraction=0.0), dict(end_fraction=0.95, fixed_fraction=0.1), dict(scope="row"), dict(optimizer="lbfgs"),
    dict(vectorized=1), dict(keep_dense=("(",)), dict(epochs=0),
])
def test_config_validation(bad: dict) -> None:
    with pytest.raises(RecipeError):
        ESMaskConfig(**{"sparsity": 0.9, **bad})


# It learns -----------------------------------------------------------------------------------------

def planted(seed: int) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 32 -> 4 linear map (128 weights) of which 12 are non-zero; 384 training and 256 test pairs."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(128)
    support = torch.randperm(128, generator=g)[:12]
    truth[support] = (1 + torch.rand(12, generator=g)) * torch.where(torch.rand(12, generator=g) < 0.5, -1.0, 1.0)
    x = torch.randn(640, 32, generator=g)
    y = x @ truth.reshape(4, 32).T + 0.01 * torch.randn(640, 4, generator=g)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 384, 32)]
    return batches, x[384:], y[384:], truth.reshape(4, 32) != 0


def _fit_es(seed: int, batches: list) -> tuple[nn.Linear, dict[str, torch.Tensor]]:
    context = RecipeContext(train_batches=lambda epoch: batches, loss_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]),
                            progress=False, seed=seed)
    torch.manual_seed(seed)
    model = nn.Linear(32, 4, bias=False)
    masks = apply_es_masks(model, context, sparsity=0.9, epochs=15, lr=0.05, population=8, weight_decay=0.0)
    return model, masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_es_masks_find_a_planted_support_that_random_masks_miss(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    batches, x_test, y_test, support = planted(seed)
    es_model, masks = _fit_es(seed, batches)
    torch.manual_seed(seed)
    random_model = nn.Linear(32, 4, bias=False)
    keep = torch.zeros(128, dtype=torch.bool)  # 13 kept, as 128 - floor(0.9 * 128)
    keep[torch.randperm(128, generator=torch.Generator().manual_seed(1000 + seed))[:13]] = True
    random_masks = {"": keep.reshape(4, 32)}
    apply_masks({"": random_model.weight}, random_masks)
    train(random_model, lambda epoch: batches, lambda m, b: F.mse_loss(m(b[0]), b[1]), epochs=15, lr=0.05,
          weight_decay=0.0, progress=False, after_step=lambda _: apply_masks({"": random_model.weight}, random_masks))
    with torch.no_grad():
        es_mse = F.mse_loss(es_model(x_test), y_test).item()
        random_mse = F.mse_loss(random_model(x_test), y_test).item()
    found = int((masks[""] & support).sum())
    assert found >= 11, f"ES kept {found} of the 12 planted weights"
    assert es_mse < 0.25 * random_mse, (es_mse, random_mse)

    # the control: the same run with each step's losses shuffled before the ranks finds what chance finds
    shuffle = torch.Generator().manual_seed(seed)
    informed = es_masks.nes_gradient
    monkeypatch.setattr(es_masks, "nes_gradient", lambda samples, probs, losses: informed(
        samples, probs, losses[torch.randperm(losses.numel(), generator=shuffle)]))
    _, blind = _fit_es(seed, batches)
    assert int((blind[""] & support).sum()) <= 4, "without the fitness signal the support is not found"


def test_es_variant_names_parse_back_and_build_their_recipe() -> None:
    from zoo.variants import parse_variant_name, resolve

    base = "test_resnet.zoo_digits"
    assert parse_variant_name(f"{base}_es90_int8") == (base, {"method": "es", "sparsity": 0.9, "quant": "int8"})
    spec = resolve(base, sparsity=0.95, method="es")
    assert spec.name == f"{base}_es95" and resolve(spec.name) == spec
    (step,) = spec.recipe().steps
    entry = spec.base
    assert step == ESMaskConfig(sparsity=0.95, epochs=max(1, round(entry.train.epochs / 2)), lr=entry.train.lr,
                                population=8, keep_dense=entry.keep_dense, weight_decay=entry.train.weight_decay,
                                optimizer=entry.train.optimizer, vectorized=False)


@pytest.mark.slow
def test_zoo_load_derives_an_es_variant_of_a_batchnorm_cnn(tmp_path_factory: pytest.TempPathFactory) -> None:
    import zoo
    from tiny_zoo import one_torch_thread, store_with_base
    from zoo.compress.pruning import prunable_weights

    name = "test_resnet.zoo_digits_es90"
    with one_torch_thread():
        store = store_with_base(tmp_path_factory, tmp_path_factory.mktemp("es"))
        model = zoo.load(name, store=store, progress=False)
    weights = prunable_weights(model, zoo.resolve(name).base.keep_dense)
    for w in weights.values():  # each layer at exactly its count (scope "layer")
        assert int((w == 0).sum()) >= int(0.9 * w.numel())
    assert model.zoo.report.metrics  # measured
