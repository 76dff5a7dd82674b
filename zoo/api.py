"""`zoo.load`: a ready model for a name and a compression request.

Order of resolution, as a user of timm and the Hub expects:
1. the local hub has the variant's repo published -> load it;
2. the variant cache has it (derived earlier from the same base weights by the same recipe) -> load it;
3. otherwise derive it now: get the base (local hub, an upstream Hub download, or for zoo-native
   entries training it by its TrainSpec), apply the variant's recipe, measure it, cache it atomically.

A Hub id (`hf-hub:org/name[@revision]`, or a bare `org/name`) names a base read from that repo (zoo.hub_ids:
the local hub, the Hugging Face cache, then the endpoint), pinned to the commit its revision resolves to;
loaded as it is, it is the repo's own model (`source="hf-hub"`), and compressed, derived from those weights.

Under torchrun (zoo.distributed) every rank trains, rank 0 alone decides what is cached or published,
writes and measures; the other ranks wait for it and load what it wrote.

Across processes, one trains a base or derives a variant while the others wait for its lock
(`zoo.locks.derivation_lock`, per cache key) and then load what it cached: N processes loading one
missing variant derive it once and return the same weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from zoo.compress.checkpoint import (
    CONFIG_FILE,
    FORMAT_NAME,
    WEIGHTS_FILE,
    declared_format,
    load_checkpoint,
    read_config,
    read_report,
    recover_checkpoint,
    save_checkpoint,
    write_report,
)
from zoo.compress.lowbit import qat_layer_names, swap_to_qat_modules
from zoo.compress.quantization import quantized_layer_names, swap_to_quant_modules
from zoo.compress import Recipe, RecipeContext
from zoo.compress.structured import rebuild_architecture, structured_architecture
from zoo.data import Batches
from zoo.distributed import main_decides, main_only
from zoo.entry import DataSpec, ModelEntry, is_hub_name
from zoo.errors import CheckpointError, InvalidArgumentError, ZooError
from zoo.evaluate import VariantReport
from zoo.evaluation import has_eval_data, measure_variant
from zoo.hub import cached_or_download
from zoo.hub_ids import entry_record, is_hub_reference
from zoo.locks import derivation_lock
from zoo.models import build_empty_model, build_model
from zoo.native import train_base_model
from zoo.options import TrainOptions
from zoo.signing import SigningPolicy, verify_folder
from zoo.store import REPORT_FILE, Store
from zoo.tasks import Task, task_of
from zoo.userdata import CONFIG_KEY as USER_DATA_KEY, FineTuning, UserData
from zoo.variants import VariantSpec, default_method, info, resolve  # noqa: F401  (zoo.api's public names)

if TYPE_CHECKING:
    from zoo.userdata.run import Prepared as PreparedUserData


@dataclass(frozen=True)
class LoadedVariant:
    """Attached to every model `zoo.load` returns, as `model.zoo`."""

    name: str
    base_model: str
    sparsity: float
    quant: str | None
    recipe: Recipe | None
    source: str  # "hub", "cache", "derived", "trained", "upstream" or "hf-hub" (a repo's own model, by Hub id)
    path: Path
    report: VariantReport | None
    runtime: str = "torch"  # what runs it: "torch", "onnxruntime" or "openvino" (zoo.runtimes)
    signed_by: str | None = None  # the trusted key that signed its repo (zoo.signing), when one was verified


def load(
    name: str,
    *,
    sparsity: float = 0.0,
    quant: str | None = None,
    method: str | None = None,
    recipe: Recipe | None = None,
    revision: str = "main",
    store: Store | None = None,
    endpoint: str | None = None,
    progress: bool = True,
    options: TrainOptions | None = None,
    kernels: str = "dense",
    runtime: str = "torch",
    train_data: UserData | str | os.PathLike[str] | None = None,
    eval_data: UserData | str | os.PathLike[str] | None = None,
    finetuning: FineTuning | None = None,
) -> nn.Module:
    """A model in eval mode for `name` (`arch.tag`, a variant name, or a Hub id `hf-hub:org/name[@revision]`
    / `org/name`, read from `store`'s local hub, the Hugging Face cache or `endpoint` at `revision`),
    optionally compressed; `model.zoo` says what it is.

    `sparsity` in [0, 1), `quant` None or "int8", `method` "gmp" or "oneshot" (default: gmp where the
    zoo can fine-tune, else oneshot), `recipe` a custom Recipe instead of the default one. `options`
    (default: the store's) shortens training, fine-tuning or latency measurement of whatever is made
    now; what it makes is cached apart from what the entry's own recipe makes. `kernels` "sparse" swaps
    each sparse enough Linear / 1x1 Conv2d for the kernel measured fastest on this machine at the task's
    example input (`compress.sparse_kernels.use_sparse_kernels`; its choices in `model.kernel_choices`).
    `runtime` "onnxruntime" or "openvino" returns the model's exported graph in that runtime, called like
    the torch model (zoo.runtimes; the export is cached beside the checkpoint).
    `train_data` / `eval_data` (a path, an `hf-hub:` data set id, or a `zoo.userdata.UserData`) fine-tune
    and calibrate on, and measure on, the user's data (the variant is named `..._d<hash>` and cached apart;
    `finetuning` overrides the fine-tuning hyper-parameters); with only `eval_data` and no compression,
    the model comes with a report measured on it, not cached.
    """
    from zoo.runtimes.session import check_runtime

    _check_load_arguments(name, sparsity=sparsity, quant=quant, method=method, recipe=recipe, revision=revision)
    check_runtime(runtime)
    if kernels not in ("dense", "sparse"):
        raise InvalidArgumentError(f"kernels must be 'dense' or 'sparse', got {kernels!r}")
    if kernels == "sparse" and runtime != "torch":
        raise InvalidArgumentError(f"sparse kernels are torch modules; runtime {runtime!r} brings its own kernels")
    user = _user_data(train_data, eval_data, finetuning)
    if isinstance(name, VariantSpec):
        if sparsity or quant is not None or method is not None or recipe is not None or any(user.values()):
            raise InvalidArgumentError(f"a VariantSpec ({name.name}) already says how to compress; "
                                       "pass no sparsity, quant, method, recipe or data with it")
        spec = name
    store = store or Store()
    if options is not None:
        store = dataclasses.replace(store, options=options)
    if not isinstance(name, VariantSpec):
        hub_id = is_hub_reference(name)
        spec = resolve(name, sparsity=sparsity, quant=quant, method=method, recipe=recipe, store=store,
                       endpoint=endpoint, revision=revision if hub_id else None, **user)
        if hub_id:
            revision = "main"  # the Hub id's revision pinned the base; published variants are read at main
    task_of(spec.base).check_entry(spec.base)
    model = _load_torch(spec, store, revision, endpoint=endpoint, progress=progress)
    if kernels == "sparse":
        _use_sparse_kernels(model, spec.base)
    if runtime == "torch":
        return model
    from zoo.runtimes.load import with_runtime

    return with_runtime(model, runtime, store.cache_root)


def _check_load_arguments(name: object, *, sparsity: object, quant: object, method: object, recipe: object,
                          revision: object) -> None:
    """`zoo.load`'s arguments of the wrong type refused (InvalidArgumentError) before anything is looked up."""
    if not isinstance(name, (str, VariantSpec)) or (isinstance(name, str) and not name.strip()):
        raise InvalidArgumentError(f"zoo.load takes a model name (str) or a VariantSpec, got {name!r}"[:200])
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise InvalidArgumentError(f"sparsity must be a number in [0, 1), got {sparsity!r}"[:200])
    for label, value in (("quant", quant), ("method", method)):
        if value is not None and not isinstance(value, str):
            raise InvalidArgumentError(f"{label} must be a string or None, got {value!r}"[:200])
    if recipe is not None and not isinstance(recipe, Recipe):
        raise InvalidArgumentError(f"recipe must be a zoo.compress.Recipe or None, got {type(recipe).__name__} "
                                   f"{recipe!r} (read a file with Recipe.from_yaml / Recipe.from_json)"[:240])
    if not isinstance(revision, str) or not revision:
        raise InvalidArgumentError(f"revision must be a non-empty string, got {revision!r}"[:200])


def _user_data(train_data, eval_data, finetuning) -> dict[str, Any]:
    """`zoo.load`'s data arguments as VariantSpec fields (paths made UserData)."""
    return {"train_data": UserData.of(train_data) if train_data is not None else None,
            "eval_data": UserData.of(eval_data) if eval_data is not None else None, "finetuning": finetuning}


def _load_torch(spec: VariantSpec, store: Store, revision: str, *, endpoint: str | None, progress: bool) -> nn.Module:
    if spec.is_base and spec.eval_data is not None:  # the base's weights, measured on the user's data
        model = _load_torch(VariantSpec(spec.base), store, revision, endpoint=endpoint, progress=progress)
        return measured_on(model, spec.eval_data, store.options, progress=progress)
    pinned = spec.base.revision if spec.is_base and spec.base.revision != "main" else None  # read from a Hub repo
    published = _load_published(spec, store, pinned or revision)
    if published is not None:
        return published
    if revision != "main":
        raise InvalidArgumentError(f"revision {revision!r} of {spec.repo_id} is not in the local hub {store.hub.root}")
    # Training and derivation seed torch's generator: on a fork of it, so the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        if spec.is_base:
            return _base(spec, store, endpoint=endpoint, progress=progress)
        return _derived(spec, store, endpoint=endpoint, progress=progress)


def _use_sparse_kernels(model: nn.Module, entry: ModelEntry) -> None:
    from zoo.compress.sparse_kernels import use_sparse_kernels

    use_sparse_kernels(model, task_of(entry).example_input(entry))


# Sources ------------------------------------------------------------------------------------------

def _load_published(spec: VariantSpec, store: Store, revision: str) -> nn.Module | None:
    if not main_decides(lambda: store.hub.has(spec.repo_id, revision)):
        return None
    return _from_folder(spec.base, store.hub.snapshot(spec.repo_id, revision), source="hub", signing=store.signing,
                        name=spec.name)


def _base(spec: VariantSpec, store: Store, *, endpoint: str | None, progress: bool) -> nn.Module:
    folder, source, model = _base_folder(spec.base, store, endpoint=endpoint, progress=progress)
    if model is not None:
        return model
    if source == "cache":
        with derivation_lock(folder):  # a report measured by one process, not by all at once
            return load_cached(spec, folder, progress=progress, options=store.options)
    model = _from_folder(spec.base, folder, source=source, signing=store.signing)
    if model.zoo.report is None:  # an upstream checkpoint: measured once, its report cached beside the variants
        report = _upstream_report(model, spec.base, folder, store, progress=progress)
        model.zoo = dataclasses.replace(model.zoo, report=report)
    return model


def _upstream_report(model: nn.Module, entry: ModelEntry, folder: Path, store: Store, *,
                     progress: bool) -> VariantReport:
    """The report of an upstream checkpoint (plain weights, no report of its own: a timm or transformers
    repo), measured on first load and kept in the variant cache under the weights' identity (the repo's
    commit) and the store's options, so its family can be carded; measured again when it is stale (an
    older evaluator, evaluation data that was missing then and is here now, or a file that no longer
    reads as a report, as a cached variant's). Graph exports go beside it, never into the Hugging Face cache."""
    measured = store.cache_dir(entry.name, "measured-" + _digest(entry_fingerprint(entry, folder)
                                                                 + store.options.cache_key()))
    path = measured / REPORT_FILE
    if main_decides(path.is_file):
        try:
            report = VariantReport.load(path)
        except CheckpointError as err:
            warnings.warn(f"{err}; measured again", UserWarning, stacklevel=2)
        else:
            if report.is_current and not (report.eval_data_missing and has_eval_data(entry)):
                return report

    def measure() -> VariantReport:
        report = measure_variant(model, entry, name=entry.name, checkpoint_dir=folder, sparsity=0.0, quant=None,
                                 recipe=None, progress=progress, latency_seconds=store.options.latency_seconds,
                                 export_root=_exports(measured), graph_runtimes=store.options.measured_runtimes)
        measured.mkdir(parents=True, exist_ok=True)
        report.save(path)
        return report

    return main_decides(measure)


def _base_folder(entry: ModelEntry, store: Store, *, endpoint: str | None,
                 progress: bool) -> tuple[Path, str, nn.Module | None]:
    """Where the base's weights are, without loading them: the local hub, the Hugging Face cache (the
    network only if it lacks them), or the cache of trained zoo-native bases (trained now if absent,
    then the trained model is returned too). Returns (folder, source, model or None)."""
    if main_decides(lambda: store.hub.has(entry.repo_id, entry.revision)):
        return store.hub.snapshot(entry.repo_id, entry.revision), "hub", None
    if entry.source == "upstream":
        return cached_or_download(entry.repo_id, revision=entry.revision, endpoint=endpoint), "upstream", None
    init = None
    identity = json.dumps(entry.training_identity(), sort_keys=True, default=str) + store.options.cache_key()
    if entry.train is not None and entry.train.init_from is not None:  # starts from another entry's weights
        init = load(entry.train.init_from, store=store, endpoint=endpoint, progress=progress)
        identity += base_fingerprint(init.zoo.path)
    folder = store.cache_dir(entry.name, "trained-" + _digest(identity))
    with derivation_lock(folder):  # one training per base: other processes wait here, then find it cached
        if _cached(folder):
            return folder, "cache", None
        model = train_base_model(entry, progress=progress, init=init, options=store.options)
        return folder, "trained", _save_and_measure(model, VariantSpec(entry), folder, store.options, recipe=None,
                                                    source="trained", progress=progress)


def _derived(spec: VariantSpec, store: Store, *, endpoint: str | None, progress: bool) -> nn.Module:
    """Derives `spec` from its base, or from its sparse parent when that saves re-running steps. The
    cache key is the recipe and the base weights' identity, found without loading any weights."""
    base_folder, base_source, base_model = _base_folder(spec.base, store, endpoint=endpoint, progress=progress)
    fingerprint = entry_fingerprint(spec.base, base_folder)
    folder = variant_cache_folder(spec, store, fingerprint)
    with derivation_lock(folder):  # one derivation per cache key: other processes wait, then load it
        if _cached(folder):
            return load_cached(spec, folder, progress=progress, options=store.options)
        return _derive(spec, store, folder, fingerprint, base_folder, base_source, base_model,
                       endpoint=endpoint, progress=progress)


def _derive(spec: VariantSpec, store: Store, folder: Path, fingerprint: str, base_folder: Path, base_source: str,
            base_model: nn.Module | None, *, endpoint: str | None, progress: bool) -> nn.Module:
    """`_derived`'s work once the cache lacks `spec` (the caller holds its folder's lock)."""
    recipe = spec.recipe(store.options)
    start, done = None, 0
    if spec.sparse_parent is not None:
        parent = load(spec.sparse_parent, store=store, endpoint=endpoint, progress=progress)
        if base_fingerprint(parent.zoo.path) == fingerprint:  # a parent made from these base weights
            start, done = parent, len(spec.sparse_parent.recipe(store.options).steps)
    prepared = None
    if spec.has_user_data:  # the user's data read and the model's classes planned (zoo.userdata.run)
        from zoo.userdata.run import prepare

        prepared = prepare(spec)
    torch.manual_seed(spec.training.seed if spec.training else 0)  # on load's fork of the generator
    if start is None:
        start = base_model or _from_folder(spec.base, base_folder, source=base_source, signing=store.signing)
        start = prepared.adapt(start) if prepared is not None else start  # a new classifier for the data's classes
    if prepared is None:
        context = _recipe_context(spec.base, progress)
    else:
        context = _recipe_context(prepared.entry, progress, data=prepared.train_batches)
    model = Recipe(recipe.steps[done:]).apply(start.train(False), context)
    extra = {"base_fingerprint": fingerprint}
    if prepared is not None:
        extra[USER_DATA_KEY] = prepared.record
    return _save_and_measure(model.eval(), spec, folder, store.options, recipe=recipe, source="derived",
                             progress=progress, extra=extra, prepared=prepared)


def variant_cache_folder(spec: VariantSpec, store: Store, fingerprint: str) -> Path:
    """Where the variant cache keeps `spec` derived from the base weights `fingerprint` names, by its
    recipe under the store's options (the folder may not exist yet)."""
    recipe = spec.recipe(store.options)
    data = json.dumps(spec.data_identity(), sort_keys=True) if spec.has_user_data else ""
    return store.cache_dir(spec.name, _digest(recipe.to_json() + fingerprint + store.options.cache_key() + data))


def _recipe_context(entry: ModelEntry, progress: bool, data: Callable[[], Batches] | None = None) -> RecipeContext:
    """Fine-tuning and calibration data of an entry: its training split, never the evaluation split, or
    `data`, the user's training batches (zoo.userdata). Data is opened only when a step asks for it
    (one-shot pruning needs none)."""
    task = task_of(entry)
    if entry.train is None and data is None:
        split = DataSpec(entry.eval_data.name, "train")
        return RecipeContext(calibration_batches=lambda: _inputs(task, task.batches(entry, split, batch_size=32,
                                                                                    shuffle=False)),
                             progress=progress)
    spec = entry.train

    def batches() -> Batches:
        if data is not None:
            return data()
        return task.batches(entry, spec.data, batch_size=spec.batch_size, shuffle=True, seed=spec.seed)

    def fresh_model() -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # as train_base_model initializes: seeded, on a fork
            torch.manual_seed(spec.seed)
            return build_model(entry)

    return RecipeContext(
        train_batches=lambda epoch: batches().epoch(epoch),
        loss_fn=lambda model, batch: task.loss(model, batch, entry),
        calibration_batches=lambda: _inputs(task, batches()), fresh_model=fresh_model, progress=progress,
        seed=spec.seed,
    )


def _inputs(task: Task, batches: Batches) -> Iterator[Any]:
    return (task.model_inputs(batch) for batch in batches.epoch(0))


def _save_and_measure(model: nn.Module, spec: VariantSpec, folder: Path, options: TrainOptions, *,
                      recipe: Recipe | None, source: str, progress: bool, extra: dict | None = None,
                      prepared: PreparedUserData | None = None) -> nn.Module:
    """Saves `model` into `folder` (its config says which training options, when not the entry's own
    recipe, made it), measures it (on the user's evaluation data where `prepared` has some) and writes
    the report: on rank 0, while the other ranks of a distributed run wait and then load what it wrote."""
    saved = main_only(lambda: _write_and_measure(model, spec, folder, options, recipe=recipe, source=source,
                                                 progress=progress, extra=extra, prepared=prepared))
    return saved if saved is not None else _from_checkpoint(spec.base, folder, source=source, name=spec.name)


def _write_and_measure(model: nn.Module, spec: VariantSpec, folder: Path, options: TrainOptions, *,
                       recipe: Recipe | None, source: str, progress: bool, extra: dict | None,
                       prepared: PreparedUserData | None = None) -> nn.Module:
    config = {
        "name": spec.name, "base_model": spec.base.name, "arch": spec.base.arch,
        "model_kwargs": spec.base.model_kwargs, "recipe": recipe.to_list() if recipe else None,
        "sparsity": spec.sparsity, "quant": spec.quant, "entry": entry_record(spec.base), **(extra or {}),
    }
    if not options.is_default:
        config["train_options"] = dataclasses.asdict(options)
    architecture = structured_architecture(model, recipe)  # structured pruning: the narrowed widths
    if architecture is not None:
        config["architecture"] = architecture
    save_checkpoint(folder, model.state_dict(), config=config)
    report = measure_variant(model, spec.base if prepared is None else prepared.entry, name=spec.name, checkpoint_dir=folder, sparsity=spec.sparsity,
                             quant=spec.quant, recipe=recipe, progress=progress,
                             latency_seconds=options.latency_seconds, export_root=_exports(folder),
                             graph_runtimes=options.measured_runtimes,
                             eval_data=prepared.evaluation if prepared is not None else None)
    write_report(folder, report.to_dict())
    model.zoo = LoadedVariant(spec.name, spec.base.name, spec.sparsity, spec.quant, recipe, source, folder, report)
    return model


# Building models from files -----------------------------------------------------------------------

def instantiate(entry: ModelEntry, state_dict: dict[str, torch.Tensor],
                architecture: dict[str, Any] | None = None) -> nn.Module:
    """The entry's architecture holding exactly `state_dict`: built on the meta device (no random
    init to throw away), narrowed to a structurally pruned `architecture` (as its checkpoint config
    saved it) by its family's hook, low-bit (QAT / PTQ) layers restored where the state dict has an
    `act_bits`, int8 PTQ layers where it has scales without one, weights assigned."""
    model = build_empty_model(entry)
    try:  # the architecture and the layers' kinds come from the file: what does not fit is the file's fault
        if architecture is not None:
            model = rebuild_architecture(model, architecture)
        qat = qat_layer_names(state_dict)
        swap_to_qat_modules(model, state_dict, qat)
        swap_to_quant_modules(model, sorted(set(quantized_layer_names(state_dict)) - set(qat)))
    except (TypeError, KeyError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"the checkpoint's architecture or quantized layers do not fit {entry.name}: "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]) from None
    _check_dtypes(entry, model, state_dict)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights do not fit {entry.name}: {str(err).splitlines()[0]}") from None
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{entry.name}: no weights for {', '.join(left[:5])}")
    return model.eval()


