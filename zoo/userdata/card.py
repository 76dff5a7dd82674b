"""The card of a model measured on the user's data: the zoo's card (zoo.model_cards) with a Dataset section
that names the data it was fine-tuned and measured on (source, format, split, columns, examples, content
fingerprint) and the classes; its model-index results name the data set as the report does
(`UserData.dataset_id`). Validated against the report before it is written."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard
from torch import nn

from zoo.compress.checkpoint import read_config
from zoo.errors import InvalidArgumentError
from zoo.model_cards import base_card, validate_card, variant_card, write_card
from zoo.model_cards.card import is_base
from zoo.models import get_entry
from zoo.tasks import task_of
from zoo.userdata import CONFIG_KEY


def _line(role: str, about: dict[str, Any]) -> str:
    return f"- {role}: {about['description']}, {about['examples']:,} examples."


def describe_user_data(report_data: dict[str, Any] | None, record: dict[str, Any]) -> str:
    """The Dataset section: the evaluation data (from the report) and the training data and classes (from
    the checkpoint config's record) in sentences."""
    lines = ["Made and measured on the user's own data (not the zoo's registered data set):", ""]
    if "train" in record:
        tuning = record.get("finetuning", {})
        lines.append(_line("fine-tuned on", record["train"]) + (
            f" Fine-tuning: {tuning['optimizer']} at learning rate {tuning['lr']:g}, batch {tuning['batch_size']}, "
            f"weight decay {tuning['weight_decay']:g}, label smoothing {tuning['label_smoothing']:g}, seed "
            f"{tuning['seed']}." if tuning else ""))
    if report_data is not None:
        lines.append(_line("measured on", report_data))
    classes = record.get("classes")
    if classes:
        names = classes.get("classes")
        shown = f" ({', '.join(names[:20])}{', ...' if len(names) > 20 else ''})" if names else ""
        how = ("a classifier re-initialized for the data's classes" if classes["classifier_reinitialized"]
               else "the model's own classifier")
        lines.append(f"- classes: {classes['num_classes']}{shown}, {how}.")
    return "\n".join(lines)


def user_data_card(model: nn.Module) -> ModelCard:
    """The card of `model` (as `zoo.load` returns it) whose report was measured on user data."""
    report = model.zoo.report
    if report is None or report.user_data is None:
        raise InvalidArgumentError(f"{model.zoo.name} was not measured on user data: its family's cards are `zoo card`'s")
    entry = get_entry(model.zoo.base_model)
    path = Path(model.zoo.path)
    record = read_config(path).get(CONFIG_KEY, {}) if (path / "config.json").is_file() else {}
    common = dict(plot_filename=None, license=entry.license, about=entry.description,
                  dataset_description=describe_user_data(report.user_data, record),
                  example=task_of(entry).describe_example(entry))
    if is_base(report):
        card = base_card(report, [report], **common)
    else:
        card = variant_card(report, base_repo_id=entry.repo_id, family_reports=[report], **common)
    validate_card(card, report)
    return card


def write_user_data_card(model: nn.Module, out_dir: Path) -> Path:
    """`out_dir/<name>/README.md`: the model's card measured on user data (an `hf-hub:` name as one folder,
    `zoo.entry.path_slug`)."""
    from zoo.entry import path_slug

    return write_card(user_data_card(model), Path(out_dir) / path_slug(model.zoo.name))
