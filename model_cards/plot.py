"""The accuracy-vs-FLOPs plot of a model family: one labelled point per variant, marker by kind, and
the Pareto front as a step line. Drawn on an Agg canvas without pyplot (no display, no global state)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from zoo.errors import InvalidArgumentError
from zoo.evaluate.report import VariantReport
from zoo.model_cards.card import metric_spec, short_label, variant_kind

MARKERS = {"dense": "o", "sparse": "^", "quantized": "s", "sparse + quantized": "D"}
COLORS = {"dense": "tab:blue", "sparse": "tab:orange", "quantized": "tab:green", "sparse + quantized": "tab:red"}
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


def plot_accuracy_vs_flops(reports: Sequence[VariantReport], path: str | Path, *, metric: str = "top1",
                           pareto: list[int] | None = None, title: str | None = None) -> Path:
    """Plot `metric` (in % for fractions) against non-zero FLOPs per example and save a PNG at `path`.
    `pareto` gives the front's indices into `reports`; without it `zoo.evaluate.pareto` computes it."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidArgumentError(f"the plot is a PNG; {str(path)!r} does not end in .png")
    if not reports:
        raise InvalidArgumentError("no reports to plot")
    spec = metric_spec(metric)
    missing = [r.name for r in reports if metric not in r.metrics]
    if missing:
        raise InvalidArgumentError(f"metric {metric!r} missing from reports: {', '.join(missing)}")

    xs = [r.flops_sparse / 1e6 for r in reports]
    scale = 100.0 if spec.unit == "fraction" else 1.0
    ys = [scale * float(r.metrics[metric]) for r in reports]
    sign = 1.0 if spec.higher_is_better else -1.0  # the front maximizes quality: negate a lower-is-better metric
    front = _front([(x, sign * y) for x, y in zip(xs, ys)], pareto)
    log_x = min(xs) > 0 and max(xs) / min(xs) >= LOG_SPAN

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
    if front:
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="0.3",
                linestyle="--", linewidth=1.2, zorder=2, label="Pareto front")
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=150, facecolors="none",
                   edgecolors="0.2", linewidths=1.2, zorder=4)
    for i, offset in enumerate(_label_offsets(xs, ys, log_x)):
        ax.annotate(short_label(reports[i]), (xs[i], ys[i]), xytext=offset, textcoords="offset points",
                    fontsize=8)

    ax.set_xlabel("non-zero MFLOPs per example" + (" (log scale)" if log_x else ""))
    average = reports[0].metric_average
    unit = "%" if spec.unit == "fraction" else spec.unit
    direction = "" if spec.higher_is_better else ", lower is better"
    ax.set_ylabel(f"{spec.name} ({unit + ', ' if unit else ''}average={average}{direction})")
    first = reports[0]
    ax.set_title(title or f"{first.base_model}: {spec.name} vs FLOPs on {first.dataset} ({first.split})",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.legend(loc="lower right" if spec.higher_is_better else "upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path
