"""Publishing a family of variants: one repo folder per variant (weights, config, recipe, report, card
and the family's accuracy-vs-FLOPs and accuracy-vs-latency plots, plus the plots and data of analyses
run for that variant: its linear path from another model, the family's training-cost trade-off curves on
the base), validated, then pushed in one commit to the local hub or to a Hugging Face Hub. In a
distributed run (zoo.distributed) rank 0 alone writes and pushes; every rank gets what it wrote (paths,
revisions)."""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import ModelCard
from torch import nn

from zoo.atomic import atomic_write_text
from zoo.compress.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from zoo.data import describe_dataset
from zoo.distributed import main_decides
from zoo.entry import ModelEntry, path_slug
from zoo.errors import InvalidArgumentError
from zoo.evaluate import VariantReport, pareto_front
from zoo.tasks import MetricPlot, MetricSpec, task_named, task_of
from zoo.hub import LocalHub, upload
from zoo.locks import scratch_folder
from zoo.model_cards import (
    CardPlot, base_card, metric_spec, plot_accuracy_vs_flops, plot_accuracy_vs_latency, plot_metric_vs_metric,
    validate_card, variant_card, write_card,
)
from zoo.signing import SIGNATURE_FILE, sign_folder, signing_key_fingerprint
from zoo.store import REPORT_FILE, Store

PLOT_FILE = "accuracy_vs_flops.png"
LATENCY_PLOT_FILE = "accuracy_vs_latency.png"
RECIPE_FILE = "recipe.json"
LINEAR_PATH_GLOB = "linear_path_from_*.png"  # zoo.evaluate.linear_path.path_file_stem(...) + ".png"


@dataclass(frozen=True)
class AnalysisPlot:
    """A plot drawn already (`source`, a PNG; the data it shows beside it with a .json suffix, if any) that
    one card shows in its Analyses section, with its alt text."""

    source: Path
    alt: str

    @property
    def files(self) -> list[Path]:
        """The PNG and, where there is one, its data file: what travels with the card."""
        data = self.source.with_suffix(".json")
        return [self.source, *([data] if data.is_file() else [])]


def saved_analysis_plots(models: Sequence[nn.Module]) -> dict[str, list[AnalysisPlot]]:
    """The analysis plots saved beside each model's checkpoint (`model.zoo.path`), by variant name: linear
    paths to it (`zoo evaluate --path A B` writes them beside B) and trade-off curves (beside a base:
    `zoo.tradeoff.save_curves`)."""
    from zoo.model_cards.plot import TRADEOFF_PLOT_FILE

    found: dict[str, list[AnalysisPlot]] = {}
    for model in models:
        folder = Path(model.zoo.path)
        plots = [AnalysisPlot(p, f"training loss along the straight line from {p.stem[len('linear_path_from_'):]} "
                                 f"to {model.zoo.name}") for p in sorted(folder.glob(LINEAR_PATH_GLOB))]
        if (folder / TRADEOFF_PLOT_FILE).is_file():
            plots.append(AnalysisPlot(folder / TRADEOFF_PLOT_FILE, f"{model.zoo.name}: task metric vs training "
                                      "cost, one cyclic run against separate full-schedule runs"))
        if plots:
            found[model.zoo.name] = plots
    return found


