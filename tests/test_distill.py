"""Distillation (zoo.compress.distill): the loss against hand computations, the config, hidden states,
the teacher's replayed inputs and random state, DDP-wrapped students, and a recipe end to end."""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from zoo.compress import GradualMagnitudePruningConfig, Recipe, RecipeContext
from zoo.compress.config import CompressionConfig
from zoo.compress.distill import (
    DistillationConfig, distill_loss, distilling, frozen_copy, output_logits,
)
from zoo.errors import RecipeError


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_distill_loss_matches_a_hand_computation_with_two_classes_at_t2() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    teacher = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
    rows = [_kl(_softmax([t / 2 for t in tr]), _softmax([s / 2 for s in sr]))
            for sr, tr in zip(student.tolist(), teacher.tolist())]
    # first row by hand: p = softmax([0, 1]) = (1, e) / (1 + e), q = softmax([0.5, 0]) = (e^.5, 1) / (1 + e^.5)
    p = [1 / (1 + math.e), math.e / (1 + math.e)]
    q = [math.exp(0.5) / (1 + math.exp(0.5)), 1 / (1 + math.exp(0.5))]
    assert rows[0] == pytest.approx(p[0] * math.log(p[0] / q[0]) + p[1] * math.log(p[1] / q[1]), rel=1e-12)
    expected = 4 * (rows[0] + rows[1]) / 2  # T^2 times the mean over the batch
    assert distill_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_distill_loss_averages_over_every_leading_position() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    flat = distill_loss(s.reshape(6, 5), t.reshape(6, 5), temperature=3.0)
    assert distill_loss(s, t, temperature=3.0).item() == pytest.approx(flat.item(), rel=1e-6)
    per_row = [distill_loss(s.reshape(6, 5)[i : i + 1], t.reshape(6, 5)[i : i + 1], temperature=3.0) for i in range(6)]
    assert flat.item() == pytest.approx(sum(r.item() for r in per_row) / 6, rel=1e-6)


def test_t_squared_scaling_gives_the_high_temperature_limit() -> None:
    """Hinton et al.: as T grows, T^2 KL tends to (1 / 2C) sum_i (d_i - mean d)^2, d = teacher - student
    logits. Without the T^2 factor the value would be a million times smaller at T = 1000."""
    s = torch.tensor([[0.3, -1.2, 2.0, 0.5]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.4, -0.7, 0.1]], dtype=torch.float64)
    d = (t - s)[0]
    limit = ((d - d.mean()) ** 2).sum().item() / (2 * 4)
    assert distill_loss(s, t, temperature=1000.0).item() == pytest.approx(limit, rel=1e-3)
    assert distill_loss(s, t, temperature=1.0).item() != pytest.approx(limit, rel=1e-2)


def test_distill_loss_mse_and_its_errors() -> None:
    s, t = torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    assert distill_loss(s, t, logits_loss="mse", temperature=7.0).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    with pytest.raises(RecipeError, match="shape"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(RecipeError, match="logits_loss"):
        distill_loss(s, t, logits_loss="ce")


class _Out(NamedTuple):
    first: torch.Tensor
    second: torch.Tensor


class _WithLogits:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits, self.loss = logits, torch.tensor(0.0)


def test_output_logits_reads_tensors_model_outputs_and_tuples() -> None:
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert output_logits(a) is a
    assert output_logits(_WithLogits(a)) is a
    assert output_logits((a, b)) is a and output_logits([a, b]) is a and output_logits(_Out(a, b)) is a
    from transformers.modeling_outputs import SequenceClassifierOutput

    assert output_logits(SequenceClassifierOutput(logits=a)) is a
    for bad, name in (({"logits": a}, "dict"), (("text", a), "tuple"), ((), "tuple"), (3.0, "float")):
        with pytest.raises(RecipeError, match=name):
            output_logits(bad)


def test_config_round_trips_and_is_validated() -> None:
    config = DistillationConfig(teacher="resnet18.zoo_digits", temperature=2.0, alpha=0.25, logits_loss="mse",
                                hidden=("layer1", r"layer\d\.0"), hidden_weight=0.1)
    assert CompressionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    recipe = Recipe((DistillationConfig(), GradualMagnitudePruningConfig(final_sparsity=0.5)))
    assert Recipe.from_json(recipe.to_json()) == recipe and Recipe.from_yaml(recipe.to_yaml()) == recipe
    bad = [
        (dict(teacher=""), "teacher"), (dict(teacher=" base"), "teacher"), (dict(teacher=3), "teacher"),
        (dict(temperature=0.0), "temperature"), (dict(temperature=float("inf")), "temperature"),
        (dict(alpha=-0.1), "alpha"), (dict(alpha=1.5), "alpha"), (dict(alpha=True), "alpha"),
        (dict(logits_loss="ce"), "logits_loss"), (dict(hidden="layer1"), "hidden"), (dict(hidden=("(",)), "hidden"),
        (dict(hidden_weight=-1.0), "hidden_weight"), (dict(hidden=("fc",), hidden_weight=0.0), "hidden_weight"),
    ]
    for kwargs, field in bad:
        with pytest.raises(RecipeError, match=field):
            DistillationConfig(**kwargs)
    DistillationConfig(alpha=0.0)  # the "off" arm is a valid config
    DistillationConfig(alpha=1.0)


def _mlp(hidden: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(2, hidden), act=nn.ReLU(), fc2=nn.Linear(hidden, 2)))