def _check_dtypes(entry: ModelEntry, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Each floating weight of the dtype the model's tensor of that name has (a float64 or float16 weight
    in a float32 model would fail at the first forward pass), each other tensor not floating where the
    model's is not (an integer buffer)."""
    expected = {name: t.dtype for name, t in [*model.named_parameters(), *model.named_buffers()]}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{entry.name}: {name!r} is a {type(tensor).__name__}, not a tensor")
        want = expected.get(name)
        if want is None:
            continue  # an unexpected key: load_state_dict names it
        if (want.is_floating_point or tensor.dtype.is_floating_point) and tensor.dtype != want:
            raise CheckpointError(f"{entry.name}: {name!r} is {tensor.dtype}, the model takes {want}")


def _from_checkpoint(entry: ModelEntry, folder: Path, *, source: str, name: str | None = None) -> nn.Module:
    """The model in zoo checkpoint `folder`, of `entry` (and named `name`, when the caller knows the
    variant's name): the config must say so (its base, arch, name), the report is read only when its
    checksum matches (`read_report`) and validated, and what does not fit the entry is a CheckpointError.
    A report that does not match its checksum is refused with a warning: the model comes without a report
    (not measured; `load_cached` measures a cached variant again, `zoo push` refuses an unmeasured one)."""
    state_dict, config = load_checkpoint(folder)
    if config["base_model"] != entry.name and not _is_own_repo(entry, config):
        raise CheckpointError(f"{folder} holds a variant of {config['base_model']}, not of {entry.name}")
    if config["arch"] != entry.arch:
        raise CheckpointError(f"{folder} holds a {config['arch']!r} model, but {entry.name} is a {entry.arch!r}")
    if name is not None and config["name"] != name and not _is_own_repo(entry, config):
        raise CheckpointError(f"{folder} holds {config['name']!r}, not {name!r}")
    built = entry
    if USER_DATA_KEY in config:  # made on user data: its classifier may have the data's classes
        from zoo.userdata.run import entry_for_config

        built = entry_for_config(entry, config)
    model = instantiate(built, state_dict, config.get("architecture"))
    try:
        recipe = Recipe.from_list(config["recipe"]) if config.get("recipe") else None
    except ZooError as err:  # RecipeError, an unknown step type: the file's recipe, not the caller's
        raise CheckpointError(f"{folder}: its recipe does not read: {err}") from None
    try:
        data = read_report(folder, config)
        report = VariantReport.from_dict(data, str(folder / REPORT_FILE)) if data is not None else None
    except CheckpointError as err:
        # an edited report (or a kill between writing it and recording its hash), or one out of its schema's
        # ranges (an older evaluator's): its numbers are refused, the weights (verified by their own hash)
        # load as not measured; a cached variant is measured again
        warnings.warn(f"{err}; its numbers are not used: the variant counts as not measured", UserWarning,
                      stacklevel=2)
        report = None
    if _is_own_repo(entry, config):
        # An `hf-hub:` entry's own model: named and reported as that entry, the base of what derives from it
        # (its report without a recipe, as a base's; `model.zoo.recipe` keeps the one that made it).
        if report is not None:
            report = dataclasses.replace(report, name=entry.name, base_model=entry.name, recipe=None)
        model.zoo = LoadedVariant(entry.name, entry.name, config.get("sparsity", 0.0), config.get("quant"), recipe,
                                  "hf-hub", folder, report)
        return model
    model.zoo = LoadedVariant(config["name"], entry.name, config.get("sparsity", 0.0), config.get("quant"),
                              recipe, source, folder, report)
    return model