@dataclass(frozen=True)
class FamilyCards:
    """The cards of a base model and its variants, with the family's Pareto fronts (indices into
    `reports`, best in the primary metric and minimizing sparse-aware FLOPs, resp. latency in each
    variant's fastest runtime), the base models of the same task it is compared with, and the task's
    metric-vs-metric plots."""

    reports: list[VariantReport]
    cards: dict[str, ModelCard]
    front: list[int]
    references: list[VariantReport]
    extra_plots: tuple[MetricPlot, ...]
    latency_front: list[int]
    analysis_plots: dict[str, list[AnalysisPlot]] = field(default_factory=dict)

    def copy_analysis_files(self, name: str, folder: Path) -> list[Path]:
        """The analysis plots (and their data) of card `name`, copied into `folder`."""
        copied = []
        for plot in self.analysis_plots.get(name, ()):
            for source in plot.files:
                shutil.copyfile(source, folder / source.name)
                copied.append(folder / source.name)
        return copied

    def draw_plots(self, folder: Path) -> list[Path]:
        """Every plot the cards show, drawn into `folder`."""
        task = task_named(self.reports[0].task)
        paths = [plot_accuracy_vs_flops(self.reports, folder / PLOT_FILE, metric=task.primary.key, pareto=self.front,
                                        references=self.references),
                 plot_accuracy_vs_latency(self.reports, folder / LATENCY_PLOT_FILE, metric=task.primary.key,
                                          pareto=self.latency_front, references=self.references)]
        for plot in self.extra_plots:
            paths.append(plot_metric_vs_metric(self.reports, folder / plot.filename, x=plot.x, y=plot.y,
                                               references=self.references))
        return paths


def quality_front(reports: Sequence[VariantReport], spec: MetricSpec) -> list[int]:
    """Indices of the reports on the Pareto front of `spec` (in its direction) against non-zero FLOPs."""
    sign = 1.0 if spec.higher_is_better else -1.0
    return pareto_front([(r.flops_sparse, sign * r.metrics[spec.key]) for r in reports])


def latency_front(reports: Sequence[VariantReport], spec: MetricSpec) -> list[int]:
    """Indices of the reports on the Pareto front of `spec` against latency in each one's fastest runtime."""
    sign = 1.0 if spec.higher_is_better else -1.0
    return pareto_front([(r.best_runtime[1], sign * r.metrics[spec.key]) for r in reports])


def family_cards(entry: ModelEntry, reports: Sequence[VariantReport], references: Sequence[VariantReport] = (),
                 analysis_plots: Mapping[str, Sequence[AnalysisPlot]] | None = None) -> FamilyCards:
    """Builds and validates a card per report; the report whose name is the entry's is the base card.
    The Pareto front is taken on the task's primary metric. `references` are the reports of the base
    models `entry.compare_with` names (see `zoo.catalog.reference_reports`); `analysis_plots` the plots
    each named card shows in its Analyses section (see `saved_analysis_plots`)."""
    reports = list(reports)
    task = task_of(entry)
    spec = task.primary
    metric = spec.key
    missing = [r.name for r in reports if metric not in r.metrics]
    if missing:
        raise InvalidArgumentError(f"no {metric} measured for {', '.join(missing)}: a card needs the task metric")
    base = next((r for r in reports if r.name == entry.name), None)
    if base is None:
        raise InvalidArgumentError(f"the family of {entry.name} needs the base model's own report")
    wanted, given = set(entry.compare_with), {r.name for r in references}
    if wanted != given:
        raise InvalidArgumentError(f"{entry.name} is compared with {sorted(wanted)}, not {sorted(given)}")
    analyses = {name: list(plots) for name, plots in (analysis_plots or {}).items()}
    strangers = sorted(set(analyses) - {r.name for r in reports})
    if strangers:
        raise InvalidArgumentError(f"analysis plots for models outside the family of {entry.name}: "
                                   f"{', '.join(strangers)}")
    for name, plots in analyses.items():
        missing = [str(p.source) for p in plots if p.source.suffix != ".png" or not p.source.is_file()]
        if missing:
            raise InvalidArgumentError(f"analysis plots of {name} are not PNG files here: {', '.join(missing)}")

    def own(name: str) -> list[CardPlot]:
        return [CardPlot(p.source.name, p.alt) for p in analyses.get(name, ())]
    plots = [CardPlot(p.filename, f"{metric_spec(p.y).name} vs {metric_spec(p.x).name} of the {entry.name} family")
             for p in task.extra_plots]
    common = dict(license=entry.license, dataset_description=describe_dataset(entry.eval_data.name),
                  example=task.describe_example(entry), about=entry.description, extra_plots=plots,
                  references=list(references))
    cards = {base.name: base_card(base, reports, plot_filename=PLOT_FILE, latency_plot_filename=LATENCY_PLOT_FILE,
                                  analysis_plots=own(base.name), **common)}
    for report in reports:
        if report is not base:
            cards[report.name] = variant_card(report, base_repo_id=entry.repo_id, family_reports=reports,
                                              plot_filename=PLOT_FILE, latency_plot_filename=LATENCY_PLOT_FILE,
                                              analysis_plots=own(report.name), **common)
    for report in reports:
        validate_card(cards[report.name], report)
    return FamilyCards(reports, cards, quality_front(reports, spec), list(references), task.extra_plots,
                       latency_front(reports, spec), analyses)