def _ce(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def test_the_distilling_loss_combines_task_and_distillation_as_documented() -> None:
    student, teacher = _mlp(seed=0), _mlp(seed=1)
    batch = (torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1]))
    task = _ce(student, batch)
    d = distill_loss(student(batch[0]), teacher(batch[0]), temperature=3.0)
    loss = distilling(_ce, student, teacher, DistillationConfig(alpha=0.3, temperature=3.0))(student, batch)
    assert loss.item() == pytest.approx(0.7 * task.item() + 0.3 * d.item(), rel=1e-6)
    pure = distilling(_ce, student, teacher, DistillationConfig(alpha=1.0, temperature=3.0))(student, batch)
    assert pure.item() == pytest.approx(d.item(), rel=1e-6)
    loss.backward()
    assert student.fc1.weight.grad is not None and all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_alpha_zero_is_exactly_the_task_loss() -> None:
    student, teacher = _mlp(seed=0), _mlp(seed=1)
    batch = (torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))
    loss = distilling(_ce, student, teacher, DistillationConfig(alpha=0.0))
    assert loss is _ce and torch.equal(loss(student, batch), _ce(student, batch))


def test_hidden_state_mse_matches_a_hand_computation() -> None:
    student, teacher = _mlp(hidden=2), _mlp(hidden=2)
    with torch.no_grad():
        for model, w in ((student, [[1.0, 0.0], [0.0, 1.0]]), (teacher, [[1.0, 1.0], [0.0, 2.0]])):
            model.fc1.weight.copy_(torch.tensor(w))
            model.fc1.bias.zero_()
    x = torch.tensor([[1.0, 2.0], [-1.0, 1.0]])
    # fc1 outputs: student x itself, teacher (x0 + x1, 2 x1) = [[3, 4], [0, 2]];
    # squared differences [[4, 4], [1, 1]], mean 2.5
    config = DistillationConfig(alpha=0.0, hidden=("fc1",), hidden_weight=2.0)
    loss = distilling(lambda m, b: m(b).sum(), student, teacher, config)(student, x)
    assert loss.item() == pytest.approx(student(x).sum().item() + 2.0 * 2.5, rel=1e-6)
    both = distilling(lambda m, b: m(b).sum(), student, teacher, DistillationConfig(alpha=0.0, hidden=("fc1", "act")))
    relu_mse = ((torch.tensor([[1.0, 2.0], [0.0, 1.0]]) - torch.tensor([[3.0, 4.0], [0.0, 2.0]])) ** 2).mean()
    assert both(student, x).item() == pytest.approx(student(x).sum().item() + (2.5 + relu_mse.item()) / 2, rel=1e-6)


def test_hidden_modules_of_different_shapes_are_named_at_the_first_batch() -> None:
    student, teacher = _mlp(hidden=3), _mlp(hidden=4)
    loss = distilling(_ce, student, teacher, DistillationConfig(hidden=("fc.*", "act")))
    with pytest.raises(RecipeError, match=r"fc1: student \[\(2, 3\)\] vs teacher \[\(2, 4\)\].*act"):
        loss(student, (torch.randn(2, 2), torch.tensor([0, 1])))


def test_hidden_patterns_that_match_nothing_or_modules_the_teacher_lacks_are_refused() -> None:
    student = _mlp()
    with pytest.raises(RecipeError, match="'nope'"):
        distilling(_ce, student, _mlp(), DistillationConfig(hidden=("fc1", "nope")))
    with pytest.raises(RecipeError, match="teacher has no module.*fc1"):
        distilling(_ce, student, nn.Sequential(nn.Linear(2, 2)), DistillationConfig(hidden=("fc1",)))


def test_a_task_loss_must_call_the_student_once() -> None:
    student = _mlp()
    twice = distilling(lambda m, b: _ce(m, b) + _ce(m, b), student, _mlp(), DistillationConfig())
    with pytest.raises(RecipeError, match="exactly once.*2 times"):
        twice(student, (torch.randn(2, 2), torch.tensor([0, 1])))


