"""Hugging Face model cards for zoo variants: YAML front matter with a model-index of the measured
results (so the Hub shows them and they parse back exactly), and a Markdown body with the recipe, the
metrics (with the ops left out of the FLOPs, if any, and the machine they were measured on), the table of
the whole family, the accuracy-vs-FLOPs plot (and any plot the task adds), and the other models of the
same task it is compared with."""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from zoo.errors import InvalidArgumentError
from zoo.evaluate.machine import isa_has_integer_dot_product
from zoo.evaluate.report import VariantReport
from zoo.quant_schemes import describe_quant
from zoo.tasks import MetricSpec, average_meaning, task_named
from zoo.tasks import metric_spec as _task_metric_spec


@dataclass(frozen=True)
class CardPlot:
    """A plot shown on a card beside the metric-vs-FLOPs one (a task's `extra_plots`), or in its Analyses
    section (`analysis_plots`): file and alt text."""

    filename: str
    alt: str


def metric_spec(key: str) -> MetricSpec:
    """The spec of a metric key, as its task registered it (zoo.tasks); unknown keys raise
    `UnknownNameError`."""
    return _task_metric_spec(key)


def result_name(spec: MetricSpec, average: str) -> str:
    """The model-index `name`, e.g. "top-1 accuracy (average=micro)"; states how it was averaged."""
    return f"{spec.name} (average={average})"


def _average_meaning(average: str) -> str:
    return average_meaning(average)


def is_base(report: VariantReport) -> bool:
    """A base model is the one no recipe was applied to (the evaluator stores `recipe=None` for it)."""
    return report.recipe is None


# Recipe steps that remove whole structures (channels, heads, FFN neurons): the model gets smaller and
# dense, so its `sparsity` is the fraction of structures removed, not of zero weights.
STRUCTURED_STEPS = {"ChannelPruningConfig": "channels", "HeadPruningConfig": "attention heads and FFN neurons"}


def structured_pruning(report: VariantReport) -> str | None:
    """What a structured variant removed ("channels", ...), from its recipe; None for other variants."""
    for step in report.recipe or ():
        if step.get("type") in STRUCTURED_STEPS:
            return STRUCTURED_STEPS[step["type"]]
    return None


def variant_kind(report: VariantReport) -> str:
    """"dense", "sparse", "structured", "quantized", or a pruned kind "+ quantized": what the plot's
    markers distinguish."""
    pruned = ("structured" if structured_pruning(report) else "sparse") if report.sparsity > 0 else None
    quantized = report.quant is not None
    if pruned and quantized:
        return f"{pruned} + quantized"
    return pruned or ("quantized" if quantized else "dense")


def short_label(report: VariantReport) -> str:
    """The part of the name after the base's (`resnet18.zoo_digits_sp90` -> `sp90`); `base` for it."""
    own_base = report.name == report.base_model
    if report.base_model and not own_base and report.name.startswith(report.base_model):
        rest = report.name[len(report.base_model):].lstrip("_-.+")
        if rest:
            return rest
    return "base" if own_base or is_base(report) else report.name


def card_tags(report: VariantReport) -> list[str]:
    """Hub tags: always `zoo` and the task; `sparse`/`pruned` and `quantized`/<scheme> as they apply."""
    tags = ["zoo", report.task]
    if report.sparsity > 0:
        tags += ["structured-pruning", "pruned"] if structured_pruning(report) else ["sparse", "pruned"]
    if report.quant is not None:
        tags += ["quantized", report.quant]
    return tags


def eval_results(report: VariantReport) -> list[EvalResult]:
    """One `EvalResult` per metric, its value as measured (never rounded) so that the YAML written
    holds the exact float (PyYAML writes `repr`, which round-trips)."""
    if not report.metrics:
        raise InvalidArgumentError(f"report {report.name!r} has no metrics to put in a model card")
    results = []
    for key, value in report.metrics.items():
        spec = metric_spec(key)
        number = _metric_value(report.name, spec, value)
        results.append(
            EvalResult(
                task_type=report.task,
                dataset_type=report.dataset,
                dataset_name=report.dataset,
                dataset_split=report.split,
                metric_type=spec.type,
                metric_name=result_name(spec, report.metric_average),
                metric_value=number,
                metric_args={"average": report.metric_average},
            )
        )
    return results