def cards_of_models(entry: ModelEntry, models: Sequence[nn.Module], store: Store, *,
                    progress: bool = False) -> FamilyCards:
    """`family_cards` of loaded models of `entry`'s family: their reports, the reports of the bases
    `entry.compare_with` names and the analysis plots saved beside each (`saved_analysis_plots`)."""
    from zoo.catalog import reference_reports

    return family_cards(entry, [m.zoo.report for m in models], reference_reports(entry, store, progress=progress),
                        analysis_plots=saved_analysis_plots(models))


def write_family_cards(family: FamilyCards, out_dir: Path) -> list[Path]:
    """`out_dir/<name>/README.md` and the family's plots beside each (the layout of model_cards/);
    written by rank 0 of a distributed run, the paths returned on every rank."""
    return main_decides(lambda: _write_family_cards(family, out_dir))


def _write_family_cards(family: FamilyCards, out_dir: Path) -> list[Path]:
    written = []
    drawn = Path(tempfile.mkdtemp())
    try:
        plots = family.draw_plots(drawn)
        for name, card in family.cards.items():
            folder = out_dir / path_slug(name)  # `hf-hub:org/name+os50` as one folder name
            written.append(write_card(card, folder))
            for plot in plots:
                shutil.copyfile(plot, folder / plot.name)
            family.copy_analysis_files(name, folder)
    finally:
        shutil.rmtree(drawn, ignore_errors=True)
    return written


def repo_folder(model: nn.Module, card: ModelCard, family: FamilyCards | None, folder: Path) -> Path:
    """Assembles what a variant's repo holds: the checkpoint files, recipe, report, card, the family's plots
    and its own analysis plots (with their data); with no family (a card of its own: a variant measured on
    the user's data), no plots."""
    source = model.zoo.path
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE, REPORT_FILE):
        if not (source / name).is_file():
            raise InvalidArgumentError(f"{model.zoo.name}: {source} has no {name}; only zoo checkpoints publish")
        shutil.copyfile(source / name, folder / name)
    if model.zoo.recipe is not None:
        atomic_write_text(folder / RECIPE_FILE, model.zoo.recipe.to_json() + "\n")
    write_card(card, folder)
    if family is not None:
        family.draw_plots(folder)
        family.copy_analysis_files(model.zoo.name, folder)
    return folder


def push_variant(model: nn.Module, card: ModelCard, family: FamilyCards | None, *, repo_id: str,
                 hub: LocalHub | None = None, endpoint: str | None = None, token: str | None = None,
                 private: bool = False, sign_key: Path | None = None, staging: LocalHub | None = None) -> str:
    """Pushes one variant in one commit: to `hub` (local) or, with `hub=None`, to the Hub at `endpoint`
    (a new repo there is created `private` or public). The card is validated against the measured report
    before anything is sent. With `sign_key` (a PEM elliptic-curve private key) the card names the key and
    the repo carries `model.sig`, its signature over every file (zoo.signing). The repo is assembled in a
    scratch folder under the local hub `staging` (default: `hub`, else the default local hub) that the next
    push sweeps should this one be killed. In a distributed run rank 0 pushes; every rank returns the
    revision."""
    if model.zoo.report is None:
        raise InvalidArgumentError(f"{model.zoo.name} has no measured report; only measured variants publish")
    validate_card(card, model.zoo.report)
    signer = signing_key_fingerprint(sign_key) if sign_key is not None else None  # a bad key: before any work
    scratch = (staging or hub or LocalHub()).staging_root
    return main_decides(lambda: _push(model, card, family, repo_id=repo_id, hub=hub, endpoint=endpoint, token=token,
                                      private=private, sign_key=sign_key, signer=signer, scratch=scratch))


