"""The `zoo` command line: list, info, train, compress, evaluate, card, push, pull, export and sweep.

Every ZooError becomes one line on stderr and exit status 1; anything else is a bug and shows a trace.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from zoo.errors import InvalidArgumentError, RecipeError, ZooError
from zoo.variants import DISTRIBUTIONS, METHODS

# torch logs a CUDA_HOME warning when some dependency imports its C++ extension helper: noise on a CLI.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ZooError as err:  # some messages quote multi-line text (a YAML parser's): one line here
            raise click.ClickException(f"{type(err).__name__}: {' '.join(str(err).split())}") from None
    return wrapper


def _store(hub: str | None, cache: str | None):
    from zoo.hub import LocalHub
    from zoo.store import Store, default_cache_root

    return Store(hub=LocalHub(Path(hub) if hub else None), cache_root=Path(cache) if cache else default_cache_root())


store_options = [
    click.option("--hub", "hub_root", envvar="ZOO_HUB", type=click.Path(file_okay=False), default=None,
                 help="Local hub folder [default: $ZOO_HUB or ~/.cache/zoo/hub]."),
    click.option("--cache", "cache_root", envvar="ZOO_CACHE", type=click.Path(file_okay=False), default=None,
                 help="Variant cache folder [default: $ZOO_CACHE or ~/.cache/zoo/variants]."),
]
variant_options = [
    click.option("--sparsity", type=float, default=0.0, show_default=True, help="Fraction of weights (channels, heads: of structures) pruned, in [0, 1)."),
    click.option("--quant", default=None, metavar="SCHEME",
                 help="Quantization: int8 (post-training), or low-bit w<bits>[a<bits>][g<group>][_asym][_ptq]"
                      "[_relu|_id][_bcgd], e.g. w8a8, w4, w4a8, w2a2_id, w4g32_ptq, wb_bcgd (b binary, t ternary "
                      "weights; QAT where the zoo can fine-tune, else post-training)."),
    click.option("--distill", is_flag=True, default=False,
                 help="Fine-tuning steps distill from the dense base (logits KL at temperature 4)."),
    click.option("--method", type=click.Choice(METHODS), default=None,
                 help="Pruning method: gmp, oneshot, structured (channels: CNN filters; heads: attention "
                      "heads and FFN neurons), ES masks (es), or sparse training from scratch (rigl, set, "
                      "static) [default: gmp where the zoo can fine-tune, else oneshot]."),
    click.option("--nm", default=None, metavar="N:M",
                 help="N:M sparsity (e.g. 2:4) with --method gmp, oneshot, rigl, set or static (its sparsity is 1 - N/M)."),
    click.option("--distribution", type=click.Choice(DISTRIBUTIONS), default=None,
                 help="Sparse training (rigl, set, static): how the sparsity spreads over layers [default: erk]."),
    click.option("--budget", type=click.IntRange(min=1), default=None,
                 help="Sparse training: training steps in multiples of the base's [default: 1]."),
    click.option("--snap", type=click.Choice(["1", "2"]), default=None,
                 help="Then train the GRU's recurrent matrix online by SnAp-1 or SnAp-2 (WaveRNN)."),
    click.option("--recipe", "recipe_file", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="A recipe file (JSON or YAML) instead of the default recipe."),
]

data_options = [
    click.option("--train-data", default=None, metavar="PATH|hf-hub:ID",
                 help="Fine-tune (and calibrate) on this data instead of the entry's: an ImageNet-style folder, a "
                      "csv / json / parquet file or folder, a datasets imagefolder, or hf-hub:ORG/NAME."),
    click.option("--eval-data", default=None, metavar="PATH|hf-hub:ID", help="Measure on this data (as --train-data)."),
    click.option("--data-format", type=click.Choice(["auto", "folder", "csv", "json", "parquet", "imagefolder", "hub"]),
                 default="auto", show_default=True, help="How to read --train-data and --eval-data."),
    click.option("--image-column", default=None, help="The images' column [default: image]."),
    click.option("--text-column", default=None, help="The text's column [default: text]."),
    click.option("--label-column", default="label", show_default=True, help="The labels' column."),
    click.option("--train-split", default=None, help="datasets split of --train-data [default: train]."),
    click.option("--eval-split", default=None, help="datasets split of --eval-data [default: train, a local file's "
                                                    "only split; e.g. 'train[80%:]']."),
]
finetune_options = [
    click.option("--finetune-epochs", type=click.IntRange(min=1), default=None,
                 help="Fine-tuning epochs on --train-data [default: the entry's or its task's]."),
    click.option("--lr", type=float, default=None, help="Fine-tuning learning rate on --train-data."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Fine-tuning batch size on --train-data."),
]

USER_DATA_OPTIONS = ("train_data", "eval_data", "data_format", "image_column", "text_column", "label_column",
                     "train_split", "eval_split", "finetune_epochs", "lr", "batch_size")  # the two lists' values


def _user_data(data: dict) -> dict:
    """The data options' values as `zoo.load`'s train_data / eval_data / finetuning."""
    from zoo.userdata import FineTuning, UserData

    columns = {"format": data["data_format"], "image_column": data["image_column"],
               "text_column": data["text_column"], "label_column": data["label_column"]}
    out = {}
    for role in ("train", "eval"):
        source, split = data[f"{role}_data"], data[f"{role}_split"]
        if source is None and split is not None:
            raise InvalidArgumentError(f"--{role}-split names a split of --{role}-data: give --{role}-data")
        out[f"{role}_data"] = UserData(source, split=split, **columns) if source is not None else None
    tuning = {"epochs": data.get("finetune_epochs"), "lr": data.get("lr"), "batch_size": data.get("batch_size")}
    tuning = {k: v for k, v in tuning.items() if v is not None}
    out["finetuning"] = FineTuning(**tuning) if tuning else None
    return out


def _apply(options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def _read_recipe(path: str | None):
    if path is None:
        return None
    from zoo.compress import Recipe
    from zoo.parsing import MAX_BYTES

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)  # the parser refuses what is longer, without reading it all
    except OSError as err:
        raise RecipeError(f"cannot read the recipe file {path}: {err.strerror or err}") from None
    return Recipe.from_yaml(raw) if path.endswith((".yaml", ".yml")) else Recipe.from_json(raw)


def _load(name, variant: dict, hub_root, cache_root, progress=True, user: dict | None = None):
    """`zoo.load` of NAME compressed as `variant_options` say (`variant`: their values; {} for NAME as it is),
    on the user's data `user` (`_user_data`'s) where given."""
    import dataclasses

    import zoo

    user = user or {}
    store = _store(hub_root, cache_root)
    if user.get("eval_data") is not None and not any(user.get(k) for k in ("train_data", "finetuning")) \
            and not any(variant.values()):  # the model as it is, measured on the user's data
        from zoo.api import measured_on

        model = _load(name, {}, hub_root, cache_root, progress)
        return measured_on(model, user["eval_data"], store.options, progress=progress)
    spec = zoo.resolve(name, sparsity=variant.get("sparsity") or 0.0, quant=variant.get("quant"),
                       method=variant.get("method"), recipe=_read_recipe(variant.get("recipe_file")), store=store,
                       **user)
    shape = {"nm": _nm(variant["nm"]) if variant.get("nm") else None, "distribution": variant.get("distribution"),
             "budget": variant.get("budget"), "snap": int(variant["snap"]) if variant.get("snap") else None,
             "distill": True if variant.get("distill") else None}
    shape = {key: value for key, value in shape.items() if value is not None}
    if shape:
        spec = dataclasses.replace(spec, **shape)  # validated again: a bad combination is refused by name
    return zoo.load(spec, store=store, progress=progress)


def _nm(text: str) -> tuple[int, int]:
    n, sep, m = text.partition(":")
    if not (sep and n.isdigit() and m.isdigit()):
        raise InvalidArgumentError(f"--nm takes N:M, e.g. 2:4; got {text!r}")
    return int(n), int(m)


@click.group()
@click.version_option(package_name="the-zoo")
@click.pass_context
@_one_line_errors
def main(ctx: click.Context) -> None:
    """A compression-aware model zoo: dense, sparse and quantized checkpoints, measured and carded.

    What is trained or derived here follows each entry's own recipe unless $ZOO_TRAIN_OPTIONS says
    otherwise (e.g. epochs=1,finetune_epochs=1,latency_seconds=0.05); what such options make is cached
    apart. Under torchrun every command trains data-parallel on the processes it launched (rank 0
    alone writes, measures and publishes)."""
    if os.environ.get("WORLD_SIZE", "1") != "1":  # launched by torchrun (torch is imported only then)
        from zoo.distributed import close, init_from_environment

        if init_from_environment()[1] > 1:
            ctx.call_on_close(close)


@main.command("list")
@click.option("--family", default=None, help="resnet, mobilenet, efficientnet...")
@click.option("--task", default=None, help="image-classification...")
@click.option("--source", type=click.Choice(["upstream", "zoo", "timm"]), default=None,
              help="zoo: zoo-native models; timm: timm's ~1,800 pretrained checkpoints (left out of the default "
                   "listing); upstream: both timm's and any other upstream entries.")
@click.option("--filter", "name_filter", default=None, metavar="PATTERN",
              help="Shell-style wildcard over names, as timm.list_models takes: 'resnet*', '*_in1k'.")
@click.option("--sparsity", type=float, default=None, help="Only variants at this sparsity.")
@click.option("--quant", default=None, metavar="SCHEME",
              help="Only variants quantized by SCHEME (int8, w4a8, ...), or 'none' for the unquantized.")
@_apply(store_options)
@_one_line_errors
def list_cmd(family, task, source, name_filter, sparsity, quant, hub_root, cache_root):
    """Registered models and the variants published in the local hub or cached; with --source timm (or
    upstream) timm's catalog of pretrained checkpoints, every one a zoo name."""
    from zoo.catalog import catalog

    rows = catalog(_store(hub_root, cache_root), family=family, task=task, source=source, sparsity=sparsity,
                   quant=quant, filter=name_filter)
    click.echo(f"{'name':<44} {'family':<13} {'source':<9} {'sparsity':>8} {'quant':<8} where")
    for row in rows:
        click.echo(f"{row.name:<44} {row.family:<13} {row.source:<9} {row.sparsity:>8.2f} "
                   f"{row.quant or '-':<8} {row.where}")