def _is_own_repo(entry: ModelEntry, config: dict[str, Any]) -> bool:
    """Whether a checkpoint config is that of the repo an `hf-hub:` entry was read from (its model made
    from another base), rather than of a variant derived from the entry."""
    return is_hub_name(entry.name) and config["base_model"] != entry.name


def load_cached(spec: VariantSpec, folder: Path, *, progress: bool = False,
                options: TrainOptions | None = None) -> nn.Module:
    """A cached variant. It is measured now when its measurement was interrupted (no report yet), made by
    an older evaluator, made without evaluation data that is here now, or lacks a runtime `options`
    asks latency for (latency for `options.latency_seconds`)."""
    model = _from_checkpoint(spec.base, folder, source="cache", name=spec.name)
    report, options = model.zoo.report, options or TrainOptions()
    entry = spec.base
    if spec.has_user_data:  # measured (again) as it was made: with its classes, on the user's evaluation data
        from zoo.userdata.run import entry_for_config, eval_for_model

        entry = entry_for_config(spec.base, read_config(folder))
    if report is None or not report.is_current \
            or (report.eval_data_missing and spec.eval_data is None and has_eval_data(entry)) \
            or not set(options.measured_runtimes) <= {*report.latency_by_runtime, *report.runtime_errors}:
        def measure() -> VariantReport:
            evaluation = None
            if spec.eval_data is not None:  # the data are read only when a measurement needs them
                _, evaluation = eval_for_model(spec.base, read_config(folder), spec.eval_data)
            measured = measure_variant(model, entry, name=spec.name, checkpoint_dir=folder,
                                       sparsity=spec.sparsity, quant=spec.quant, recipe=model.zoo.recipe,
                                       progress=progress, latency_seconds=options.latency_seconds,
                                       export_root=_exports(folder), graph_runtimes=options.measured_runtimes,
                                       eval_data=evaluation)
            write_report(folder, measured.to_dict())
            return measured

        model.zoo = dataclasses.replace(model.zoo, report=main_decides(measure))  # rank 0 measures and writes
    return model


