"""The linear-path analysis (zoo.evaluate.linear_path): exact endpoints, the analytic parabola of a
quadratic loss, BatchNorm statistics recomputed at each point, refusals of models without a line between
them, and `zoo evaluate --path A B` writing the path and its plot beside B, which B's card then shows."""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard
from torch import nn
from torch.nn import functional as F

import zoo
from tiny_zoo import BASE, one_torch_thread, store_env, store_with_base
from zoo.catalog import family_models
from zoo.cli import main
from zoo.errors import InvalidArgumentError
from zoo.evaluate.linear_path import (
    IncompatibleModelsError, LinearPath, check_same_architecture, linear_path, mean_loss, path_alphas,
    path_file_stem, recompute_batchnorm,
)
from zoo.model_cards import validate_card
from zoo.publish import family_cards, saved_analysis_plots, write_family_cards
from zoo.store import Store

OS50 = f"{BASE}_os50"


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))


def _batches(n: int = 3, seed: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, generator=generator), torch.randn(4, 2, generator=generator)) for _ in range(n)]


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


def test_endpoints_are_each_models_own_loss_exactly_and_the_models_are_untouched() -> None:
    a, b, batches = _mlp(0), _mlp(1), _batches()
    before = [copy.deepcopy(m.state_dict()) for m in (a, b)]
    path = linear_path(a, b, _mse, batches, 5)
    assert path.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    with torch.no_grad():
        own_a = sum(float(_mse(a, batch)) for batch in batches) / len(batches)
        own_b = sum(float(_mse(b, batch)) for batch in batches) / len(batches)
    assert path.at(0.0) == own_a == path.own_loss_a and path.at(1.0) == own_b == path.own_loss_b
    assert not path.bn_recomputed and path.metrics == []
    for model, state in zip((a, b), before):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    middle = copy.deepcopy(a)  # an interior point is the interpolated model, by hand
    middle.load_state_dict({k: 0.75 * v + 0.25 * b.state_dict()[k] for k, v in a.state_dict().items()})
    assert path.loss[1] == pytest.approx(mean_loss(middle, _mse, batches), rel=1e-6)


class _Vector(nn.Module):
    def __init__(self, values: list[float]):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_a_quadratic_loss_gives_the_analytic_parabola_and_barrier() -> None:
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    a, b = _Vector([1.0, 2.0, 3.0]), _Vector([-1.0, 0.0, 1.0])

    def quadratic(model: nn.Module, _batch: object) -> torch.Tensor:
        return ((model.w - c) ** 2).sum()

    path = linear_path(a, b, quadratic, [None], 15, span=(-0.2, 1.2))
    assert path.alphas[0] == pytest.approx(-0.2) and path.alphas[-1] == pytest.approx(1.2)
    assert 0.0 in path.alphas and 1.0 in path.alphas and len(path.alphas) == 15
    d0, delta = a.w.detach() - c, b.w.detach() - a.w.detach()  # L(t) = |d0|^2 + 2 t d0.delta + t^2 |delta|^2
    for t, loss in zip(path.alphas, path.loss):
        expected = float(d0 @ d0 + 2 * t * (d0 @ delta) + t * t * (delta @ delta))
        assert loss == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert path.barrier == pytest.approx(0.0, abs=1e-12)  # convex: never above the chord

    concave = linear_path(a, b, lambda m, batch: -quadratic(m, batch), [None], 11)
    assert concave.barrier == pytest.approx(float(delta @ delta) / 4)  # t (1 - t) |delta|^2 at t = 1/2


class _ConvBN(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv, self.bn, self.fc = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Linear(3, 2)
        self.bn.running_mean.uniform_(-1, 1)  # stored statistics that are not the data's
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def _image_batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 5, 5, generator=generator) + 1, torch.randn(4, 2, generator=generator))
            for _ in range(n)]


def test_batchnorm_statistics_are_recomputed_at_every_point() -> None:
    a, b = _ConvBN(0), _ConvBN(1)
    batches, bn_batches = _image_batches(2, 3), _image_batches(3, 4)
    with pytest.raises(InvalidArgumentError, match="bn_batches"):
        linear_path(a, b, _mse, batches, 3)
    path = linear_path(a, b, _mse, batches, 3, bn_batches=bn_batches)
    assert path.bn_recomputed
    assert path.own_loss_a == mean_loss(copy.deepcopy(a), _mse, batches)  # with their stored statistics
    assert path.own_loss_b == mean_loss(copy.deepcopy(b), _mse, batches)
    for model, alpha in ((a, 0.0), (b, 1.0)):
        fresh = copy.deepcopy(model)
        recompute_batchnorm(fresh, _mse, bn_batches)
        assert path.at(alpha) == mean_loss(fresh, _mse, batches)
        assert path.at(alpha) != mean_loss(copy.deepcopy(model), _mse, batches)
    # the recomputed statistics are the plain mean of the batches' means, by hand
    fresh = copy.deepcopy(a)
    recompute_batchnorm(fresh, _mse, bn_batches)
    with torch.no_grad():
        means = [a.conv(x).mean(dim=(0, 2, 3)) for x, _ in bn_batches]
    assert torch.allclose(fresh.bn.running_mean, torch.stack(means).mean(0), atol=1e-6)
    assert fresh.bn.momentum == a.bn.momentum and not fresh.training


