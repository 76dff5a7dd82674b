"""Fine-tuning and evaluating on the user's data: what `zoo.load` and the evaluator use (imports torch).

`prepare` reads a variant's training and evaluation data, decides the model's classes
(`zoo.userdata.classes.plan_classes`), and gives the entry the recipe runs with (the fine-tuning TrainSpec,
the data's class count where the classifier is re-initialized), the training batches and the evaluation;
`UserEval` is evaluation data as `zoo.evaluation.measure_variant` takes it. The task's registered
`UserDataAdapter` turns rows into batches, so nothing here knows a family.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from zoo.data import Batches
from zoo.entry import ModelEntry
from zoo.tasks import task_of
from zoo.userdata import CONFIG_KEY, USER_DATA_ADAPTERS, UserData, UserDataAdapter, UserDataError, check_takes_user_data, label_names
from zoo.userdata.classes import ClassPlan, index_labels, plan_classes
from zoo.userdata.read import read_rows

if TYPE_CHECKING:
    from zoo.variants import VariantSpec


def adapter_for(entry: ModelEntry) -> UserDataAdapter:
    """The adapter registered for the entry's family and task (`"<family>/<task>"`, where a family's models
    take the task's rows in their own way: a transformers repo tokenizes with its own tokenizer), else the
    task's; `UserDataError` (listing the tasks that take user data) for any other task."""
    check_takes_user_data(entry)
    task_of(entry)  # imports the family's task module, which registers the adapter
    own = f"{entry.family}/{entry.task}"
    return USER_DATA_ADAPTERS.get(own if own in USER_DATA_ADAPTERS else entry.task)


@dataclass(frozen=True)
class UserEval:
    """Evaluation on user data: how reports name it (`dataset`, `split`, `about`: source, format, split,
    examples, fingerprint) and its batches (`batches(batch_size)`, in order)."""

    dataset: str
    split: str
    about: dict[str, Any]
    make_batches: Callable[[int], Batches]

    def batches(self, batch_size: int) -> Batches:
        return self.make_batches(batch_size)


def describe_rows(data: UserData, examples: int) -> dict[str, Any]:
    """What a report, config and card say of user data: where, format, split, columns, examples, fingerprint."""
    return {**data.to_dict(), "split": data.split_name, "examples": examples, "fingerprint": data.fingerprint(),
            "description": data.describe()}


def model_plan(entry: ModelEntry, config: dict[str, Any] | None = None) -> ClassPlan:
    """The classes of a model of `entry`: those its checkpoint `config` recorded (a variant made from user
    data), else the entry's (named where its label set registered names)."""
    recorded = (config or {}).get(CONFIG_KEY, {}).get("classes")
    if recorded is not None:
        return ClassPlan.from_dict(recorded)
    return ClassPlan(label_names(entry), entry.num_classes)


def model_entry(entry: ModelEntry, plan: ClassPlan) -> ModelEntry:
    """`entry` with the plan's class count where its classifier was re-initialized (what builds the model)."""
    return adapter_for(entry).with_classes(entry, plan.num_classes) if plan.reinitialized else entry


def entry_for_config(entry: ModelEntry, config: dict[str, Any]) -> ModelEntry:
    """The entry that builds the model a checkpoint `config` describes."""
    return model_entry(entry, model_plan(entry, config)) if CONFIG_KEY in config else entry


def user_eval(entry: ModelEntry, plan: ClassPlan, data: UserData) -> UserEval:
    """`data` as evaluation data of a model of `entry` (with its classifier as `plan` says) with classes `plan`."""
    adapter = adapter_for(entry)
    rows = read_rows(data, adapter.column)
    labels = index_labels(plan, rows.labels, f"the evaluation data {data.source}")
    dataset = adapter.dataset(entry, rows.inputs, labels, False)
    return UserEval(data.dataset_id(), data.split_name, describe_rows(data, len(rows)),
                    lambda batch_size: Batches(dataset, batch_size=batch_size))


@dataclass(frozen=True)
class Prepared:
    """What deriving a variant on user data needs: the entry the recipe runs with, the classes, the training
    batches (None without training data), the evaluation (None: the entry's own), and the config record."""

    entry: ModelEntry
    plan: ClassPlan
    train_batches: Callable[[], Batches] | None
    evaluation: UserEval | None
    record: dict[str, Any]

    def adapt(self, model: nn.Module) -> nn.Module:
        """The base model with its classifier re-initialized for the data's classes where the plan says so
        (call it on torch's seeded generator, as the recipe runs)."""
        if self.plan.reinitialized:
            adapter_for(self.entry).reset_classifier(model, self.plan.num_classes)
        return model


def prepare(spec: VariantSpec) -> Prepared:
    """Reads `spec`'s user data and plans the classes (module docstring)."""
    base, train_data = spec.base, spec.train_data
    adapter = adapter_for(base)
    plan, record = model_plan(base), {}
    train_rows = labels = None
    if train_data is not None:
        train_rows = read_rows(train_data, adapter.column)
        plan = plan_classes(plan, train_rows.labels)
        labels = index_labels(plan, train_rows.labels, f"the training data {train_data.source}")
        record["train"] = describe_rows(train_data, len(train_rows))
    entry = model_entry(spec.recipe_entry, plan)
    if plan.reinitialized and not spec.finetunes:
        raise UserDataError(f"the training data's {plan.num_classes} classes need a new classifier, and "
                            f"{spec.name} has no fine-tuning step to train it: use a fine-tuning method (gmp, ...) or QAT")
    evaluation = user_eval(entry, plan, spec.eval_data) if spec.eval_data is not None else None
    if plan.reinitialized and evaluation is None:
        raise UserDataError(f"the classifier is re-initialized for the training data's {plan.num_classes} classes, "
                            f"so {base.name}'s own evaluation data does not fit it: give eval_data too")
    if evaluation is not None:
        record["eval"] = evaluation.about
    record["classes"] = plan.to_dict()
    batches = None
    if train_rows is not None:
        dataset = adapter.dataset(entry, train_rows.inputs, labels, True)
        train = entry.train
        batches = lambda: Batches(dataset, batch_size=train.batch_size, shuffle=True, seed=train.seed)  # noqa: E731
        record["finetuning"] = {k: v for k, v in dataclasses.asdict(train).items() if k not in ("data", "init_from")}
    return Prepared(entry, plan, batches, evaluation, record)


def eval_for_model(entry: ModelEntry, config: dict[str, Any], data: UserData) -> tuple[ModelEntry, UserEval]:
    """(the entry building the model, the evaluation) of user data `data` for a model whose checkpoint
    config is `config` (its recorded classes, or the entry's)."""
    plan = model_plan(entry, config)
    built = model_entry(entry, plan)
    return built, user_eval(built, plan, data)
