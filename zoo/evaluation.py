"""The evaluator: measures one loaded variant (task metric, FLOPs, parameters, bytes, latency)."""
from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from zoo.compress.checkpoint import checkpoint_bytes
from zoo.compress.recipe import Recipe
from zoo.entry import ModelEntry
from zoo.errors import NoEvaluationDataError
from zoo.evaluate import VariantReport, count_flops, count_parameters, current_machine, measure_latency
from zoo.evaluate.report import DenseExportDifference
from zoo.options import DEFAULT_LATENCY_SECONDS
from zoo.runtimes.names import GRAPH_RUNTIMES
from zoo.tasks import task_of

if TYPE_CHECKING:
    from zoo.userdata.run import UserEval

EVAL_BATCH_SIZE = 256


def measure_variant(
    model: nn.Module,
    entry: ModelEntry,
    *,
    name: str,
    checkpoint_dir: Path,
    sparsity: float,
    quant: str | None,
    recipe: Recipe | None,
    progress: bool = True,
    latency_seconds: float = DEFAULT_LATENCY_SECONDS,
    export_root: Path | None = None,
    graph_runtimes: Sequence[str] = GRAPH_RUNTIMES,
    eval_data: UserEval | None = None,
) -> VariantReport:
    """Every number a card shows for `model`, a variant of `entry` saved at `checkpoint_dir`.

    The task metric needs the entry's evaluation data. Where this machine has none (an upstream ImageNet
    checkpoint without ZOO_IMAGEFOLDER_VAL: `NoEvaluationDataError`) the report has empty metrics and
    says why in `eval_data_missing` (and `zoo.load` measures it again once the data is there); any
    other failure of the evaluation is raised, never recorded as "not measured".

    Latency is measured in torch eager and in each of `graph_runtimes` (zoo.runtimes) the family exports
    to; the exports are cached under `export_root` (default: a temporary folder, removed after). Each
    graph's output is first checked against the model's on seeded random inputs and on the first
    `AGREEMENT_ROWS` evaluation examples, one at a time (a disagreeing runtime is not timed).

    A quantized model is also compared with its dense export (`dense_export_difference`) on the first
    `DENSE_EXPORT_ROWS` evaluation examples (seeded random inputs where the data is not here).

    `eval_data` (zoo.userdata.run.UserEval): the user's evaluation data instead of the entry's; the report
    names it (`dataset`, `split`, and `user_data`: source, format, examples, fingerprint).
    """
    task = task_of(entry)
    example = task.example_input(entry)
    missing, data_inputs, first_batch = None, [], None
    dataset, split = entry.eval_data.name, entry.eval_data.split
    if eval_data is not None:
        dataset, split = eval_data.dataset, eval_data.split
    try:
        batches = (eval_data.batches(EVAL_BATCH_SIZE) if eval_data is not None
                   else task.batches(entry, entry.eval_data, batch_size=EVAL_BATCH_SIZE, shuffle=False))
    except NoEvaluationDataError as err:
        warnings.warn(f"{name}: task metric not measured: {err}", stacklevel=2)
        metrics, average, missing = {}, task.average, str(err)
    else:
        result = task.evaluate(model, batches, entry, progress=progress)
        metrics, average = result.metrics, result.average
        first_batch = task.model_inputs(next(iter(batches.epoch(0))))
        data_inputs = _rows(first_batch, AGREEMENT_ROWS)
    dense_export = dense_export_difference(model, first_batch, example)
    flops = count_flops(model, example)
    params = count_parameters(model)
    threads = torch.get_num_threads()
    latency = measure_latency(model, example, min_run_time=latency_seconds, num_threads=threads)
    runtimes = _runtime_latencies(model, entry, example, latency.median_ms, checkpoint_dir, export_root, quant,
                                  latency_seconds, threads, tuple(graph_runtimes), data_inputs)
    return VariantReport(
        name=name, base_model=entry.name, task=entry.task, dataset=dataset,
        split=split, metrics=metrics, metric_average=average,
        flops_dense=flops.dense, flops_sparse=flops.sparse, params_total=params.total,
        params_nonzero=params.nonzero, bytes_on_disk=checkpoint_bytes(checkpoint_dir),
        latency_ms=latency.median_ms, sparsity=sparsity, quant=quant,
        recipe=recipe.to_list() if recipe is not None and recipe.steps else None, layers=flops.layers,
        flops_uncounted=flops.uncounted, machine=current_machine(threads), eval_data_missing=missing,
        latency_by_runtime=runtimes.latency_ms, runtime_errors=runtimes.errors, int8_path=runtimes.int8_path,
        dense_export=dense_export, user_data=eval_data.about if eval_data is not None else None,
    )