class _Noisy(nn.Module):
    """Draws its own noise, as IRN's sampled latent or BERT's masked positions."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.fc(x) + torch.randn(x.shape, generator=generator)


@pytest.mark.parametrize("with_generator", [False, True])
def test_the_teacher_draws_the_students_noise_and_leaves_the_random_state_alone(with_generator: bool) -> None:
    student = _Noisy()
    config = DistillationConfig(alpha=1.0, logits_loss="mse")

    def task(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(5) if with_generator else None
        return model(x, generator=generator).sum()

    loss = distilling(task, student, frozen_copy(student), config)
    torch.manual_seed(3)
    assert loss(student, torch.randn(4, 3)).item() == 0.0  # the same weights and the same noise
    after_distilled = torch.randn(8)
    torch.manual_seed(3)
    task(student, torch.randn(4, 3))
    assert torch.equal(after_distilled, torch.randn(8))


def test_the_distilling_loss_hooks_the_module_inside_ddp(tmp_path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        student, teacher = _mlp(seed=0), _mlp(seed=1)
        batch = (torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1]))
        config = DistillationConfig(alpha=0.5, hidden=("fc1",))
        loss = distilling(_ce, student, teacher, config)
        wrapped = DistributedDataParallel(student)
        assert loss(wrapped, batch).item() == pytest.approx(loss(student, batch).item(), rel=1e-6)
    finally:
        dist.destroy_process_group()


def _kl_to(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return distill_loss(student(x), teacher(x), temperature=1.0).item()


def _distill_then_prune(alpha: float) -> tuple[float, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(96, 8)
    y = torch.randint(0, 4, (96,))  # labels the teacher (the random base) does not predict
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 96, 16)]
    teacher = frozen_copy(model)
    context = RecipeContext(train_batches=lambda epoch: batches, loss_fn=_ce, progress=False)
    recipe = Recipe((DistillationConfig(alpha=alpha, temperature=2.0),
                     GradualMagnitudePruningConfig(final_sparsity=0.5, epochs=8, lr=0.05, frequency=2)))
    model = recipe.apply(model, context)
    assert (model[0].weight == 0).float().mean().item() == pytest.approx(0.5)
    return _kl_to(teacher, model, torch.randn(256, 8)), model


def test_a_distilled_pruning_recipe_ends_closer_to_the_teacher_than_an_undistilled_one() -> None:
    distilled, _ = _distill_then_prune(0.9)
    plain, _ = _distill_then_prune(0.0)
    assert distilled < plain / 2, (distilled, plain)


def test_the_handler_needs_a_loss_and_leaves_the_model_and_the_context_a_distilling_loss() -> None:
    model = _mlp()
    with pytest.raises(RecipeError, match="loss_fn"):
        Recipe((DistillationConfig(),)).apply(model, RecipeContext())
    context = RecipeContext(loss_fn=_ce, progress=False)
    assert Recipe((DistillationConfig(alpha=0.5),)).apply(model, context) is model
    assert context.loss_fn is not _ce and all(p.requires_grad for p in model.parameters())
    batch = (torch.randn(3, 2), torch.tensor([0, 1, 0]))
    assert context.loss_fn(model, batch).item() == pytest.approx(0.5 * _ce(model, batch).item(), rel=1e-6)


def test_a_named_teacher_is_loaded_from_the_zoo_frozen(monkeypatch) -> None:
    import zoo

    teacher, calls = _mlp(seed=1), []

    def load(name: str, *, progress: bool) -> nn.Module:
        calls.append((name, progress))
        return teacher

    monkeypatch.setattr(zoo, "load", load)
    context = RecipeContext(loss_fn=_ce, progress=False)
    model = _mlp(seed=0)
    Recipe((DistillationConfig(teacher="mlp.somewhere", alpha=1.0),)).apply(model, context)
    assert calls == [("mlp.somewhere", False)] and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(3, 2)
    expected = distill_loss(model(x), teacher(x), temperature=4.0).item()
    assert context.loss_fn(model, (x, torch.tensor([0, 1, 0]))).item() == pytest.approx(expected, rel=1e-6)


def test_a_zoo_entry_runs_a_distilled_loss_step() -> None:
    from zoo import get_entry
    from zoo.models import build_model
    from zoo.tasks import task_of

    entry = get_entry("test_resnet.zoo_digits")
    task = task_of(entry)
    torch.manual_seed(0)
    model = build_model(entry).train()
    example = task.example_input(entry)
    batch = (torch.rand(4, *example.shape[1:]), torch.randint(0, 10, (4,)))
    teacher = frozen_copy(model)
    config = DistillationConfig(alpha=0.5, logits_loss=task.distill_logits_loss, hidden=("layer1",))
    loss_fn = distilling(lambda m, b: task.loss(m, b, entry), model, teacher, config)
    loss = loss_fn(model, batch)
    loss.backward()
    assert math.isfinite(loss.item()) and model.fc.weight.grad is not None
    with torch.no_grad():
        model.fc.weight.add_(0.5)
    model.eval()  # batch statistics aside, the student now differs from its teacher only in the head
    with torch.no_grad():
        assert distill_loss(model(batch[0]), teacher(batch[0])).item() > 0
        assert loss_fn(model, batch).item() > 0.5 * task.loss(model, batch, entry).item()


def test_every_task_says_how_its_outputs_are_distilled() -> None:
    from zoo.families import ensure_all
    from zoo.tasks import TASKS

    ensure_all()
    kinds = {name: TASKS.get(name).distill_logits_loss for name in TASKS}
    assert set(kinds.values()) <= {"kl", "mse", None}
    assert kinds["image-classification"] == "kl" and kinds["image-rescaling"] == "mse"
    assert kinds["image-compression"] == "mse" and kinds["multi-choice-cloze"] is None