def measured_on(model: nn.Module, data: UserData, options: TrainOptions | None = None, *,
                progress: bool = False) -> nn.Module:
    """`model` (as `zoo.load` returns it) with a report measured on the user's data `data` (by the classes its
    checkpoint recorded, or its entry's), not cached: its own report stays where it is."""
    from zoo.models import get_entry
    from zoo.userdata.run import eval_for_model

    options = options or TrainOptions()
    config = read_config(model.zoo.path) if _is_zoo_checkpoint(Path(model.zoo.path)) else {}
    entry, evaluation = eval_for_model(get_entry(model.zoo.base_model), config, data)
    report = measure_variant(model, entry, name=model.zoo.name, checkpoint_dir=model.zoo.path,
                             sparsity=model.zoo.sparsity, quant=model.zoo.quant, recipe=model.zoo.recipe,
                             progress=progress, latency_seconds=options.latency_seconds,
                             graph_runtimes=options.measured_runtimes, eval_data=evaluation)
    model.zoo = dataclasses.replace(model.zoo, report=report)
    return model


def _from_folder(entry: ModelEntry, folder: Path, *, source: str, signing: SigningPolicy,
                 name: str | None = None) -> nn.Module:
    """A zoo checkpoint folder (of the variant `name`, when given; a published repo: its signature verified
    first under `signing`), or a plain `model.safetensors` (an upstream timm or transformers repo: not the
    zoo's to sign)."""
    if _is_zoo_checkpoint(folder):
        signed_by = verify_folder(folder, signing, what=str(folder))
        model = _from_checkpoint(entry, folder, source=source, name=name)
        model.zoo = dataclasses.replace(model.zoo, signed_by=signed_by)
        return model
    return _from_plain_safetensors(entry, folder, source=source)


