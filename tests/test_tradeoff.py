"""Cosine with warm restarts in the zoo's training loop (zoo.training) and the one-run trade-off curves
built on it (zoo.tradeoff): the schedule's values at hand-computed steps, `on_trough` firing at exactly the
cycle ends, the learning rate the optimizer really used, and the drivers on the tiny test entry."""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from tiny_zoo import BASE, one_torch_thread
from zoo.errors import InvalidArgumentError
from zoo.models import get_entry
from zoo.tradeoff import TradeoffCurve, cycle_epochs, one_run_curve, save_curves, standard_curve
from zoo.training import cycle_ends, cyclic_cosine, train, warmup_cosine


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def test_cyclic_cosine_at_hand_computed_steps() -> None:
    # t0 = 4, m = 2: cycles [0, 4), [4, 12), [12, 28); the factor is (1 + cos(pi tau)) / 2
    expected = {0: 1.0, 1: (1 + math.cos(math.pi / 4)) / 2, 2: 0.5, 3: (1 - math.cos(math.pi / 4)) / 2,
                4: 1.0, 6: (1 + math.cos(math.pi / 4)) / 2, 8: 0.5, 11: (1 + math.cos(7 * math.pi / 8)) / 2,
                12: 1.0, 20: 0.5, 27: (1 + math.cos(15 * math.pi / 16)) / 2, 28: 1.0}
    for step, value in expected.items():
        assert cyclic_cosine(step, 4, 2) == pytest.approx(value, abs=1e-15), step
    assert cycle_ends(4, 2, 40) == [4, 12, 28]  # T0, T0 (1 + m), T0 (1 + m + m^2)
    assert cycle_ends(4, 2, 27) == [4, 12]
    assert cycle_ends(3, 1, 9) == [3, 6, 9]
    assert [cyclic_cosine(s, 3, 1) for s in (0, 3, 6)] == [1.0, 1.0, 1.0]
    assert cycle_epochs(2, 2, 4) == [2, 6, 14, 30]  # the spec's CPU check
    for bad in ((0, 2), (2, 0), (2.0, 2), (True, 2)):
        with pytest.raises(InvalidArgumentError):
            cyclic_cosine(0, *bad)