def _metric_value(name: str, spec: MetricSpec, value: Any) -> float:
    """The value as a plain finite float; a "fraction" metric must lie in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"report {name!r}: metric {spec.key!r} is not a number: {value!r}")
    number = float(value)  # numpy scalars become plain floats, exactly, so YAML can hold them
    if spec.unit == "fraction" and not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise InvalidArgumentError(f"report {name!r}: metric {spec.key!r} = {value!r} is not a fraction in [0, 1]")
    if not math.isfinite(number):
        raise InvalidArgumentError(f"report {name!r}: metric {spec.key!r} = {value!r} is not finite")
    return number


def validated_repo_id(repo_id: str) -> str:
    """`repo_id` if the Hub accepts it as a model repo id (`namespace/name`), else InvalidArgumentError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InvalidArgumentError(f"{repo_id!r} is not a Hub repo id: {err}") from None
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InvalidArgumentError(f"{repo_id!r} is not a Hub repo id of the form namespace/name")
    return repo_id


def card_data(report: VariantReport, *, license: str, library_name: str,
              base_repo_id: str | None = None) -> ModelCardData:
    """The front matter; `base_model` is `base_repo_id`, the Hub repo the base was published to (None
    for the base itself), and `pipeline_tag` is there only where the Hub has one for the task (the zoo's
    task name is always a tag)."""
    if not is_base(report) and base_repo_id is None:
        raise InvalidArgumentError(f"{report.name}: a variant's card names the Hub repo id of its base")
    base_model = None if is_base(report) else base_repo_id
    return ModelCardData(
        model_name=report.name,
        eval_results=eval_results(report),
        base_model=base_model,
        library_name=library_name,
        license=license,
        pipeline_tag=task_named(report.task).pipeline_tag,
        tags=card_tags(report),
        metrics=sorted({metric_spec(key).type for key in report.metrics}),
    )


# ---------------------------------------------------------------------------------------------------
# Human-readable numbers (rounded here only; the YAML keeps the exact values)