def signed_card(card: ModelCard, signer: str) -> ModelCard:
    """The card with a Signature section naming the key that signs its repo (the section is signed too)."""
    return ModelCard(str(card).rstrip("\n") + f"""

## Signature

Signed with OpenSSF model-signing by the elliptic-curve key `{signer}`: `{SIGNATURE_FILE}` covers every file of
this repo, this card included. The zoo verifies it at load when that key is trusted
(`ZOO_TRUSTED_KEYS=public_key.pem`; `ZOO_REQUIRE_SIGNATURES=1` refuses unsigned repos).
""")


STAGING_PREFIX = "push-"


def _push(model: nn.Module, card: ModelCard, family: FamilyCards | None, *, repo_id: str, hub: LocalHub | None,
          endpoint: str | None, token: str | None, private: bool, sign_key: Path | None, signer: str | None,
          scratch: Path) -> str:
    with scratch_folder(scratch, STAGING_PREFIX) as tmp:
        folder = repo_folder(model, signed_card(card, signer) if signer else card, family, tmp / "repo")
        if sign_key is not None:
            sign_folder(folder, sign_key)
        message = f"zoo: {model.zoo.name} ({model.zoo.recipe.describe() if model.zoo.recipe else 'base model'})"
        if hub is not None:
            return hub.push(repo_id, folder, message=message)
        return upload(folder, repo_id, endpoint=endpoint, token=token, message=message, private=private)


PUSH_TARGETS = ("local", "hub")


@dataclass(frozen=True)
class PushResult:
    """What `push` did: the variant, the repo it went to, the revision (commit id) made there, and where that
    repo lives (the local hub's folder or the Hub endpoint's URL)."""

    name: str
    repo_id: str
    revision: str
    where: str


def push(name: str, repo_id: str | None = None, *, to: str = "local", endpoint: str | None = None,
         token: str | None = None, private: bool = False, sign_key: Path | str | None = None,
         store: Store | None = None) -> PushResult:
    """Publishes variant `name` (cached or published here already) with its card, its family's plots,
    recipe and report, in one commit: `to="local"` into the store's local hub, `to="hub"` to a Hugging Face
    Hub (`endpoint` or HF_ENDPOINT; `token` or HF_TOKEN / the stored login), as `repo_id` (default
    `zoo/<name>`; a team's org: `acme/r18-gmp90`). A variant made on the user's data (`..._d<hash>`) goes
    with its own card, measured on that data. `sign_key` (a PEM elliptic-curve private key) signs the repo
    and the card names the key (zoo.signing). The card is built from the measured report of exactly
    these weights and validated against it before anything is sent; nothing is measured or derived
    here: a variant that was never made raises InvalidArgumentError before anything is loaded."""
    from zoo.hub.remote import hub_url
    from zoo.variants import user_data_tag

    if to not in PUSH_TARGETS:
        raise InvalidArgumentError(f"to must be one of {', '.join(PUSH_TARGETS)}, got {to!r}")
    if to == "local" and (endpoint is not None or token is not None or private):
        raise InvalidArgumentError("endpoint, token and private apply to a push to a Hub (to='hub'), not to the local hub")
    store = store or Store()
    if user_data_tag(name) is not None:
        from zoo.userdata.card import user_data_card

        model, default_repo = _made_on_user_data(name, store)
        card, family = user_data_card(model), None
    else:
        model, card, family, default_repo = _made_in_family(name, store)
    target = repo_id or default_repo
    revision = push_variant(model, card, family, repo_id=target, hub=store.hub if to == "local" else None,
                            endpoint=endpoint, token=token, private=private, staging=store.hub,
                            sign_key=Path(sign_key) if sign_key is not None else None)
    return PushResult(model.zoo.name, target, revision, str(store.hub.root) if to == "local" else hub_url(endpoint))


