"""SnAp / RTRL online training of a sparse GRU (`zoo.online`, `zoo.compress.snap`): exact RTRL equals
BPTT's gradient, SnAp-n with n >= the sequence length equals RTRL, SnAp-n's influence matrix equals the
recursion J_t = (I_t + D_t J_{t-1}) restricted to its pattern with I_t, D_t from autograd, SnAp-1 holds
one number per parameter, pruned weights get no gradient and stay zero, and the WaveRNN's hook trains
the tiny entry through a recipe."""
from __future__ import annotations

import shutil

import pytest
import torch
from torch.func import functional_call, jacrev

from zoo.compress.block import BlockPruningConfig, apply_block_pruning
from zoo.compress.recipe import HANDLERS, Recipe, RecipeContext
from zoo.compress.snap import SnApTrainingConfig, apply_snap_training, online_gru_hooks
from zoo.errors import InvalidArgumentError, RecipeError
from zoo.online import GRUCell, SnApTracker, reachable_units

K, M, BATCH = 6, 3, 2
NAMES = ("recurrent_weight", "recurrent_bias", "input_weight", "input_bias")


def sparse_cell(density: float, k: int = K, seed: int = 0) -> tuple[GRUCell, torch.Tensor]:
    torch.manual_seed(seed)
    cell = GRUCell(M, k).double()
    mask = torch.rand(3 * k, k) < density
    with torch.no_grad():
        cell.recurrent.weight.mul_(mask)
        cell.recurrent.weight.mul_(2.0)  # larger weights: the units interact visibly
    return cell, mask


def stream(steps: int, k: int = K, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(steps, BATCH, M, generator=g, dtype=torch.float64),
            torch.randn(steps, BATCH, k, generator=g, dtype=torch.float64))