@main.command()
@click.argument("name")
@_apply(store_options)
@_one_line_errors
def info(name, hub_root, cache_root):
    """What the zoo knows of NAME (a base `arch.tag`, a variant name, or a Hub id `hf-hub:org/name`, read
    from the local hub, the Hugging Face cache or the Hub)."""
    import zoo

    store = _store(hub_root, cache_root) if "/" in name else None  # only a Hub id reads a hub
    click.echo(json.dumps(zoo.info(name, store=store), indent=2, default=str))


@main.command()
@click.argument("name")
@click.option("--cards", "cards_dir", type=click.Path(file_okay=False), default=None,
              help="With --eval-data: also write the card measured on it to CARDS/<variant>/README.md.")
@_apply(variant_options + data_options + finetune_options + store_options)
@_one_line_errors
def compress(name, cards_dir, hub_root, cache_root, **variant):
    """Derive (or load if cached/published) a compressed variant of NAME and print its measurements.

    With --train-data the fine-tuning methods (gmp, QAT...) fine-tune on it, even an upstream checkpoint's;
    with --eval-data it is measured on it (the variant is named ..._d<hash> and cached apart)."""
    from zoo.publish import report_table

    user = _user_data({k: variant.pop(k) for k in USER_DATA_OPTIONS})
    model = _load(name, variant, hub_root, cache_root, user=user)
    click.echo(f"{model.zoo.name}: {model.zoo.source} at {model.zoo.path}")
    if model.zoo.report is not None:
        click.echo(report_table([model.zoo.report]))
        if model.zoo.report.user_data is not None:
            click.echo(f"measured on {model.zoo.report.user_data['description']}, "
                       f"{model.zoo.report.user_data['examples']} examples")
    if cards_dir is not None:
        if model.zoo.report is None or model.zoo.report.user_data is None:
            raise InvalidArgumentError("--cards writes the card measured on --eval-data; `zoo card BASE` writes the "
                                       "family's cards")
        from zoo.userdata.card import write_user_data_card

        click.echo(f"card: {write_user_data_card(model, Path(cards_dir))}")