def _never_made(name: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{name} is neither cached nor published here; make it first (zoo.load or `zoo compress`)")


def _made_in_family(name: str, store: Store) -> tuple[nn.Module, ModelCard, FamilyCards, str]:
    """The variant `name` names, loaded with its family (found, not made), its card among them and its
    default repo id."""
    from zoo.catalog import family_models
    from zoo.variants import resolve

    spec = resolve(name, store=store)
    if not (store.hub.has(spec.repo_id) or store.cached_entries(spec.name)):  # before loading its family
        raise _never_made(spec.name)
    models = family_models(spec.base.name, store)
    model = next((m for m in models if m.zoo.name == spec.name), None)
    if model is None:
        raise _never_made(spec.name)
    family = cards_of_models(spec.base, models, store)
    return model, family.cards[spec.name], family, spec.repo_id


def _made_on_user_data(name: str, store: Store) -> tuple[nn.Module, str]:
    """A variant made on the user's data, from the one cache folder of that name (its name says neither the
    data nor the base weights, so its config is what says how to rebuild it), and its default repo id."""
    from zoo.api import _from_checkpoint
    from zoo.compress.checkpoint import read_config
    from zoo.entry import is_hub_name
    from zoo.hub_ids import variant_repo_name
    from zoo.variants import resolve

    folders = store.cached_entries(name)
    if not folders:
        raise _never_made(name)
    if len(folders) > 1:
        raise InvalidArgumentError(f"{name} is cached {len(folders)} times (from other base weights or training "
                                   f"options): {', '.join(str(f) for f in folders)}; push the model itself from Python")
    base = resolve(read_config(folders[0])["base_model"], store=store).base
    model = _from_checkpoint(base, folders[0], source="cache")  # as measured on its data; never re-measured here
    return model, f"zoo/{variant_repo_name(name) if is_hub_name(base.name) else name}"


def report_table(reports: Sequence[VariantReport], front: Sequence[int] = ()) -> str:
    """A plain-text table of reports for the terminal (the task's primary metric first); Pareto-optimal
    rows are starred."""
    spec = task_named(reports[0].task).primary
    metric = spec.key
    header = (f"{'variant':<40} {metric:>7} {'MFLOPs':>9} {'nz MFLOPs':>10} {'nz params':>10} {'bytes':>10} "
              f"{'eager ms':>8} {'fastest ms (runtime)':>22}")
    lines = [header, "-" * len(header)]
    for i, r in enumerate(reports):
        value = (f"{100 * r.metrics[metric]:.2f}" if spec.unit == "fraction" else f"{r.metrics[metric]:.4g}") \
            if metric in r.metrics else "n/a"
        lines.append(
            f"{r.name:<40} {value:>7} {r.flops_dense / 1e6:>9.2f} {r.flops_sparse / 1e6:>10.2f} "
            f"{r.params_nonzero:>10,} {r.bytes_on_disk:>10,} {r.latency_ms:>8.2f} "
            f"{'{1:.2f} ({0})'.format(*r.best_runtime):>22}" + (" *" if i in front else "")
        )
    if front:
        lines.append("* on the accuracy-vs-FLOPs Pareto front")
    return "\n".join(lines)


def report_json(reports: Sequence[VariantReport]) -> str:
    return json.dumps([r.to_dict() for r in reports], indent=2)
