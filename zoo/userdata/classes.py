"""How the user's labels meet a model's classes.

A data set's labels are class names (strings: a datasets `ClassLabel`'s names, an ImageNet-style folder's
sub-folders, or a string column) or class indices (integers). `plan_classes` decides, from the training
data, the classes of the model fine-tuned on it:

1. names, all among the model's named classes (`zoo.userdata.LABEL_NAMES`, or the classes a variant made
   from user data recorded): the model's classes, matched by name; its classifier is kept;
2. names, as many as the model has classes: matched in order (the data's names in its own order:
   `ClassLabel` order, sorted sub-folders, sorted unique strings); the classifier is kept;
3. integers all below the model's class count: they are its class indices; the classifier is kept;
4. otherwise the classifier is re-initialized for the data's classes (its names, or 0..max for integers),
   as timm's `num_classes=N` fine-tuning does.

Evaluation data (and training data after the plan is made) are indexed by `index_labels`: names by the
planned names, integers as indices below the class count; anything else is refused (`UserDataError`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zoo.userdata import UserDataError


@dataclass(frozen=True)
class Labels:
    """The labels of a data set's examples: `values` (names or integer indices) and, for names, the data's
    class names in their order (`names`; None for integer labels)."""

    values: tuple[str | int, ...]
    names: tuple[str, ...] | None

    @classmethod
    def of_names(cls, values: Sequence[str], names: Sequence[str] | None = None) -> Labels:
        names = tuple(names) if names is not None else tuple(sorted(set(values)))
        return cls(tuple(values), names)


@dataclass(frozen=True)
class ClassPlan:
    """The classes of a model fine-tuned (or evaluated) on user data: their names in output order (None
    when they have none), their count, and whether the classifier was re-initialized for them."""

    names: tuple[str, ...] | None
    num_classes: int
    reinitialized: bool = False

    def to_dict(self) -> dict:
        return {"classes": list(self.names) if self.names is not None else None, "num_classes": self.num_classes,
                "classifier_reinitialized": self.reinitialized}

    @classmethod
    def from_dict(cls, data: dict) -> ClassPlan:
        names = data.get("classes")
        return cls(tuple(names) if names is not None else None, int(data["num_classes"]),
                   bool(data["classifier_reinitialized"]))


def plan_classes(model: ClassPlan, train: Labels) -> ClassPlan:
    """The classes of a model with classes `model` fine-tuned on labels `train` (the module docstring)."""
    if train.names is not None:
        if model.names is not None and set(train.names) <= set(model.names):
            return model
        if len(train.names) == model.num_classes:
            return ClassPlan(train.names, model.num_classes)
        if len(train.names) < 2:
            raise UserDataError(f"the training data has one class ({train.names[0]!r}): a classifier needs two")
        return ClassPlan(train.names, len(train.names), reinitialized=True)
    count = max(int(v) for v in train.values) + 1
    if count <= model.num_classes:
        return model
    return ClassPlan(tuple(str(i) for i in range(count)), count, reinitialized=True)


def index_labels(plan: ClassPlan, labels: Labels, what: str) -> list[int]:
    """Each label's class index under `plan`; `UserDataError` naming `what` for labels it cannot take."""
    if labels.names is None:
        bad = sorted({int(v) for v in labels.values if not 0 <= int(v) < plan.num_classes})
        if bad:
            raise UserDataError(f"{what} has labels {bad[:5]} the model cannot take: its classes are 0.."
                                f"{plan.num_classes - 1}")
        return [int(v) for v in labels.values]
    if plan.names is None:
        if len(labels.names) != plan.num_classes:
            raise UserDataError(f"{what} names {len(labels.names)} classes; the model's {plan.num_classes} classes "
                                "have no names to match them by")
        index = {name: i for i, name in enumerate(labels.names)}
    else:
        index = {name: i for i, name in enumerate(plan.names)}
    unknown = sorted(set(labels.names) - set(index))
    if unknown:
        known = ", ".join(plan.names[:8]) + (", ..." if len(plan.names) > 8 else "")
        raise UserDataError(f"{what} has labels the model cannot take: {', '.join(map(repr, unknown[:5]))} "
                            f"(its classes: {known})")
    return [index[v] for v in labels.values]