@main.command()
@click.argument("name")
@click.option("--publish", is_flag=True, help="Also push the trained base (with its card) to the local hub.")
@_apply(store_options)
@_one_line_errors
def train(name, publish, hub_root, cache_root):
    """Train the zoo-native base NAME by its registered recipe (seeded, reproducible), cache it, measure it.

    A no-op when it is already cached or published; `zoo.load(NAME)` does the same on first use."""
    import zoo
    from zoo.publish import cards_of_models, push_variant, report_table

    store = _store(hub_root, cache_root)
    spec = zoo.resolve(name)
    if not spec.is_base or spec.base.train is None:
        raise InvalidArgumentError(f"{name!r} is not a zoo-native base model; `zoo train` trains those")
    model = zoo.load(spec, store=store)
    click.echo(f"{model.zoo.name}: {model.zoo.source} at {model.zoo.path}")
    click.echo(report_table([model.zoo.report]))
    if publish:
        family = cards_of_models(spec.base, [model], store)
        revision = push_variant(model, family.cards[spec.name], family, repo_id=spec.repo_id, hub=store.hub)
        click.echo(f"published {spec.name} -> {store.hub.root} @ {revision[:12]}")


@main.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the full reports (with --path: the path) as JSON.")
@click.option("--path", "path_names", nargs=2, default=None, metavar="A B",
              help="Instead: the training loss along the straight line (1-a) A + a B between two models of one "
                   "architecture (Evci et al. 2019), saved with its plot beside B (B's card shows it).")