def _significant(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def _mflops(flops: int) -> str:
    return f"{_significant(flops / 1e6)} M"


def _bytes(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def _bits_per_param(report: VariantReport) -> str:
    """The checkpoint's bits per parameter (all of it, scales and metadata included, over every
    parameter): 32 for a dense fp32 model less its overhead, ~4 for a 4-bit one."""
    return f"{8 * report.bytes_on_disk / report.params_total:.2f}" if report.params_total else "n/a"


def _percent(value: float) -> str:
    return f"{100 * value:.2f} %"


def _describe(report: VariantReport) -> str:
    if is_base(report):
        return "the dense, unquantized base model of its family"
    parts = []
    removed = structured_pruning(report)
    if report.sparsity > 0 and removed:
        parts.append(f"with {100 * report.sparsity:.4g} % of its {removed} removed (structured pruning: a "
                     "smaller dense model)")
    elif report.sparsity > 0:
        parts.append(f"pruned to {100 * report.sparsity:.4g} % sparsity")
    if report.quant is not None:
        parts.append(f"quantized ({report.quant}: {describe_quant(report.quant)})")
    teachers = [step["config"].get("teacher") for step in report.recipe or () if step.get("type") == "DistillationConfig"]
    if teachers:
        teacher = "the dense base" if teachers[0] == "base" else f"`{teachers[0]}`"
        parts.append(f"fine-tuned distilling from {teacher}")
    how = " and ".join(parts) if parts else "compressed"
    return f"a variant of `{report.base_model}`, {how}"


def _recipe_json(report: VariantReport) -> str | None:
    if report.recipe is None:
        return None
    try:
        return json.dumps(report.recipe, indent=2)
    except TypeError as error:
        raise InvalidArgumentError(f"report {report.name!r}: recipe is not JSON-serializable: {error}") from None


def _metric_keys(family: Sequence[VariantReport]) -> list[str]:
    keys: list[str] = []
    for report in family:
        keys += [key for key in report.metrics if key not in keys]
    return keys


def _metric_rows(report: VariantReport) -> list[tuple[str, str]]:
    rows = [
        (result_name(spec, report.metric_average), spec.format(_metric_value(report.name, spec, value)))
        for spec, value in ((metric_spec(key), value) for key, value in report.metrics.items())
    ]
    nonzero = report.params_nonzero / report.params_total if report.params_total else 0.0
    return rows + [
        ("FLOPs per example, dense", f"{_mflops(report.flops_dense)} ({report.flops_dense:,})"),
        ("FLOPs per example, non-zero weights only", f"{_mflops(report.flops_sparse)} ({report.flops_sparse:,})"),
        ("parameters, total", f"{report.params_total:,}"),
        ("parameters, non-zero", f"{report.params_nonzero:,} ({_percent(nonzero)})"),
        ("size on disk", f"{_bytes(report.bytes_on_disk)} ({report.bytes_on_disk:,} bytes)"),
        ("bits on disk per parameter", _bits_per_param(report)),
        *_latency_rows(report),
        *_dense_export_rows(report),
    ]


def _dense_export_rows(report: VariantReport) -> list[tuple[str, str]]:
    """For a quantized variant: how the dense file `zoo export` writes computes differently from it."""
    if report.quant is None:
        return []
    diff = report.dense_export
    if diff is None:
        return [(DENSE_EXPORT_ROW, "not recorded")]
    if diff.max_abs == 0:
        return [(DENSE_EXPORT_ROW, f"the same outputs as this model on {diff.inputs} (no layer quantizes its input)")]
    return [(DENSE_EXPORT_ROW, f"outputs differ from this model's by up to {diff.max_abs:.3g} (relative RMS "
                               f"{100 * diff.relative_rms:.3g} %) on {diff.inputs}: the dense file keeps the "
                               "dequantized weights and drops the input quantization")]


DENSE_EXPORT_ROW = "dense export (`zoo export`)"


def _latency_rows(report: VariantReport) -> list[tuple[str, str]]:
    """Latency at batch 1 in torch eager and in every other runtime measured (or why not), fastest marked;
    for a quantized variant, which path produced its numbers."""
    best, _ = report.best_runtime
    rows = [(f"latency, batch 1, {LATENCY_NAMES.get(runtime, runtime)}",
             f"{ms:.2f} ms" + (" (fastest)" if runtime == best and len(report.latency_by_runtime) > 1 else ""))
            for runtime, ms in (report.latency_by_runtime or {"torch": report.latency_ms}).items()]
    rows += [(f"latency, batch 1, {LATENCY_NAMES.get(runtime, runtime)}", f"not measured: {why}")
             for runtime, why in report.runtime_errors.items()]
    if report.quant is not None:
        rows.append(("quantized arithmetic", report.int8_path or "not recorded"))
    return rows


LATENCY_NAMES = {"torch": "torch eager", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def int8_line(report: VariantReport) -> str | None:
    """For a quantized variant on a CPU without integer dot-product instructions (VNNI, AMX): the card says
    that its quantization (e.g. int8) saves bytes there, not time."""
    if report.quant is None or report.machine is None:
        return None
    if isa_has_integer_dot_product(report.machine.isa):
        return None
    return (f"This CPU ({report.machine.cpu}, {report.machine.isa}) has no integer dot-product instructions "
            f"(VNNI, AMX): on it {report.quant} saves bytes, not time.")


def machine_line(report: VariantReport) -> str:
    """The sentence under the results table saying where they were measured: "Measured on <CPU> (<ISA>),
    torch <version>, <n> threads; ..." (`MachineInfo.summary`)."""
    if report.machine is None:
        return "The machine these numbers were measured on was not recorded."
    return f"Measured on {report.machine.summary()}."


def uncounted_line(report: VariantReport) -> str | None:
    """"FLOPs exclude: `op` (n calls), ...": the ops no FLOP formula counted; None when there were none."""
    if not report.flops_uncounted:
        return None
    ops = ", ".join(f"`{op}` ({calls} call{'' if calls == 1 else 's'})"
                    for op, calls in sorted(report.flops_uncounted.items()))
    return f"FLOPs exclude: {ops}; no FLOP formula counts them."


def _family_table(family: Sequence[VariantReport], current: str | None, base: VariantReport | None) -> dict[str, Any]:
    """Header and pre-formatted rows of a table of reports; the current variant's name is in bold, and
    FLOPs are also given relative to `base`'s dense FLOPs."""
    keys = _metric_keys(family)
    header = ["variant", "kind", *(metric_spec(k).name for k in keys), "non-zero FLOPs",
              "vs dense base", "non-zero params", "size", "bits/param", "torch eager (ms)", "fastest runtime (ms)"]
    rows = []
    for report in family:
        name = f"`{report.name}`"
        cells = [f"**{name}**" if report.name == current else name, variant_kind(report)]
        cells += [metric_spec(k).format(report.metrics[k]) if k in report.metrics else "n/a" for k in keys]
        ratio = report.flops_sparse / base.flops_dense if base and base.flops_dense else None
        cells += [_mflops(report.flops_sparse), f"{ratio:.2f}x" if ratio is not None else "n/a",
                  f"{report.params_nonzero:,}", _bytes(report.bytes_on_disk), _bits_per_param(report),
                  f"{report.latency_ms:.2f}",
                  "{1:.2f} ({0})".format(*report.best_runtime)]
        rows.append(cells)
    return {"header": header, "rows": rows}


def _family_order(family: Sequence[VariantReport]) -> list[VariantReport]:
    return sorted(family, key=lambda r: (not is_base(r), r.quant or "", r.sparsity, r.name))


def check_family(family: Sequence[VariantReport]) -> None:
    """A family table (and the models it is compared with) compares like with like: unique names, one
    task, dataset, split and average."""
    names = [r.name for r in family]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArgumentError(f"family lists variants more than once: {', '.join(duplicates)}")
    for field_name in ("task", "dataset", "split", "metric_average"):
        values = {getattr(r, field_name) for r in family}
        if len(values) > 1:
            raise InvalidArgumentError(f"family mixes {field_name}s: {sorted(values)}")


# ---------------------------------------------------------------------------------------------------
# Templates

_METRICS_SECTION = """\
Measured on split `{{ split }}` of `{{ dataset }}`; metrics are averaged `{{ average }}` \
({{ average_meaning }}). FLOPs are 2 x multiply-accumulates for {{ example }}; the non-zero count skips \
the multiplications by weights that are exactly zero, as sparse kernels would. Latency is for the same \
input.

| measure | value |
|---|---|
{% for label, value in metric_rows -%}
| {{ label }} | {{ value }} |
{% endfor %}
{% if flops_exclude %}{{ flops_exclude }}

{% endif %}{% if int8_note %}{{ int8_note }}

{% endif %}{{ machine_line }}
"""

_FAMILY_SECTION = """\
{% if plot_filename %}![{{ plot_alt }}]({{ plot_filename }})

{% endif -%}
{% if latency_plot_filename %}![{{ latency_plot_alt }}]({{ latency_plot_filename }})

{% endif -%}
| {{ family.header | join(" | ") }} |
|{% for _ in family.header %}---|{% endfor %}
{% for row in family.rows -%}
| {{ row | join(" | ") }} |
{% endfor %}
{%- for plot in extra_plots %}
![{{ plot.alt }}]({{ plot.filename }})
{% endfor %}"""

_REFERENCES_SECTION = """\
{% if references %}## Compared with

Other models trained by the zoo for the same task, measured the same way (FLOPs relative to \
`{{ family_base }}`):

| {{ references.header | join(" | ") }} |
|{% for _ in references.header %}---|{% endfor %}
{% for row in references.rows -%}
| {{ row | join(" | ") }} |
{% endfor %}
{% endif %}"""

_ANALYSES_SECTION = """\
{% if analysis_plots %}## Analyses

{% for plot in analysis_plots -%}
![{{ plot.alt }}]({{ plot.filename }})

{% endfor %}{% endif %}"""

_USAGE_SECTION = """\
```python
import zoo

model = zoo.load("{{ name }}")
```"""

VARIANT_TEMPLATE = f"""\
---
{{{{ card_data }}}}
---

# {{{{ name }}}}

`{{{{ name }}}}` is {{{{ description }}}}. Task: {{{{ task }}}}.

The base model: {{{{ about }}}}

## Dataset

{{{{ dataset_description }}}}

## How it was made

{{% if recipe_json %}}The compression recipe applied to `{{{{ base_model_name }}}}`, in order:

```json
{{{{ recipe_json }}}}
```
{{% else %}}This is the base model: no compression recipe was applied.
{{% endif %}}
## Results

{_METRICS_SECTION}
## The family

All variants of `{{{{ family_base }}}}`, measured the same way:

{_FAMILY_SECTION}
{_REFERENCES_SECTION}{_ANALYSES_SECTION}## How to use

{_USAGE_SECTION}
""" + "\n"  # Jinja drops a template's final newline: this keeps one at the end of the README

BASE_TEMPLATE = f"""\
---
{{{{ card_data }}}}
---

# {{{{ name }}}}

`{{{{ name }}}}` is the dense base model of a family of compressed variants (pruned and/or \
quantized). Task: {{{{ task }}}}.

{{{{ about }}}}

## The family: {{{{ primary_name }}}} vs FLOPs

{_FAMILY_SECTION}
{_REFERENCES_SECTION}## Dataset

{{{{ dataset_description }}}}

## Results of the base model

{_METRICS_SECTION}
{_ANALYSES_SECTION}## How to use

{_USAGE_SECTION}

Each variant loads the same way under its own name (first column of the table above).
""" + "\n"


def _render(template: str, report: VariantReport, family: Sequence[VariantReport], *, family_base: str,
            plot_filename: str | None, license: str, dataset_description: str, library_name: str, example: str,
            about: str, extra_plots: Sequence[CardPlot], references: Sequence[VariantReport],
            base_repo_id: str | None = None, latency_plot_filename: str | None = None,
            analysis_plots: Sequence[CardPlot] = ()) -> ModelCard:
    check_family([*family, *references])
    base = next((r for r in family if is_base(r)), None)
    data = card_data(report, license=license, library_name=library_name, base_repo_id=base_repo_id)
    return ModelCard.from_template(
        data,
        template_str=template,
        name=report.name,
        description=_describe(report),
        task=report.task,
        dataset=report.dataset,
        split=report.split,
        average=report.metric_average,
        average_meaning=_average_meaning(report.metric_average),
        dataset_description=dataset_description.strip(),
        recipe_json=_recipe_json(report),
        base_model_name=report.base_model,
        metric_rows=_metric_rows(report),
        flops_exclude=uncounted_line(report),
        machine_line=machine_line(report),
        int8_note=int8_line(report),
        family=_family_table(_family_order(family), report.name, base),
        family_base=family_base,
        example=example,
        about=about.strip(),
        extra_plots=list(extra_plots),
        analysis_plots=list(analysis_plots),
        references=_family_table(references, None, base) if references else None,
        primary_name=metric_spec(next(iter(report.metrics))).name,
        plot_filename=plot_filename,
        latency_plot_filename=latency_plot_filename,
        latency_plot_alt=f"{metric_spec(next(iter(report.metrics))).name} vs latency in the fastest runtime of "
                         f"the {family_base} family",
        plot_alt=f"{metric_spec(next(iter(report.metrics))).name} vs non-zero FLOPs of the {family_base} family",
    )


def variant_card(report: VariantReport, *, base_repo_id: str, family_reports: list[VariantReport],
                 plot_filename: str | None, license: str, dataset_description: str, example: str, about: str,
                 extra_plots: Sequence[CardPlot] = (), references: Sequence[VariantReport] = (),
                 library_name: str = "zoo", latency_plot_filename: str | None = None,
                 analysis_plots: Sequence[CardPlot] = ()) -> ModelCard:
    """The card of one variant of the base published as `base_repo_id` (the Hub repo id its card's
    `base_model` names, so the Hub links the two); `family_reports` (which must include `report`) fill the family table,
    `references` (base models of the same task) the comparison table; `example` says what one example
    is (FLOPs and latency are per example), `about` what the base model is (its entry's description),
    `analysis_plots` the plots of analyses run for this variant (its linear path from another model)."""
    if report.name not in {r.name for r in family_reports}:
        raise InvalidArgumentError(f"family_reports does not include the variant {report.name!r} itself")
    base = next((r for r in family_reports if is_base(r)), None)
    family_base = base.name if base is not None else report.base_model
    return _render(VARIANT_TEMPLATE, report, family_reports, family_base=family_base,
                   plot_filename=plot_filename, license=license, dataset_description=dataset_description,
                   library_name=library_name, example=example, about=about, extra_plots=extra_plots,
                   references=references, base_repo_id=validated_repo_id(base_repo_id),
                   latency_plot_filename=latency_plot_filename, analysis_plots=analysis_plots)


def base_card(base_report: VariantReport, variant_reports: list[VariantReport], *, plot_filename: str | None,
              license: str, dataset_description: str, example: str, about: str, extra_plots: Sequence[CardPlot] = (),
              references: Sequence[VariantReport] = (), library_name: str = "zoo",
              latency_plot_filename: str | None = None, analysis_plots: Sequence[CardPlot] = ()) -> ModelCard:
    """The card of a base model: its own results, and the family overview (table + plots) up front.
    `variant_reports` may or may not include the base; each variant must derive from it. The other
    arguments are `variant_card`'s."""
    if not is_base(base_report):
        raise InvalidArgumentError(f"{base_report.name!r} has a recipe: it is a variant, not a base model")
    variants = [r for r in variant_reports if r.name != base_report.name]
    own_ids = {base_report.name, base_report.base_model}
    strangers = [r.name for r in variants if r.base_model not in own_ids]
    if strangers:
        raise InvalidArgumentError(f"variants not derived from {base_report.name!r}: {', '.join(strangers)}")
    family = [base_report, *variants]
    return _render(BASE_TEMPLATE, base_report, family, family_base=base_report.name,
                   plot_filename=plot_filename, license=license, dataset_description=dataset_description,
                   library_name=library_name, example=example, about=about, extra_plots=extra_plots,
                   references=references, latency_plot_filename=latency_plot_filename,
                   analysis_plots=analysis_plots)