# Dense export (zoo export) -------------------------------------------------------------------------

DENSE_EXPORT_ROWS = 64  # evaluation examples a quantized model is compared with its dense export on


def dense_export_difference(model: nn.Module, batch: torch.Tensor | tuple[torch.Tensor, ...] | None,
                            example: torch.Tensor | tuple[torch.Tensor, ...]) -> DenseExportDifference | None:
    """How the dense export of `model` (`zoo.compress.dense.dense_model`: what `zoo export`'s file loads
    into) computes differently from `model`, on the first `DENSE_EXPORT_ROWS` rows of `batch` (model
    inputs of evaluation examples) or, without one, on seeded random inputs shaped as `example`
    (zoo.runtimes.agreement.check_inputs). None for a model without quantized layers (identical)."""
    from zoo.compress.dense import dense_model, has_quantized_layers
    from zoo.runtimes.agreement import check_inputs, relative_rms_error, seeded_call

    if not has_quantized_layers(model):
        return None
    if batch is not None:
        batch = batch if isinstance(batch, tuple) else (batch,)
        rows = min(DENSE_EXPORT_ROWS, len(batch[0]))
        inputs, words = [tuple(x[:rows] for x in batch)], f"{rows} evaluation example{'s' if rows != 1 else ''}"
    else:
        inputs = check_inputs(example)
        words = f"{len(inputs)} seeded random inputs shaped as the example input"
    dense = dense_model(model)
    max_abs = rms = 0.0
    for x in inputs:
        want, got = seeded_call(model, x), seeded_call(dense, x)
        max_abs = max([max_abs, *(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want) if w.numel())])
        rms = max(rms, relative_rms_error(got, want))
    return DenseExportDifference(max_abs, rms, words)


# Latency per runtime (zoo.runtimes) ----------------------------------------------------------------

AGREEMENT_ROWS = 2  # evaluation examples each runtime's graph is checked on, besides random inputs


def _rows(inputs: torch.Tensor | tuple[torch.Tensor, ...], count: int) -> list[tuple[torch.Tensor, ...]]:
    """The first `count` examples of a batch of model inputs, each as a batch of one."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    return [tuple(x[i : i + 1] for x in inputs) for i in range(min(count, len(inputs[0])))]


def _runtime_latencies(model: nn.Module, entry: ModelEntry, example, torch_ms: float, checkpoint_dir: Path,
                       export_root: Path | None, quant: str | None, latency_seconds: float, threads: int,
                       graph_runtimes: tuple[str, ...], data_inputs: list[tuple[torch.Tensor, ...]]):
    from zoo.runtimes import UnsupportedExportError, weights_identity
    from zoo.runtimes.measure import measure_runtimes

    try:
        signature, unsupported = task_of(entry).export_signature(entry), None
    except UnsupportedExportError as err:
        signature, unsupported = None, str(err)
    with contextlib.ExitStack() as stack:
        root = export_root if export_root is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        return measure_runtimes(model, signature, example, torch_ms=torch_ms, export_root=root,
                                weights_identity=weights_identity(checkpoint_dir), quant=quant,
                                latency_seconds=latency_seconds, threads=threads, unsupported=unsupported,
                                runtimes=graph_runtimes, data_inputs=data_inputs)


def has_eval_data(entry: ModelEntry) -> bool:
    """Whether this machine has `entry`'s evaluation data (opening it raises no NoEvaluationDataError)."""
    try:
        task_of(entry).batches(entry, entry.eval_data, batch_size=EVAL_BATCH_SIZE, shuffle=False)
    except NoEvaluationDataError:
        return False
    return True