@click.option("--points", type=int, default=21, show_default=True, help="With --path: alphas evaluated.")
@click.option("--span", nargs=2, type=float, default=(0.0, 1.0), show_default=True, metavar="START END",
              help="With --path: the alphas' range; it must contain [0, 1] (e.g. -0.2 1.2).")
@click.option("--no-metric", is_flag=True, help="With --path: the loss only, not the task metric at each point.")
@click.option("--tradeoff", "tradeoff", nargs=3, type=int, default=None, metavar="T0 M CYCLES",
              help="Instead, for one zoo-native base NAME: the one-run trade-off curve (a cyclic schedule, cycles "
                   "of T0, T0*M, ... epochs, evaluated at each trough; Portes et al. 2022) beside standard runs "
                   "of the same budgets, saved with its plot beside the base (its family card shows it).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="With --path: where to write the path and its plot [default: beside B in the variant cache; "
                   "required when B comes from the hub, whose snapshots are not written to]; with --tradeoff "
                   "likewise, beside the base.")
@click.option("--eval-data", default=None, metavar="PATH|hf-hub:ID",
              help="Measure on this data instead of each model's own (an ImageNet-style folder, a csv / json / "
                   "parquet file, a datasets imagefolder, or hf-hub:ORG/NAME); nothing is cached.")
@click.option("--data-format", default="auto", show_default=True,
              type=click.Choice(["auto", "folder", "csv", "json", "parquet", "imagefolder", "hub"]))
@click.option("--image-column", default=None, help="With --eval-data: the images' column [default: image].")
@click.option("--text-column", default=None, help="With --eval-data: the text's column [default: text].")
@click.option("--label-column", default="label", show_default=True, help="With --eval-data: the labels' column.")
@click.option("--eval-split", default=None, help="With --eval-data: its datasets split [default: train].")
@_apply(store_options)
@_one_line_errors
def evaluate(names, as_json, path_names, points, span, no_metric, tradeoff, out_dir, hub_root, cache_root,
             eval_data, data_format, image_column, text_column, label_column, eval_split):
    """Measure variants (top-1/top-5, FLOPs, non-zero params, bytes, latency) and mark the Pareto front.

    NAMES are base or variant names, e.g. resnet18.zoo_digits resnet18.zoo_digits_gmp90. With --path A B,
    no NAMES: the linear-path analysis instead."""
    import zoo.tasks
    from zoo.evaluation import measure_variant
    from zoo.publish import quality_front, report_json, report_table

    if tradeoff is not None:
        if path_names is not None or len(names) != 1:
            raise InvalidArgumentError("--tradeoff T0 M CYCLES takes exactly one base name and no --path")
        _tradeoff(names[0], *tradeoff, out_dir=out_dir, hub_root=hub_root, cache_root=cache_root)
        return
    if path_names is not None:
        if names:
            raise InvalidArgumentError(f"--path A B takes no other names; got {' '.join(names)}")
        _linear_path(*path_names, points=points, span=span, metric=not no_metric, out_dir=out_dir,
                     as_json=as_json, hub_root=hub_root, cache_root=cache_root)
        return
    if not names:
        raise InvalidArgumentError("name the models to evaluate (or give --path A B)")
    store = _store(hub_root, cache_root)
    user = _user_data({"train_data": None, "train_split": None, "eval_data": eval_data, "eval_split": eval_split,
                       "data_format": data_format, "image_column": image_column, "text_column": text_column,
                       "label_column": label_column})["eval_data"]
    reports = []
    for name in names:
        model = _load(name, {}, hub_root, cache_root)
        if user is not None:  # measured on the user's data, printed, not cached: the model's report stays
            from zoo.api import measured_on

            reports.append(measured_on(model, user, store.options).zoo.report)
            continue
        reports.append(measure_variant(model, _entry(model.zoo.base_model), name=model.zoo.name,
                                       checkpoint_dir=model.zoo.path, sparsity=model.zoo.sparsity,
                                       quant=model.zoo.quant, recipe=model.zoo.recipe,
                                       latency_seconds=store.options.latency_seconds,
                                       graph_runtimes=store.options.measured_runtimes))
    if as_json:
        click.echo(report_json(reports))
        return
    spec = zoo.tasks.task_named(reports[0].task).primary
    measured = [i for i, r in enumerate(reports) if spec.key in r.metrics]
    front = [measured[i] for i in quality_front([reports[i] for i in measured], spec)] if measured else []
    click.echo(report_table(reports, front))
    if user is not None:
        click.echo(f"measured on {reports[0].user_data['description']}, {reports[0].user_data['examples']} examples")


def _linear_path(name_a, name_b, *, points, span, metric, out_dir, as_json, hub_root, cache_root) -> None:
    from zoo.evaluate.linear_path import measure_linear_path, path_file_stem
    from zoo.model_cards.plot import plot_linear_path

    model_a = _load(name_a, {}, hub_root, cache_root, progress=False)
    model_b = _load(name_b, {}, hub_root, cache_root, progress=False)
    if out_dir is None and model_b.zoo.source not in ("cache", "derived", "trained"):
        raise InvalidArgumentError(f"{model_b.zoo.name} comes from the {model_b.zoo.source} ({model_b.zoo.path}), "
                                   "which is not written to: give --out")
    path = measure_linear_path(model_a, model_b, points=points, span=tuple(span), metric=metric)
    folder = Path(out_dir) if out_dir is not None else Path(model_b.zoo.path)
    folder.mkdir(parents=True, exist_ok=True)
    stem = path_file_stem(model_a.zoo.name)
    saved = [path.save(folder / f"{stem}.json"), plot_linear_path(path, folder / f"{stem}.png")]
    if as_json:
        click.echo(json.dumps(path.to_dict(), indent=2))
        return
    keys = list(path.metrics[0]) if path.metrics else []
    click.echo(f"linear path {path.model_a} (alpha 0) -> {path.model_b} (alpha 1); loss on {path.loss_data}; "
               + (f"BatchNorm statistics recomputed on {path.bn_data}" if path.bn_recomputed else "no BatchNorm"))
    click.echo(f"{'alpha':>7} {'loss':>9}" + "".join(f" {key:>12}" for key in keys))
    for i, alpha in enumerate(path.alphas):
        click.echo(f"{alpha:>7.3f} {path.loss[i]:>9.4f}" + "".join(f" {path.metrics[i][k]:>12.4g}" for k in keys))
    click.echo(f"barrier on [0, 1]: {path.barrier:.4f} (highest loss above the chord between the endpoints)")
    for file in saved:
        click.echo(f"wrote {file}")


def _tradeoff(name: str, t0: int, t_mult: int, cycles: int, *, out_dir, hub_root, cache_root) -> None:
    from zoo.tradeoff import cycle_epochs, one_run_curve, save_curves, standard_curve

    spec = _spec(name)
    if not spec.is_base:
        raise InvalidArgumentError(f"{name} is a variant: the trade-off curves train a base from scratch; name its base")
    budgets = cycle_epochs(t0, t_mult, cycles)  # validates the cycle settings before any training
    if out_dir is None:
        base = _load(name, {}, hub_root, cache_root, progress=False)
        if base.zoo.source not in ("cache", "derived", "trained"):
            raise InvalidArgumentError(f"{name} comes from the {base.zoo.source} ({base.zoo.path}), which is not "
                                       "written to: give --out")
        out_dir = base.zoo.path
    cyclic = one_run_curve(spec.base, t0, t_mult, cycles)
    standard = standard_curve(spec.base, budgets)
    key = cyclic.metric
    click.echo(f"{'epochs':>7} {'standard ' + key:>16} {'cyclic ' + key:>14}")
    for a, b in zip(standard.points, cyclic.points):
        click.echo(f"{a.epochs:>7} {a.metrics[key]:>16.4g} {b.metrics[key]:>14.4g}")
    click.echo(f"one cyclic run of {cyclic.total_epochs} epochs; the standard curve took {standard.total_epochs}")
    for file in save_curves(cyclic, standard, out_dir):
        click.echo(f"wrote {file}")


def _entry(name: str, store=None):
    import zoo

    return zoo.resolve(name, store=store).base


@main.command()
@click.argument("base")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="model_cards", show_default=True)
@_apply(store_options)
@_one_line_errors
def card(base, out_dir, hub_root, cache_root):
    """Write the cards (README.md + accuracy-vs-FLOPs plot) of BASE and every variant of it available."""
    from zoo.catalog import family_models
    from zoo.publish import cards_of_models, write_family_cards

    store = _store(hub_root, cache_root)
    models = family_models(base, store)
    family = cards_of_models(_entry(base, store), models, store)
    for path in write_family_cards(family, Path(out_dir)):
        click.echo(path)