def test_models_without_a_line_between_them_are_refused_by_name() -> None:
    with pytest.raises(IncompatibleModelsError, match=r"0.weight is \(5, 3\) in A and \(4, 3\) in B.*structured"):
        check_same_architecture(_mlp(0), nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    with pytest.raises(IncompatibleModelsError, match="only in B: 3.bias"):
        check_same_architecture(_mlp(0), nn.Sequential(*_mlp(1), nn.Linear(2, 2)))
    a, b = _mlp(0), _mlp(1)
    a.register_buffer("codes", torch.tensor([1, 2], dtype=torch.int8))
    b.register_buffer("codes", torch.tensor([1, 3], dtype=torch.int8))
    with pytest.raises(IncompatibleModelsError, match="codes holds torch.int8 values that differ"):
        linear_path(a, b, _mse, _batches(), 3)
    assert issubclass(IncompatibleModelsError, InvalidArgumentError)


def test_alphas_hold_zero_and_one_and_the_span_must_contain_them() -> None:
    assert path_alphas(2) == [0.0, 1.0]
    assert path_alphas(4) == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    assert path_alphas(3, (-0.5, 1.5)) == [-0.5, 0.0, 0.5, 1.0, 1.5]  # 0 and 1 added where the grid misses them
    for points, span in ((1, (0.0, 1.0)), (5, (0.2, 1.0)), (5, (0.0, 0.9))):
        with pytest.raises(InvalidArgumentError):
            path_alphas(points, span)


def test_a_path_round_trips_through_json(tmp_path: Path) -> None:
    path = linear_path(_mlp(0), _mlp(1), _mse, _batches(), 3, names=("x.a", "x.b"), loss_data="three batches")
    assert LinearPath.load(path.save(tmp_path / "p.json")) == path
    with pytest.raises(InvalidArgumentError, match="zoo-linear-path"):
        LinearPath.from_dict({"format": "other"})


# ---- the command line and the card ------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with one_torch_thread():
        store = store_with_base(tmp_path_factory, tmp_path_factory.mktemp("path"))
        zoo.load(BASE, sparsity=0.5, method="oneshot", store=store, progress=False)
        yield store


def test_cli_writes_the_path_beside_b_and_bs_card_shows_it(store: Store, tmp_path: Path) -> None:
    with one_torch_thread():
        result = CliRunner().invoke(main, ["evaluate", "--path", BASE, OS50, "--points", "5"], env=store_env(store))
    assert result.exit_code == 0, result.output
    (folder,) = store.cached_entries(OS50)
    stem = path_file_stem(BASE)
    path = LinearPath.load(folder / f"{stem}.json")
    assert (folder / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert (path.model_a, path.model_b, path.alphas) == (BASE, OS50, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert path.bn_recomputed and "shuffled with seed 0" in path.bn_data  # test_resnet has BatchNorm
    assert set(path.metrics[0]) == {"top1", "top5"}
    rows = [line.split() for line in result.output.splitlines() if line[:7].strip().replace(".", "").isdigit()]
    assert [float(r[0]) for r in rows] == path.alphas
    assert [float(r[1]) for r in rows] == [pytest.approx(v, abs=6e-5) for v in path.loss]
    assert f"wrote {folder / (stem + '.json')}" in result.output

    models = family_models(BASE, store)
    plots = saved_analysis_plots(models)
    assert list(plots) == [OS50] and [p.source.name for p in plots[OS50]] == [f"{stem}.png"]
    reports = [m.zoo.report for m in models]
    family = family_cards(zoo.resolve(BASE).base, reports, analysis_plots=plots)
    out = tmp_path / "cards"
    write_family_cards(family, out)
    card = (out / OS50 / "README.md").read_text()
    assert "## Analyses" in card and f"]({stem}.png)" in card
    assert "## Analyses" not in (out / BASE / "README.md").read_text()
    assert (out / OS50 / f"{stem}.png").is_file() and json.loads((out / OS50 / f"{stem}.json").read_text())
    validate_card(ModelCard.load(out / OS50 / "README.md"), next(r for r in reports if r.name == OS50))

    with one_torch_thread():  # `zoo card` puts it on the card too
        result = CliRunner().invoke(main, ["card", BASE, "--out", str(tmp_path / "zoo_card")], env=store_env(store))
    assert result.exit_code == 0, result.output
    assert f"]({stem}.png)" in (tmp_path / "zoo_card" / OS50 / "README.md").read_text()


def test_cli_refuses_a_span_without_both_models(store: Store) -> None:
    result = CliRunner().invoke(main, ["evaluate", "--path", BASE, OS50, "--span", "0.2", "1"], env=store_env(store))
    assert result.exit_code == 1
    assert "InvalidArgumentError: the span must contain [0, 1]" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--path", BASE, OS50, BASE], env=store_env(store))
    assert result.exit_code == 1 and "--path A B takes no other names" in result.output