def _from_plain_safetensors(entry: ModelEntry, folder: Path, *, source: str) -> nn.Module:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
    model = instantiate(entry, load_file(str(path)))
    source = "hf-hub" if is_hub_name(entry.name) else source  # a timm repo's own weights, by Hub id
    model.zoo = LoadedVariant(entry.name, entry.name, 0.0, None, None, source, folder, None)
    return model


def _cached(folder: Path) -> bool:
    """Whether `folder` holds a zoo checkpoint, as rank 0 sees it (every rank of a distributed run takes
    the same path: training is collective)."""
    return main_decides(lambda: _is_zoo_checkpoint(folder))


def _is_zoo_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a config.json declaring the zoo's format (its schema is checked at load);
    a save killed mid-swap has its previous checkpoint put back first."""
    if not (folder / CONFIG_FILE).is_file() and not recover_checkpoint(folder):
        return False
    return declared_format(folder) == FORMAT_NAME


def base_fingerprint(folder: Path) -> str:
    """Identity of the base weights behind a checkpoint folder: a derived variant records it in its
    config; for a base it is the SHA-256 of its zoo checkpoint, or the (content-addressed) snapshot
    folder of an upstream download."""
    if not _is_zoo_checkpoint(folder):
        return str(folder.resolve())
    config = read_config(folder)
    recorded = config.get("base_fingerprint")
    if recorded is not None and not isinstance(recorded, str):
        raise CheckpointError(f"{folder}: base_fingerprint must be a string, got {recorded!r}"[:200])
    return recorded or config["files"][WEIGHTS_FILE]["sha256"]


def entry_fingerprint(entry: ModelEntry, folder: Path) -> str:
    """Identity of `entry`'s weights in `folder`, what derivations from it are keyed by: `base_fingerprint`,
    except for the zoo checkpoint an `hf-hub:` entry was read from, whose config names the base *it* was
    made from: there the SHA-256 of its own weights."""
    if is_hub_name(entry.name) and _is_zoo_checkpoint(folder):
        config = read_config(folder)
        if _is_own_repo(entry, config):
            return config["files"][WEIGHTS_FILE]["sha256"]
    return base_fingerprint(folder)


def _exports(folder: Path) -> Path:
    """Where the graph exports (zoo.runtimes) of the checkpoint in `folder` are cached."""
    from zoo.runtimes.load import EXPORTS_FOLDER

    return folder / EXPORTS_FOLDER


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