class _Sum(nn.Module):
    """loss = w: its gradient is 1, so plain SGD moves w by exactly -lr at each step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))


def _run(schedule: str, epochs: int, **kwargs) -> tuple[list[float], list[int], list[str]]:
    model, lrs, events = _Sum(), [], []
    last = [0.0]

    def after_step(step: int) -> None:
        lrs.append(last[0] - float(model.w.detach()))
        last[0] = float(model.w.detach())
        events.append(f"step {step}")

    def on_trough(steps: int) -> None:
        events.append(f"trough {steps}")
        model.eval()

    batches = [None, None, None]  # three steps per epoch
    train(model, lambda epoch: batches, lambda m, b: m.w, epochs=epochs, lr=0.5, weight_decay=0.0, momentum=0.0,
          after_step=after_step, progress=False, schedule=schedule,
          on_trough=on_trough if schedule == "cyclic" else None, **kwargs)
    return lrs, [int(e.split()[1]) for e in events if e.startswith("trough")], events


def test_on_trough_fires_at_exactly_the_cycle_ends_with_the_schedules_learning_rate() -> None:
    lrs, troughs, events = _run("cyclic", 7, t0=1, t_mult=2)  # 21 steps: cycles of 3, 6 and 12 steps
    assert troughs == [3, 9, 21]
    assert events[events.index("trough 3") - 1] == "step 2"  # after the cycle's last step and its after_step
    assert lrs == pytest.approx([0.5 * cyclic_cosine(s, 3, 2) for s in range(21)], abs=1e-12)
    assert lrs[3] == pytest.approx(0.5) and lrs[9] == pytest.approx(0.5)  # warm restarts
    lrs, troughs, _ = _run("cyclic", 4, t0=1, t_mult=2)  # 12 steps: the third cycle is cut short, no trough
    assert troughs == [3, 9]


def test_the_default_schedule_is_unchanged() -> None:
    lrs, _, _ = _run("warmup_cosine", 4)
    assert lrs == pytest.approx([0.5 * warmup_cosine(s, 12, 1) for s in range(12)], abs=1e-12)


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown schedule"):
        train(_Sum(), lambda e: [None], lambda m, b: m.w, epochs=1, lr=0.1, schedule="step")
    with pytest.raises(InvalidArgumentError, match="on_trough needs schedule='cyclic'"):
        train(_Sum(), lambda e: [None], lambda m, b: m.w, epochs=1, lr=0.1, on_trough=print)
    with pytest.raises(InvalidArgumentError, match="t_mult"):
        train(_Sum(), lambda e: [None], lambda m, b: m.w, epochs=1, lr=0.1, schedule="cyclic", t_mult=0)


def test_the_drivers_give_one_point_per_cycle_and_per_budget(tmp_path: Path) -> None:
    entry = get_entry(BASE)
    cyclic = one_run_curve(entry, 1, 1, 2, progress=False)
    assert [p.epochs for p in cyclic.points] == [1, 2] and cyclic.total_epochs == 2
    per_epoch = cyclic.points[0].steps
    assert per_epoch > 0 and cyclic.points[1].steps == 2 * per_epoch
    assert cyclic.points[1].train_flops == pytest.approx(2 * cyclic.points[0].train_flops)
    assert all(set(p.metrics) == {"top1", "top5"} and 0 <= p.metrics["top1"] <= 1 for p in cyclic.points)
    assert 0 < cyclic.points[0].train_seconds < cyclic.points[1].train_seconds

    standard = standard_curve(entry, [1], progress=False)
    (point,) = standard.points
    assert (point.epochs, point.steps, point.train_flops) == (1, per_epoch, cyclic.points[0].train_flops)
    assert standard.total_epochs == 1 and standard.settings == {"budgets": [1]}

    files = save_curves(cyclic, standard, tmp_path)
    assert [f.name for f in files] == ["tradeoff_cyclic.json", "tradeoff_standard.json",
                                       "tradeoff_cyclic_vs_standard.png"]
    assert TradeoffCurve.load(files[0]) == cyclic and TradeoffCurve.load(files[1]) == standard
    assert files[2].read_bytes()[:4] == b"\x89PNG"


def test_the_drivers_refuse_what_they_cannot_train() -> None:
    with pytest.raises(InvalidArgumentError, match="upstream checkpoint"):
        one_run_curve(get_entry("test_resnet.r160_in1k"), 1, 2, 2)
    with pytest.raises(InvalidArgumentError, match="budgets"):
        standard_curve(get_entry(BASE), [2, 2])
    with pytest.raises(InvalidArgumentError, match="cycles"):
        one_run_curve(get_entry(BASE), 1, 2, 0)


@pytest.mark.slow
def test_zoo_evaluate_tradeoff_saves_the_curves_beside_the_base_and_its_card_shows_them(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tiny_zoo import store_env, store_with_base
    from zoo.cli import main
    from zoo.model_cards.plot import TRADEOFF_PLOT_FILE

    store = store_with_base(tmp_path_factory, tmp_path_factory.mktemp("tradeoff"))
    env = store_env(store)
    result = CliRunner().invoke(main, ["evaluate", BASE, "--tradeoff", "1", "2", "2"], env=env)
    assert result.exit_code == 0, result.output
    (folder,) = store.cached_entries(BASE)
    assert (folder / TRADEOFF_PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
    cyclic = TradeoffCurve.load(folder / "tradeoff_cyclic.json")
    assert [p.epochs for p in cyclic.points] == [1, 3]  # troughs after 1 and 1 + 2 epochs
    assert "one cyclic run of 3 epochs; the standard curve took 4" in result.output
    result = CliRunner().invoke(main, ["card", BASE, "--out", str(tmp_path / "cards")], env=env)
    assert result.exit_code == 0, result.output
    assert f"]({TRADEOFF_PLOT_FILE})" in (tmp_path / "cards" / BASE / "README.md").read_text()
    for bad in (["evaluate", f"{BASE}_os90", "--tradeoff", "1", "2", "2"], ["evaluate", "--tradeoff", "1", "2", "2"]):
        result = CliRunner().invoke(main, bad, env=env)
        assert result.exit_code == 1 and "tradeoff" in result.output.lower() or "variant" in result.output