@main.command()
@click.argument("name")
@click.option("--to", "target", type=click.Choice(["local", "hf"]), default="local", show_default=True,
              help="local: the local hub; hf: a Hugging Face Hub (HF_ENDPOINT / --endpoint, HF_TOKEN / --token).")
@click.option("--repo-id", default=None, help="Target repo, e.g. a team's acme/r18-gmp90 [default: zoo/<name>].")
@click.option("--endpoint", default=None, help="Hub endpoint URL [default: HF_ENDPOINT or huggingface.co].")
@click.option("--token", default=None, envvar="HF_TOKEN", help="Hub token [default: HF_TOKEN].")
@click.option("--private", is_flag=True, help="With --to hf: create the repo private.")
@click.option("--sign-key", type=click.Path(dir_okay=False), envvar="ZOO_SIGNING_KEY", default=None,
              help="Sign the repo with this PEM elliptic-curve private key (model.sig; the card names the key) "
                   "[default: ZOO_SIGNING_KEY, unsigned].")
@_apply(store_options)
@_one_line_errors
def push(name, target, repo_id, endpoint, token, private, sign_key, hub_root, cache_root):
    """Publish variant NAME (with its card, validated against its measured report, and its family's plots)
    in one commit."""
    from zoo.publish import push as push_variant

    if target == "local" and (endpoint or private):
        raise InvalidArgumentError("--endpoint and --private apply to --to hf")
    result = push_variant(name, repo_id, to="hub" if target == "hf" else "local", endpoint=endpoint,
                          token=token if target == "hf" else None, private=private, sign_key=sign_key,
                          store=_store(hub_root, cache_root))
    click.echo(f"pushed {result.name} to {result.repo_id} ({target}) at {result.revision}")