def step_loss(h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((h - target) ** 2).sum() + h.sin().sum()


def bptt_grads(cell: GRUCell, mask: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
    """Autograd through the full unroll of the summed step losses (pruned entries masked out)."""
    cell.zero_grad()
    h = torch.zeros(BATCH, cell.hidden, dtype=torch.float64)
    loss = torch.zeros((), dtype=torch.float64)
    for x, y in zip(xs, ys):
        h = cell(x, h)
        loss = loss + step_loss(h, y)
    loss.backward()
    return {"recurrent_weight": cell.recurrent.weight.grad * mask, "recurrent_bias": cell.recurrent.bias.grad,
            "input_weight": cell.input.weight.grad, "input_bias": cell.input.bias.grad}


def tracker_for(cell: GRUCell, mask: torch.Tensor, n: int | None) -> SnApTracker:
    return SnApTracker(cell.recurrent.weight, cell.recurrent.bias, input_weight=cell.input.weight,
                       input_bias=cell.input.bias, mask=mask, n=n, batch=BATCH)


def online_grads(cell: GRUCell, mask: torch.Tensor, n: int | None, xs: torch.Tensor, ys: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    tracker = tracker_for(cell, mask, n)
    for x, y in zip(xs, ys):
        h = tracker.step(x=x).requires_grad_()
        tracker.accumulate(torch.autograd.grad(step_loss(h, y), h)[0])
    return tracker.grads()


def max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in NAMES)


# The gradient -------------------------------------------------------------------------------------

def test_exact_rtrl_equals_bptt_over_a_sequence() -> None:
    cell, mask = sparse_cell(0.5)
    xs, ys = stream(7)
    reference = bptt_grads(cell, mask, xs, ys)
    assert min(float(g.abs().max()) for g in reference.values()) > 1e-2
    assert max_gap(online_grads(cell, mask, None, xs, ys), reference) < 1e-10


def test_snap_n_at_least_the_sequence_length_equals_rtrl_and_shorter_n_does_not() -> None:
    cell, mask = sparse_cell(0.08, k=8)
    steps = 4
    xs, ys = stream(steps, k=8)
    assert not bool(reachable_units(mask, 2).all()), "a pattern sparse enough that SnAp-2 truncates"
    rtrl = online_grads(cell, mask, None, xs, ys)
    for n in (steps, steps + 3):
        assert max_gap(online_grads(cell, mask, n, xs, ys), rtrl) < 1e-10
    assert max_gap(online_grads(cell, mask, 2, xs, ys), rtrl) > 1e-4
    assert max_gap(online_grads(cell, mask, 1, xs, ys), rtrl) > 1e-4


def test_reachable_units_grow_one_recurrent_hop_per_order() -> None:
    k = 4
    mask = torch.zeros(3 * k, k, dtype=torch.bool)
    mask[k + 1, 0] = True  # reset gate of unit 1 reads unit 0
    mask[2 * k + 2, 1] = True  # candidate of unit 2 reads unit 1
    assert torch.equal(reachable_units(mask, 1), torch.eye(k, dtype=torch.bool))
    two = torch.eye(k, dtype=torch.bool)
    two[1, 0] = two[2, 1] = True
    assert torch.equal(reachable_units(mask, 2), two)
    three = two.clone()
    three[2, 0] = True
    assert torch.equal(reachable_units(mask, 3), three)
    assert torch.equal(reachable_units(mask, 10), three)


@pytest.mark.parametrize("n", [1, 2])
def test_snap_influence_is_the_restricted_rtrl_recursion(n: int) -> None:
    """J_t = (I_t + D_t J_{t-1}) * 1[S_n], with I_t and D_t from autograd on one step of the cell."""
    cell, mask = sparse_cell(0.15, k=8)
    xs, _ = stream(5, k=8)
    tracker = tracker_for(cell, mask, n)
    names = ("recurrent.weight", "recurrent.bias", "input.weight", "input.bias")
    values = [dict(cell.named_parameters())[name].detach() for name in names]
    keep = [mask.reshape(-1), None, None, None]
    pattern = reachable_units(mask, n)  # [unit l, unit j]
    units = torch.cat([torch.arange(v.numel()) // (v.shape[1] if v.ndim == 2 else 1) % 8 for v in values])
    units = units[torch.cat([torch.ones(v.numel(), dtype=torch.bool) if m is None else m
                             for v, m in zip(values, keep)])]
    allowed = pattern[:, units]  # [k, p]

    def one_step(flat: tuple[torch.Tensor, ...], h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(cell, dict(zip(names, flat)), (x, h))

    h = torch.zeros(BATCH, 8, dtype=torch.float64)
    influence = torch.zeros(BATCH, 8, tracker.p, dtype=torch.float64)
    for x in xs:
        for b in range(BATCH):
            jac_params, jac_h = jacrev(one_step, argnums=(0, 1))(tuple(values), h[b], x[b])
            immediate = torch.cat([jp.reshape(8, -1)[:, m] if m is not None else jp.reshape(8, -1)
                                   for jp, m in zip(jac_params, keep)], 1)
            influence[b] = (immediate + jac_h @ influence[b]) * allowed
        h = cell(x, h).detach()
        tracker.step(x=x)
        assert torch.allclose(tracker.dense_influence(), influence, atol=1e-12, rtol=0)
        assert torch.allclose(tracker.h, h, atol=1e-12, rtol=0)
    off_pattern = torch.zeros_like(influence)
    assert float(influence.abs().sum()) > 0 and torch.equal(influence * ~allowed, off_pattern)


def test_snap1_holds_one_number_per_parameter_and_snap2_its_pattern() -> None:
    cell, mask = sparse_cell(0.1, k=8)
    p = int(mask.sum()) + 3 * 8 + 3 * 8 * M + 3 * 8
    snap1 = tracker_for(cell, mask, 1)
    assert snap1.p == p and snap1.influence_entries == p
    snap2 = tracker_for(cell, mask, 2)
    reach = reachable_units(mask, 2).sum(0)  # units per parameter's own unit
    per_unit = mask.reshape(3, 8, 8).sum((0, 2)) + 3 + 3 * M + 3  # parameters of each unit
    assert snap2.pattern_entries == int((reach * per_unit).sum())
    assert p < snap2.pattern_entries < 8 * p
    assert tracker_for(cell, mask, None).influence_entries >= 8 * p


# Masks --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, None])
def test_pruned_weights_get_no_gradient(n: int | None) -> None:
    cell, mask = sparse_cell(0.3)
    xs, ys = stream(5)
    dense_grad = bptt_grads(cell, torch.ones_like(mask), xs, ys)["recurrent_weight"]
    assert float(dense_grad[~mask].abs().min()) > 0, "BPTT would move the pruned weights"
    grads = online_grads(cell, mask, n, xs, ys)
    assert torch.equal(grads["recurrent_weight"][~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))
    assert float(grads["recurrent_weight"][mask].abs().min()) > 0


def test_the_tracker_refuses_a_weight_its_mask_prunes_and_bad_orders() -> None:
    cell, mask = sparse_cell(0.3)
    with pytest.raises(InvalidArgumentError, match="non-zero where the mask prunes"):
        SnApTracker(cell.recurrent.weight, mask=mask & (torch.rand_like(mask, dtype=torch.float) < 0.5), n=1)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(InvalidArgumentError):
            SnApTracker(cell.recurrent.weight, n=bad)
    with pytest.raises(InvalidArgumentError, match="x is needed"):
        tracker_for(cell, mask, 1).step()


# The recipe step ----------------------------------------------------------------------------------

def test_snap_config_validates_round_trips_and_has_a_handler() -> None:
    config = SnApTrainingConfig(n=2, lr=0.01, epochs=2, update_every=4, optimizer="sgd")
    recipe = Recipe((BlockPruningConfig(0.5, block=(16, 1), layers=("recurrent",)), config))
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert "SnApTrainingConfig" in HANDLERS
    for bad in (dict(n=3), dict(n=True), dict(lr=0.0), dict(epochs=0), dict(update_every=1.5),
                dict(optimizer="lbfgs")):
        with pytest.raises(RecipeError):
            SnApTrainingConfig(**bad)


def tiny_wavernn():
    from zoo.families.wavernn.model import build_wavernn
    from zoo.models import get_entry

    torch.manual_seed(0)
    return build_wavernn(get_entry("test_wavernn.zoo_espeak"))


def random_batch(model, batch: int = 2, frames: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(batch, model.cond.in_channels, frames + 2 * model.mel_pad, generator=g)
    return mel, torch.randint(0, 65536, (batch, frames * model.hop), generator=g)


def test_wavernn_hook_steps_reproduce_the_teacher_forced_nll_and_its_gradient() -> None:
    """RTRL through the hook: the mean step loss is `nll_nats`, one SGD step over the whole sequence moves
    the recurrent matrix by -lr * L * d nll / dW (its block-pruned zeros stay)."""
    from zoo.families.wavernn.task import nll_nats

    model = tiny_wavernn()
    apply_block_pruning(model, 0.5, block=(16, 1), layers=("recurrent",))
    mask = model.recurrent.weight.detach() != 0
    batch = random_batch(model, frames=1)
    length = batch[1].shape[1]
    hooks = online_gru_hooks(model)
    assert hooks.recurrent(model) is model.recurrent
    sequence = hooks.sequence(model, batch)
    tracker = SnApTracker(model.recurrent.weight, model.recurrent.bias, n=None, batch=2)
    total = 0.0
    for t in range(length):
        h = tracker.step(sequence.gate_inputs[:, t]).requires_grad_()
        loss = sequence.step_loss(h, t)
        tracker.accumulate(torch.autograd.grad(loss, h)[0])
        total += float(loss.detach())
    nll = nll_nats(model, *batch)
    nll.backward()
    assert total / length == pytest.approx(float(nll.detach()), rel=1e-5)
    grads = tracker.grads()
    expected = model.recurrent.weight.grad * mask * length
    assert torch.allclose(grads["recurrent_weight"], expected, atol=1e-5 * float(expected.abs().max()))
    assert torch.allclose(grads["recurrent_bias"], model.recurrent.bias.grad * length, rtol=1e-4, atol=1e-6)

    before = model.recurrent.weight.detach().clone()
    lr = 0.1
    apply_snap_training(model, RecipeContext(train_batches=lambda epoch: [batch]), n=None, lr=lr,
                        update_every=length, optimizer="sgd")
    moved = model.recurrent.weight.detach() - before
    assert torch.allclose(moved, -lr * expected, atol=1e-5 * float(lr * expected.abs().max()))
    assert torch.equal(model.recurrent.weight.detach()[~mask], torch.zeros(int((~mask).sum())))


def test_subscale_wavernn_is_refused() -> None:
    from zoo.families.wavernn.model import build_wavernn
    from zoo.models import get_entry

    model = build_wavernn(get_entry("test_wavernn_subscale.zoo_espeak"))
    with pytest.raises(InvalidArgumentError, match="plain WaveRNN"):
        online_gru_hooks(model).sequence(model, random_batch(model, frames=2))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (system package) not installed")
def test_a_recipe_block_prunes_and_snap2_trains_the_tiny_wavernn_on_its_speech() -> None:
    """End to end on `test_wavernn.zoo_espeak`'s training data: 16x1 blocks pruned, then SnAp-2 fully
    online; the NLL of the batches it saw drops and the pruned blocks stay zero."""
    from zoo.families.wavernn.task import nll_nats
    from zoo.models import get_entry
    from zoo.tasks import task_of

    entry = get_entry("test_wavernn.zoo_espeak")
    model = tiny_wavernn()
    data = task_of(entry).batches(entry, entry.train.data, batch_size=8, shuffle=True, seed=0)
    batches = [b for _, b in zip(range(2), data.epoch(0))]
    recipe = Recipe((BlockPruningConfig(0.5, block=(16, 1), layers=("recurrent",)),
                     SnApTrainingConfig(n=2, lr=3e-3, epochs=2)))

    def nll() -> float:
        with torch.no_grad():
            return sum(float(nll_nats(model, *b)) for b in batches) / len(batches)

    apply_block_pruning(model, 0.5, block=(16, 1), layers=("recurrent",))  # the recipe does it again: same
    mask = model.recurrent.weight.detach() != 0
    before = nll()
    recipe.apply(model, RecipeContext(train_batches=lambda epoch: batches, progress=False))
    assert torch.equal(model.recurrent.weight.detach() != 0, mask)
    assert nll() < before - 0.05, (before, nll())


def test_snap_variant_names_parse_back_and_build_their_recipe() -> None:
    from zoo.compress.snap import SNAP_ORDERS
    from zoo.variants import SNAP_ORDERS as NAMED_ORDERS
    from zoo.variants import parse_variant_name, resolve

    assert NAMED_ORDERS == SNAP_ORDERS
    base = "test_wavernn.zoo_espeak"
    assert parse_variant_name(f"{base}_gmp90_snap2") == (base, {"method": "gmp", "sparsity": 0.9, "snap": 2})
    assert parse_variant_name(f"{base}_snap1_int8") == (base, {"snap": 1, "quant": "int8"})
    spec = resolve(f"{base}_os90_snap2_int8")
    assert spec.name == f"{base}_os90_snap2_int8" and not spec.is_base
    assert spec.sparse_parent.name == f"{base}_os90_snap2"
    assert [type(s).__name__ for s in spec.recipe().steps] == ["BlockPruningConfig", "SnApTrainingConfig", "Int8PTQConfig"]
    (step,) = resolve(f"{base}_snap1").recipe().steps
    assert step == SnApTrainingConfig(n=1, lr=1e-3, epochs=1, update_every=1, optimizer="adam")
    with pytest.raises(InvalidArgumentError):
        resolve("resnet50.a1_in1k_snap1")  # upstream: no training data to train online on


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (system package) not installed")
def test_zoo_load_derives_a_pruned_snap_variant(tmp_path_factory: pytest.TempPathFactory) -> None:
    import zoo
    from tiny_zoo import one_torch_thread, short_store

    name = "test_wavernn.zoo_espeak_os75_snap1"
    with one_torch_thread():
        store = short_store(tmp_path_factory.mktemp("snap"))
        model = zoo.load(name, store=store, progress=False)
    assert model.zoo.name == name and model.zoo.source == "derived"
    assert [step["type"] for step in model.zoo.report.recipe] == ["BlockPruningConfig", "SnApTrainingConfig"]
    weight = model.recurrent.weight.detach()
    blocks = weight.reshape(weight.shape[0] // 16, 16, weight.shape[1]).abs().sum(1)
    assert (blocks == 0).float().mean() == pytest.approx(0.75, abs=0.01)  # still 75 % block-sparse
