"""The plots of a model family: the task metric against non-zero FLOPs (and, where the task asks,
one metric against another), one labelled point per variant, marker by kind, the models it is compared
with as grey crosses, and the Pareto front as a step line; and the analyses' plots: the loss along the
linear path between two checkpoints, and training-cost trade-off curves. Drawn on an Agg canvas without pyplot (no
display, no global state)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from zoo.atomic import atomic_path
from zoo.errors import InvalidArgumentError
from zoo.evaluate.report import VariantReport
from zoo.model_cards.card import metric_spec, short_label, variant_kind

if TYPE_CHECKING:
    from zoo.evaluate.linear_path import LinearPath
    from zoo.tradeoff import TradeoffCurve

MARKERS = {"dense": "o", "sparse": "^", "quantized": "s", "sparse + quantized": "D", "structured": "P",
           "structured + quantized": "X"}
COLORS = {"dense": "tab:blue", "sparse": "tab:orange", "quantized": "tab:green", "sparse + quantized": "tab:red",
          "structured": "tab:purple", "structured + quantized": "tab:brown"}
LATENCY = "latency"  # the x axis key of the accuracy-vs-latency plot (not a metric)
LOG_SPAN = 10.0  # use a log x axis when the largest FLOPs count is at least this many times the smallest


def _front(points: Sequence[tuple[float, float]], pareto: Sequence[int] | None) -> list[int]:
    if pareto is None:
        from zoo.evaluate.pareto import pareto_front  # lazily: only needed when no front is given

        pareto = pareto_front(points)
    front = [int(i) for i in pareto]
    bad = [i for i in front if not 0 <= i < len(points)]
    if bad:
        raise InvalidArgumentError(f"Pareto indices {bad} out of range for {len(points)} reports")
    return sorted(set(front), key=lambda i: points[i])


def _minor_log_label(value: float, _position: int) -> str:
    """Label the 2x and 5x minor ticks of a log axis, so spans under two decades still read."""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if leading in (2, 5) else ""


def _label_offsets(xs: Sequence[float], ys: Sequence[float], log_x: bool) -> list[tuple[float, float]]:
    """Offsets (points) of the annotations: labels of points that nearly coincide are stacked
    downwards instead of printed on top of each other (an int8 variant shares its FLOPs with dense)."""
    tx = [math.log10(x) if log_x else x for x in xs]
    x_span = (max(tx) - min(tx)) or 1.0
    y_span = (max(ys) - min(ys)) or 1.0
    offsets: list[tuple[float, float]] = []
    placed: list[int] = []
    for i in range(len(xs)):
        near = sum(1 for j in placed
                   if abs(tx[i] - tx[j]) < 0.04 * x_span and abs(ys[i] - ys[j]) < 0.04 * y_span)
        offsets.append((6.0, 4.0 - 11.0 * near))
        placed.append(i)
    return offsets


@dataclass(frozen=True)
class _Axis:
    """Values and label of one axis: a metric (shown in % if a fraction) or non-zero MFLOPs."""

    values: list[float]
    label: str
    higher_is_better: bool

    @staticmethod
    def of(reports: Sequence[VariantReport], key: str | None) -> _Axis:
        if key is None:
            return _Axis([r.flops_sparse / 1e6 for r in reports], "non-zero MFLOPs per example", False)
        if key == LATENCY:
            return _Axis([r.best_runtime[1] for r in reports], "latency at batch 1, fastest runtime measured (ms)",
                         False)
        spec = metric_spec(key)
        missing = [r.name for r in reports if key not in r.metrics]
        if missing:
            raise InvalidArgumentError(f"metric {key!r} missing from reports: {', '.join(missing)}")
        scale = 100.0 if spec.unit == "fraction" else 1.0
        unit = "%" if spec.unit == "fraction" else spec.unit
        average = reports[0].metric_average
        direction = "" if spec.higher_is_better else ", lower is better"
        label = f"{spec.name} ({unit + ', ' if unit else ''}average={average}{direction})"
        return _Axis([scale * float(r.metrics[key]) for r in reports], label, spec.higher_is_better)


def plot_accuracy_vs_flops(reports: Sequence[VariantReport], path: str | Path, *, metric: str = "top1",
                           pareto: list[int] | None = None, title: str | None = None,
                           references: Sequence[VariantReport] = ()) -> Path:
    """Plot `metric` (in % for fractions) against non-zero FLOPs per example and save a PNG at `path`.
    `pareto` gives the front's indices into `reports`; without it `zoo.evaluate.pareto` computes it.
    `references` (other models of the task) are drawn as grey crosses, outside the front."""
    return _plot(reports, path, x=None, y=metric, pareto=pareto, title=title, references=references)


def plot_accuracy_vs_latency(reports: Sequence[VariantReport], path: str | Path, *, metric: str = "top1",
                             pareto: list[int] | None = None, title: str | None = None,
                             references: Sequence[VariantReport] = ()) -> Path:
    """Plot `metric` against each variant's measured latency in its fastest runtime (torch eager, ONNX
    Runtime, OpenVINO: `VariantReport.best_runtime`), with the Pareto front on latency; otherwise as
    `plot_accuracy_vs_flops`."""
    return _plot(reports, path, x=LATENCY, y=metric, pareto=pareto, title=title, references=references)


def plot_metric_vs_metric(reports: Sequence[VariantReport], path: str | Path, *, x: str, y: str,
                          pareto: list[int] | None = None, title: str | None = None,
                          references: Sequence[VariantReport] = ()) -> Path:
    """Plot metric `y` against metric `x` (a codec's PSNR against bits per pixel: its rate-distortion
    points), the front taken in each metric's direction; otherwise as `plot_accuracy_vs_flops`."""
    return _plot(reports, path, x=x, y=y, pareto=pareto, title=title, references=references)