def _spec(name: str):
    import zoo

    return zoo.resolve(name)


@main.command()
@click.argument("repo_id")
@click.option("--revision", default="main", show_default=True)
@click.option("--endpoint", default=None, help="Hub endpoint URL [default: HF_ENDPOINT or huggingface.co].")
@click.option("--token", default=None, envvar="HF_TOKEN")
@_apply(store_options)
@_one_line_errors
def pull(repo_id, revision, endpoint, token, hub_root, cache_root):
    """Download REPO_ID from a Hub into the local hub (then `zoo.load` finds it offline)."""
    from zoo.hub import pull as pull_repo

    store = _store(hub_root, cache_root)
    local_revision = pull_repo(repo_id, store.hub, revision=revision, endpoint=endpoint, token=token)
    click.echo(f"pulled {repo_id}@{revision} into {store.hub.root} as {local_revision}")


@main.command()
@click.argument("name")
@click.option("--out", "out_file", type=click.Path(), required=True)
@click.option("--format", "fmt", type=click.Choice(["dense", "onnx", "openvino", "compressed-tensors"]), default="dense",
              show_default=True,
              help="dense: a safetensors state dict timm loads; onnx: an ONNX graph (int8 variants as QDQ); "
                   "openvino: OpenVINO IR (OUT is the .xml, its .bin beside it); compressed-tensors: a folder "
                   "transformers loads (transformers-repo models; OUT is the folder).")
