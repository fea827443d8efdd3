"""Score versus TFLOPs, one panel per benchmark (the paper's Figure 4), as a PNG.

Each point is one run's score on one benchmark at the mean paper-convention TFLOPs of that run's
samples of the benchmark; the points of one checkpoint and method (e.g. a λ sweep) form a line.
"""

from __future__ import annotations

import math
from pathlib import Path

from pdrop_eval.engine.config import METHODS
from pdrop_eval.report.benchmarks import Benchmark, order
from pdrop_eval.report.files import OutputPathError, check_writable
from pdrop_eval.report.runs import Run, checkpoint_name
from pdrop_eval.report.table import method_kind

SPECS_BY_KIND = {spec.kind: spec for spec in METHODS.values()}  # series name and marker per method kind


def plot_points(runs: list[Run]) -> dict[str, dict[tuple[str, str], list[tuple[float, float]]]]:
    """benchmark key -> (checkpoint, method kind) -> sorted (TFLOPs, score) points; runs without
    TFLOPs are skipped."""
    points: dict[str, dict[str, list]] = {}
    for run in runs:
        kind = method_kind(run.drop)
        if kind is None:
            continue
        series = (checkpoint_name(run.pretrained), kind)
        for score in run.scores:
            flops = run.flops_for(score.task)
            if flops is not None:
                points.setdefault(score.benchmark.key, {}).setdefault(series, []).append((flops.paper, score.value))
    return {key: {name: sorted(xy) for name, xy in series.items()} for key, series in points.items()}


def write_plot(runs: list[Run], path: Path, force: bool = False) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("the plot needs matplotlib: pip install matplotlib") from None
    path = Path(path)
    check_writable(path, force)
    points = plot_points(runs)
    if not points:
        raise ValueError("nothing to plot: no run has both scores and a statistics file with TFLOPs")
    benchmarks: list[Benchmark] = order(score.benchmark for run in runs for score in run.scores if score.benchmark.key in points)
    all_series = sorted({series for by_series in points.values() for series in by_series})
    colors = {series: f"C{index % 10}" for index, series in enumerate(all_series)}  # same colour in every panel
    columns = min(3, len(benchmarks))
    rows = math.ceil(len(benchmarks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, benchmark in zip(axes.flat, benchmarks):
        for (checkpoint, kind), xy in sorted(points[benchmark.key].items()):
            spec = SPECS_BY_KIND[kind]
            label = f"{checkpoint} · {spec.series}"
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker=spec.marker, color=colors[(checkpoint, kind)], label=label)
        ax.set_title(benchmark.label)
        ax.set_xlabel("TFLOPs (paper convention)")
        ax.set_ylabel("points" if benchmark.max_points != 100.0 else "score (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(benchmarks):]:
        ax.set_visible(False)
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    except OSError as error:
        raise OutputPathError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        plt.close(figure)
    return path