def _plot(reports: Sequence[VariantReport], path: str | Path, *, x: str | None, y: str, pareto: list[int] | None,
          title: str | None, references: Sequence[VariantReport]) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidArgumentError(f"the plot is a PNG; {str(path)!r} does not end in .png")
    if not reports:
        raise InvalidArgumentError("no reports to plot")
    x_axis, y_axis = _Axis.of(reports, x), _Axis.of(reports, y)
    xs, ys = x_axis.values, y_axis.values
    ref_xs, ref_ys = (_Axis.of(references, x).values, _Axis.of(references, y).values) if references else ([], [])
    x_sign = -1.0 if x_axis.higher_is_better else 1.0  # the front minimizes x and maximizes y
    y_sign = 1.0 if y_axis.higher_is_better else -1.0
    front = _front([(x_sign * a, y_sign * b) for a, b in zip(xs, ys)], pareto)
    all_xs = xs + ref_xs
    log_x = min(all_xs) > 0 and max(all_xs) / min(all_xs) >= LOG_SPAN

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
    for kind, marker in MARKERS.items():
        members = [i for i, r in enumerate(reports) if variant_kind(r) == kind]
        if members:
            ax.scatter([xs[i] for i in members], [ys[i] for i in members], marker=marker, s=56,
                       color=COLORS[kind], edgecolors="white", linewidths=0.6, label=kind, zorder=3)
    if references:
        ax.scatter(ref_xs, ref_ys, marker="X", s=64, color="0.45", edgecolors="white", linewidths=0.6,
                   label="compared with", zorder=3)
    if front:
        ordered = sorted(front, key=lambda i: xs[i])
        ax.step([xs[i] for i in ordered], [ys[i] for i in ordered], where="pre" if x_axis.higher_is_better else "post",
                color="0.3", linestyle="--", linewidth=1.2, zorder=2, label="Pareto front")
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=150, facecolors="none",
                   edgecolors="0.2", linewidths=1.2, zorder=4)
    labels = [short_label(r) for r in reports] + [r.name for r in references]
    for label, px, py, offset in zip(labels, all_xs, ys + ref_ys, _label_offsets(all_xs, ys + ref_ys, log_x)):
        ax.annotate(label, (px, py), xytext=offset, textcoords="offset points", fontsize=8)

    ax.set_xlabel(x_axis.label + (" (log scale)" if log_x else ""))
    ax.set_ylabel(y_axis.label)
    first = reports[0]
    x_name = "FLOPs" if x is None else "latency" if x == LATENCY else metric_spec(x).name
    ax.set_title(title or f"{first.base_model}: {metric_spec(y).name} vs {x_name} on {first.dataset} ({first.split})",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.legend(loc="lower right" if y_axis.higher_is_better else "upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path


# Analyses: the linear path between two checkpoints, and training-cost trade-off curves -------------

TRADEOFF_PLOT_FILE = "tradeoff_cyclic_vs_standard.png"


def _save(fig: Figure, path: Path) -> Path:
    if path.suffix.lower() != ".png":
        raise InvalidArgumentError(f"the plot is a PNG; {str(path)!r} does not end in .png")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path


def plot_linear_path(path: LinearPath, file: str | Path, *, title: str | None = None) -> Path:
    """The loss along theta(a) = (1 - a) theta_A + a theta_B against a (`zoo.evaluate.linear_path`), the two
    models marked, and the primary task metric (where measured) on a second axis."""
    file = Path(file)
    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(path.alphas, path.loss, marker="o", markersize=4, color="tab:blue", label="training loss", zorder=3)
    for alpha, name, color, dx, align in ((0.0, path.model_a, "tab:orange", 6.0, "left"),
                                          (1.0, path.model_b, "tab:red", -6.0, "right")):
        ax.scatter([alpha], [path.at(alpha)], s=150, facecolors="none", edgecolors=color, linewidths=1.5, zorder=4)
        ax.annotate(name, (alpha, path.at(alpha)), xytext=(dx, 8.0), textcoords="offset points", fontsize=8,
                    ha=align)
    if path.metrics and path.metrics[0]:
        key = next(iter(path.metrics[0]))
        spec = metric_spec(key)
        scale = 100.0 if spec.unit == "fraction" else 1.0
        twin = ax.twinx()
        twin.plot(path.alphas, [scale * m[key] for m in path.metrics], marker="s", markersize=3,
                  color="tab:green", linestyle="--", label=spec.name, zorder=2)
        twin.set_ylabel(f"{spec.name} ({'%' if spec.unit == 'fraction' else spec.unit or 'value'})")
        twin.legend(loc="upper right", fontsize=8)
    bn = "BatchNorm statistics recomputed at each point" if path.bn_recomputed else "no BatchNorm"
    ax.set_xlabel("alpha: (1 - alpha) A + alpha B")
    ax.set_ylabel("training loss (mean over a fixed subset)")
    ax.set_title(title or f"linear path {path.model_a} (0) -> {path.model_b} (1)\n{bn}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, file)


def plot_tradeoff(curves: Sequence[TradeoffCurve], file: str | Path, *, title: str | None = None) -> Path:
    """The task metric against training epochs of each curve (`zoo.tradeoff`): the standard curve (one
    full-schedule run per budget) as circles, the cyclic one (one run, a point per learning-rate trough)
    as triangles, each point labelled with its training FLOPs."""
    if not curves:
        raise InvalidArgumentError("no trade-off curves to plot")
    metrics = {c.metric for c in curves}
    if len(metrics) != 1:
        raise InvalidArgumentError(f"curves of different metrics cannot share a plot: {sorted(metrics)}")
    spec = metric_spec(metrics.pop())
    scale = 100.0 if spec.unit == "fraction" else 1.0
    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    style = {"standard": ("o", "tab:blue", "-"), "cyclic": ("^", "tab:orange", "--")}
    for curve in curves:
        marker, color, line = style[curve.kind]
        xs = [p.epochs for p in curve.points]
        ys = [scale * p.metrics[curve.metric] for p in curve.points]
        settings = (f"T0={curve.settings['t0']}, m={curve.settings['t_mult']}" if curve.kind == "cyclic"
                    else "one run per budget")
        ax.plot(xs, ys, marker=marker, color=color, linestyle=line, markersize=7,
                label=f"{curve.kind} ({settings}; {curve.total_epochs} epochs trained)", zorder=3)
        for point, x, y in zip(curve.points, xs, ys):
            ax.annotate(f"{point.train_flops / 1e12:.3g} TFLOPs", (x, y), xytext=(6.0, -10.0 if curve.kind == "cyclic"
                        else 4.0), textcoords="offset points", fontsize=7, color=color)
    first = curves[0]
    unit = "%" if spec.unit == "fraction" else spec.unit
    ax.set_xlabel("training epochs (cumulative, at each point)")
    ax.set_ylabel(f"{spec.name}{f' ({unit})' if unit else ''}")
    ax.set_title(title or f"{first.model}: {spec.name} vs training cost on {first.dataset} ({first.split})",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.08, y=0.12)
    ax.legend(loc="lower right" if spec.higher_is_better else "upper right", fontsize=8)
    return _save(fig, Path(file))