@_apply(variant_options + store_options)
@_one_line_errors
def export(name, out_file, fmt, hub_root, cache_root, **variant):
    """Write a variant as a plain dense safetensors state dict that timm loads unchanged, as an ONNX
    or OpenVINO graph (cached beside the variant, then copied to OUT), or, for a model of a transformers
    repo, as a compressed-tensors folder that transformers' from_pretrained loads."""
    from zoo.atomic import atomic_write_json
    from zoo.compress.checkpoint import export_dense, read_config

    if fmt == "compressed-tensors":
        _export_compressed_tensors(name, variant, Path(out_file), hub_root, cache_root)
        return
    model = _load(name, variant, hub_root, cache_root)
    if fmt != "dense":
        _export_graph(model, fmt, Path(out_file), hub_root, cache_root)
        return
    path = export_dense(model.zoo.path, out_file)
    difference = model.zoo.report.dense_export if model.zoo.report is not None else None
    if difference is not None:
        click.echo(f"the dense file holds the dequantized weights without input quantization: its outputs differ "
                   f"from the quantized model's by at most {difference.max_abs:.3g} ({100 * difference.relative_rms:.3g} % "
                   f"relative RMS) on {difference.inputs}")
    entry = _entry(model.zoo.base_model)
    architecture = read_config(model.zoo.path).get("architecture")
    if architecture is None:
        click.echo(f"wrote {path}; load it with timm.create_model({entry.arch!r}, pretrained=True, "
                   f"pretrained_cfg_overlay=dict(file={str(path)!r}, num_classes={entry.num_classes}), "
                   f"**{entry.model_kwargs!r})")
        return
    described = atomic_write_json(path.with_suffix(".architecture.json"), architecture)
    how = ("timm.models._prune.adapt_model_from_string(model, architecture['timm_pruned'])"
           if "timm_pruned" in architecture else "zoo.compress.structured.rebuild_architecture(model, architecture)")
    click.echo(f"wrote {path} and its structurally pruned architecture {described}: build the base architecture "
               f"({entry.arch}, {entry.model_kwargs!r}), narrow it with {how}, then load_state_dict the weights")


def _export_compressed_tensors(name: str, variant: dict, out: Path, hub_root, cache_root) -> None:
    from zoo.compress.compressed_tensors import CompressedTensorsExportError, export_compressed_tensors

    entry = _entry(name)
    if entry.family != "transformers":  # refused before anything is loaded or derived
        raise CompressedTensorsExportError(f"{entry.name} is not a transformers-repo model (family {entry.family!r}); "
                                           "the compressed-tensors export writes transformers checkpoints")
    model = _load(name, variant, hub_root, cache_root)
    export_compressed_tensors(model, entry, out)
    click.echo(f"wrote {out}; load it with transformers.AutoModelForSequenceClassification.from_pretrained({str(out)!r}) "
               "(the compressed-tensors package installed)")


