"""Score versus TFLOPs (or retained image tokens), one panel per benchmark (the paper's Figure 4), as a PNG.

Each point is one run's score on one benchmark at the mean paper-convention TFLOPs of that run's
samples of the benchmark, or with ``x="tokens"`` at their mean image tokens per decoder layer,
(1/L)·Σ_l n_l; the points of one checkpoint and method (e.g. a λ sweep) form a line. A method has
one colour and marker on every checkpoint; a checkpoint has one line style and marker fill. Repeated
runs of one setting are not a curve: their points are drawn apart, unjoined, with a black-edged marker.
"""

from __future__ import annotations

import math
from pathlib import Path

from pdrop_eval.engine.config import METHODS
from pdrop_eval.report.benchmarks import Benchmark, order
from pdrop_eval.report.files import OutputPathError, check_writable
from pdrop_eval.report.runs import Run, short_names
from pdrop_eval.report.table import method_kind

SPECS_BY_KIND = {spec.kind: spec for spec in METHODS.values()}  # series name per method kind
MARKERS = {"vanilla": "*", "fastv": "s", "pdrop": "o", "random": "X", "visionzip": "v", "pool": "P", "dart": "^", "sparsevlm": "p"}  # per method kind; a new kind gets "D"
CHECKPOINT_STYLES = (("-", "full"), ("--", "none"), (":", "left"), ("-.", "bottom"))  # line style, marker fill
REPEATED_EDGE, REPEATED_LABEL = "black", "repeated runs of one setting (not joined)"
X_AXES = {"tflops": "TFLOPs (paper convention)", "tokens": "avg image tokens per layer, (1/L)·Σ_l n_l"}


def points_by_setting(runs: list[Run], x: str) -> dict[str, dict[tuple[str, str], dict]]:
    """benchmark key -> (checkpoint, method kind) -> drop config -> its runs' (x, score) points."""
    if x not in X_AXES:
        raise ValueError(f"the plot's x axis is one of {', '.join(X_AXES)}, got {x!r}")
    points: dict[str, dict] = {}
    names = short_names(run.checkpoint for run in runs)
    for run in runs:
        kind = method_kind(run.drop)
        if kind is None:
            continue
        series = (names.get(run.checkpoint, run.adapter), kind)
        for score in run.scores:
            flops = run.flops_for(score.task)
            if flops is not None:
                position = flops.paper if x == "tflops" else flops.image_tokens
                by_series = points.setdefault(score.benchmark.key, {}).setdefault(series, {})
                by_series.setdefault(run.drop, []).append((position, score.value))
    return points


def plot_points(runs: list[Run], x: str = "tflops") -> dict[str, dict[tuple[str, str], list[tuple[float, float]]]]:
    """benchmark key -> (checkpoint, method kind) -> sorted (x, score) points of the settings run once,
    x being TFLOPs or the average image tokens per layer (`X_AXES`); runs without a statistics file are
    skipped, and so are settings run more than once (`repeated_points`)."""
    return _select(runs, x, lambda points: len(points) == 1)


def repeated_points(runs: list[Run], x: str = "tflops") -> dict[str, dict[tuple[str, str], list[tuple[float, float]]]]:
    """As `plot_points`, the points of settings run more than once on a benchmark (never one curve)."""
    return _select(runs, x, lambda points: len(points) > 1)


def _select(runs: list[Run], x: str, keep) -> dict:
    selected: dict[str, dict] = {}
    for key, by_series in points_by_setting(runs, x).items():
        for series, by_drop in by_series.items():
            xy = sorted(point for points in by_drop.values() if keep(points) for point in points)
            if xy:
                selected.setdefault(key, {})[series] = xy
    return selected


def pyplot():
    """matplotlib.pyplot drawing to files only (Agg), with a clear error where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plots need matplotlib: pip install matplotlib") from None
    return plt


def draw_plot(runs: list[Run], x: str = "tflops"):
    """The matplotlib figure of `runs` (close it when done): one panel per benchmark, one curve per
    checkpoint and method, one legend beside the panels."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    points, repeated = plot_points(runs, x), repeated_points(runs, x)
    if not points and not repeated:
        raise ValueError("nothing to plot: no run has both scores and a statistics file with TFLOPs")
    benchmarks: list[Benchmark] = order(score.benchmark for run in runs for score in run.scores if score.benchmark.key in points.keys() | repeated.keys())
    # One colour (and marker) per method, one line style and marker fill per checkpoint, the same in every
    # panel: a method's curve reads the same on every model, and one legend serves every panel.
    every = [series for found in (points, repeated) for by_series in found.values() for series in by_series]
    kinds = [kind for kind in SPECS_BY_KIND if kind in {kind for _, kind in every}]  # in the registry's order
    checkpoints = sorted({checkpoint for checkpoint, _ in every})
    colors = {kind: f"C{index % 10}" for index, kind in enumerate(kinds)}
    styles = {checkpoint: CHECKPOINT_STYLES[index % len(CHECKPOINT_STYLES)] for index, checkpoint in enumerate(checkpoints)}
    columns = min(3, len(benchmarks))
    rows = math.ceil(len(benchmarks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, benchmark in zip(axes.flat, benchmarks):
        for (checkpoint, kind), xy in sorted(points.get(benchmark.key, {}).items()):
            linestyle, fillstyle = styles[checkpoint]
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker=MARKERS.get(kind, "D"), color=colors[kind],
                    linestyle=linestyle, fillstyle=fillstyle, markersize=7)
        for (checkpoint, kind), xy in sorted(repeated.get(benchmark.key, {}).items()):
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker=MARKERS.get(kind, "D"), color=colors[kind],
                    linestyle="none", fillstyle=styles[checkpoint][1], markersize=9, markeredgecolor=REPEATED_EDGE, label=REPEATED_LABEL)
        ax.set_title(benchmark.label)
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel("points" if benchmark.max_points != 100.0 else "score (%)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[kind], marker=MARKERS.get(kind, "D"), linestyle="-", label=SPECS_BY_KIND[kind].series)
               for kind in kinds]
    if repeated:
        handles.append(Line2D([], [], color="0.6", marker="o", linestyle="none", markeredgecolor=REPEATED_EDGE, label=REPEATED_LABEL))
    if len(checkpoints) > 1:
        handles += [Line2D([], [], color="0.35", marker="o", linestyle=styles[checkpoint][0], fillstyle=styles[checkpoint][1],
                           label=checkpoint) for checkpoint in checkpoints]
    figure.tight_layout()
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8, frameon=False)  # beside the panels
    for ax in list(axes.flat)[len(benchmarks):]:
        ax.set_visible(False)
    return figure


def write_plot(runs: list[Run], path: Path, force: bool = False, x: str = "tflops") -> Path:
    path = Path(path)
    check_writable(path, force)
    figure = draw_plot(runs, x)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")  # "tight" takes in the legend
    except OSError as error:
        raise OutputPathError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        pyplot().close(figure)
    return path
