"""Offline checks of a model card (front matter present, model-index parses, results complete and,
given the report, equal to what was measured) and an atomic README.md writer.

Never calls `ModelCard.validate()`: that posts the card to huggingface.co."""
from __future__ import annotations

import numbers
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from zoo.atomic import atomic_write_text
from zoo.errors import CardValidationError, InvalidArgumentError
from zoo.evaluate.report import VariantReport
from zoo.model_cards.card import eval_results, machine_line, validated_repo_id

README = "README.md"


def parse_card(card: ModelCard | str) -> ModelCard:
    """Parse the card's text back into a `ModelCard`, as the Hub would read it; typed errors only."""
    text = str(card)
    if not REGEX_YAML_BLOCK.search(text):
        raise CardValidationError("model card has no YAML front matter (a leading '---' block)")
    try:
        return ModelCard(text)
    except (ValueError, yaml.YAMLError) as error:
        raise CardValidationError(f"model card metadata cannot be parsed: {error}") from None


def _check_result(result: EvalResult) -> None:
    where = f"result {result.metric_name or result.metric_type!r}"
    for field_name in ("task_type", "dataset_type", "dataset_name", "metric_type"):
        value = getattr(result, field_name)
        if not isinstance(value, str) or not value:
            raise CardValidationError(f"{where}: model-index lacks {field_name}")
    value = result.metric_value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CardValidationError(f"{where}: metric value {value!r} is not a number")


def _key(result: EvalResult) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_split, result.metric_type, result.metric_name)


def _describe(key: tuple) -> str:
    task, dataset, split, _, name = key
    return f"{name} on {dataset}/{split} ({task})"


def _check_expected(parsed: ModelCard, expected: VariantReport) -> None:
    if parsed.data.model_name != expected.name:
        raise CardValidationError(f"model-index names {parsed.data.model_name!r}, expected {expected.name!r}")
    found = {_key(r): r.metric_value for r in parsed.data.eval_results}
    wanted = {_key(r): r.metric_value for r in eval_results(expected)}
    if len(found) != len(parsed.data.eval_results):
        raise CardValidationError("model-index lists the same result more than once")
    if set(found) != set(wanted):
        missing = sorted(_describe(k) for k in set(wanted) - set(found))
        extra = sorted(_describe(k) for k in set(found) - set(wanted))
        raise CardValidationError(f"model-index results differ from the report: missing {missing}, extra {extra}")
    for key, value in wanted.items():
        if found[key] != value:
            raise CardValidationError(f"{key[-1]}: card says {found[key]!r}, report measured {value!r}")
    if machine_line(expected) not in parsed.text:
        raise CardValidationError(f"the card does not say where {expected.name!r} was measured: "
                                  f"{machine_line(expected)!r} is missing")


def validate_card(card: ModelCard | str, expected: VariantReport | None = None) -> None:
    """Raise `CardValidationError` unless the card has front matter with a parseable model-index whose
    every result has task, dataset, metric type and a numeric value; with `expected`, unless its results
    are exactly (float equality after the YAML round trip) the report's metrics, for the report's name,
    task, dataset and split, and its body states the report's machine (`machine_line`)."""
    parsed = parse_card(card)
    results = parsed.data.eval_results
    if not results:
        raise CardValidationError("model card metadata has no model-index results")
    for result in results:
        _check_result(result)
    base_model = parsed.data.base_model
    if base_model is not None:
        try:
            validated_repo_id(base_model)
        except InvalidArgumentError as err:
            raise CardValidationError(f"base_model: {err}") from None
    if expected is not None:
        _check_expected(parsed, expected)


def write_card(card: ModelCard | str, folder: str | Path) -> Path:
    """Write `folder/README.md` atomically (temp file in the same folder, then `os.replace`), after
    checking the card's structure, so a reader never sees a half-written or malformed card."""
    validate_card(card)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / README
    atomic_write_text(target, str(card))
    return target