def _export_graph(model, fmt: str, out: Path, hub_root, cache_root) -> None:
    from zoo.atomic import atomic_path
    from zoo.runtimes.load import export_model

    source = export_model(model, fmt, _store(hub_root, cache_root).cache_root)
    suffixes = (".onnx",) if fmt == "onnx" else (".bin", ".xml")  # IR: the .xml last, once its .bin is there
    for suffix in suffixes:
        target = out.with_suffix(suffix) if fmt == "openvino" else out
        with atomic_path(target) as tmp:
            tmp.write_bytes(source.with_suffix(suffix).read_bytes())
    runtime = "onnxruntime" if fmt == "onnx" else "openvino"
    click.echo(f"wrote {out.with_suffix('.xml') if fmt == 'openvino' else out}; or run it through the zoo with "
               f"zoo.load({model.zoo.name!r}, runtime={runtime!r})")


@main.command()
@click.argument("base", default="resnet18.zoo_digits")
@click.option("--sparsity", "sparsities", type=float, multiple=True, help="Repeatable [default: 0.5 0.8 0.9 0.95 0.98].")
@click.option("--oneshot", "oneshot", type=float, multiple=True, help="One-shot sparsities [default: 0.9].")
@click.option("--no-oneshot", is_flag=True, help="Skip the one-shot variants.")
@click.option("--structured", "structured", type=float, multiple=True,
              help="Fractions of channels (CNNs) or heads and FFN neurons (transformers) removed [default: 0.5].")
@click.option("--no-structured", is_flag=True, help="Skip the structured pruning variants.")
@click.option("--int8-sparsity", "int8_sparsities", type=float, multiple=True,
              help="Sparsities also quantized to int8 [default: 0.9].")
@click.option("--no-int8", is_flag=True, help="Skip the int8 variants.")
@click.option("--low-bit", "low_bit", multiple=True, metavar="SCHEME",
              help="Low-bit schemes of the dense base, repeatable [default: w8a8 w4 w2: QAT where the base trains, "
                   "else post-training].")
@click.option("--no-low-bit", is_flag=True, help="Skip the low-bit variants.")
@click.option("--cards", "cards_dir", type=click.Path(file_okay=False), default=None,
              help="Also write the cards here (the README's main job: out/model_cards, not tracked; "
                   "model_cards/ holds the committed reference cards).")
@click.option("--no-publish", is_flag=True, help="Do not push to the local hub.")
@_apply(store_options)
@_one_line_errors
def sweep(base, sparsities, oneshot, no_oneshot, structured, no_structured, int8_sparsities, no_int8, low_bit,
          no_low_bit, cards_dir, no_publish, hub_root, cache_root):
    """The main job: derive the 50/80/90/95/98% sparse, the structured (50 % of the channels or heads) and
    the int8 and low-bit (w8a8, w4, w2) variants of BASE, measure them, write their cards with the accuracy-vs-FLOPs and
    accuracy-vs-latency plots and publish them to the local hub."""
    from zoo.publish import report_table
    from zoo.sweep import DEFAULT_LOW_BIT, DEFAULT_SPARSITIES, DEFAULT_STRUCTURED, SweepPlan, run_sweep

    for flag, values, negated, name in ((no_oneshot, oneshot, "oneshot", "oneshot"),
                                        (no_structured, structured, "structured", "structured"),
                                        (no_int8, int8_sparsities, "int8", "int8-sparsity"),
                                        (no_low_bit, low_bit, "low-bit", "low-bit")):
        if flag and values:
            raise InvalidArgumentError(f"--no-{negated} and --{name} contradict each other; give one")
    plan = SweepPlan(base=base, sparsities=tuple(sparsities) or DEFAULT_SPARSITIES,
                     oneshot=() if no_oneshot else tuple(oneshot) or (0.9,),
                     structured=() if no_structured else tuple(structured) or DEFAULT_STRUCTURED, int8=not no_int8,
                     int8_sparsities=tuple(int8_sparsities) or (0.9,),
                     low_bit=() if no_low_bit else tuple(low_bit) or DEFAULT_LOW_BIT)
    store = _store(hub_root, cache_root)
    result = run_sweep(plan, store=store, cards_dir=Path(cards_dir) if cards_dir else None, publish=not no_publish)
    click.echo(report_table(result.family.reports, result.family.front))
    for name, revision in result.revisions.items():
        click.echo(f"published {name} -> {store.hub.root} @ {revision[:12]}")
    for path in result.cards_written:
        click.echo(f"card: {path}")


if __name__ == "__main__":
    sys.exit(main())
