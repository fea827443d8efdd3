"""Where does dropping image tokens start to hurt? The paper's Section 3.1 experiment (Figures 1a and 3).

For each checkpoint, drop once at each layer L of a list, keeping each fraction of the image tokens
(a one-stage PyramidDrop schedule, ranked as PyramidDrop ranks: `DropConfig.pyramid(layer_list=[L],
image_token_ratio_list=[keep])`), evaluate through the real lmms-eval (`pdrop_eval.pipeline`), and plot
score against the retained fraction, one curve per layer, one column per checkpoint. A vanilla run of
each checkpoint closes every curve at fraction 1.

Layout of the output folder::

    runs/<checkpoint>/layer<L>-keep<f>/   one lmms-eval output folder per point (results, statistics, log)
    runs/<checkpoint>/vanilla/
    study.md, study.png                   the table and the figure, rewritten after every invocation

A point is finished when its folder holds one results file and its statistics file, made by the same
checkpoint and drop config, for the same tasks and --limit; reruns skip finished points and redo
the others from scratch.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.engine.config import DropConfig
from pdrop_eval.pipeline import (
    RUNS_FOLDER,
    Setting,
    check_settings_fit,
    checkpoint_folders,
    lmms_eval_command,
    run_lmms_eval,
)
from pdrop_eval.report.files import ReportInputError, read_json_object, write_text
from pdrop_eval.report.runs import find_runs

VANILLA_KEEP = 1.0


@dataclass(frozen=True)
class Point:
    pretrained: str
    folder_name: str  # the checkpoint's folder under runs/
    layer: int | None  # None: the vanilla reference
    keep: float

    @property
    def setting(self) -> Setting:
        if self.layer is None:
            return Setting("vanilla", DropConfig.none())
        drop = DropConfig.pyramid(layer_list=[self.layer], image_token_ratio_list=[self.keep])
        return Setting(f"layer{self.layer}-keep{self.keep:g}", drop)

    def folder(self, out_dir: Path) -> Path:
        return Path(out_dir) / RUNS_FOLDER / self.folder_name / self.setting.name

    def label(self) -> str:
        where = "vanilla" if self.layer is None else f"layer {self.layer}, keep {self.keep:g}"
        return f"{self.folder_name}: {where}"


def study_points(checkpoints: list[str], layers: list[int], keeps: list[float], with_vanilla: bool = True) -> list[Point]:
    """Every (checkpoint, layer, fraction) point, plus one vanilla point per checkpoint."""
    if not checkpoints or not layers or not keeps:
        raise ValueError("a study needs at least one checkpoint, one layer and one kept fraction")
    if len(set(layers)) != len(layers) or len(set(keeps)) != len(keeps):
        raise ValueError(f"--layers and --keep must not repeat values, got {layers} and {keeps}")
    bad = [keep for keep in keeps if not 0.0 < keep < 1.0]
    if bad:
        raise ValueError(f"--keep fractions must lie strictly between 0 and 1 (1 is the vanilla run), got {bad}")
    points = []
    for pretrained, folder in zip(checkpoints, checkpoint_folders(checkpoints)):
        points += [Point(pretrained, folder, None, VANILLA_KEEP)] if with_vanilla else []
        points += [Point(pretrained, folder, layer, keep) for layer in layers for keep in keeps]
    return points


def unfinished_reason(point: Point, out_dir: Path, tasks: list[str], limit: float | None) -> str | None:
    """None when the point's folder holds its finished evaluation, else why not."""
    results = sorted(point.folder(out_dir).glob("*/*_results.json"))
    if not results:
        return "not run yet"
    if len(results) > 1:
        return f"{len(results)} results files"
    try:
        (run,) = find_runs([results[0]])
        data = read_json_object(results[0], "an lmms-eval results file")
    except (ReportInputError, ValueError) as error:
        return f"unreadable output ({error})"
    if run.stats is None:
        return "no statistics file"
    if run.stats.pretrained != point.pretrained:
        return f"made by checkpoint {run.stats.pretrained}"
    if run.stats.drop != point.setting.drop:
        return f"made with {run.stats.drop.describe()}"
    changed = _checkpoint_files_newer_than(point.pretrained, results[0].stat().st_mtime)
    if changed:
        return f"the checkpoint changed after this run ({changed})"  # same path, new weights: a stale score
    done = set(data.get("results", {})) | set(data.get("group_subtasks", {}))
    missing = [task for task in tasks if task not in done]
    if missing:
        return f"lacks tasks {missing}"
    recorded = data.get("config", {}).get("limit")
    if (recorded is None) != (limit is None) or (limit is not None and float(recorded) != float(limit)):
        return f"made with --limit {recorded}"
    return None


def _checkpoint_files_newer_than(pretrained: str, moment: float) -> str | None:
    """A file of the local checkpoint folder `pretrained` modified after `moment`, if any (a Hub id: None)."""
    folder = Path(pretrained)
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.stat().st_mtime > moment:
            return path.name
    return None


def run_study(points: list[Point], tasks: list[str], out_dir: Path, options: dict, force: bool = False) -> list[Point]:
    """Evaluate every unfinished point (all with `force`), one lmms-eval process each, with a progress
    line per point; returns the points evaluated now."""
    out_dir = Path(out_dir)
    for pretrained in dict.fromkeys(point.pretrained for point in points):
        check_settings_fit(pretrained, [point.setting for point in points if point.pretrained == pretrained])
    evaluated = []
    for number, point in enumerate(points, 1):
        progress = f"[{number}/{len(points)}] {point.label()}"
        reason = "--force" if force else unfinished_reason(point, out_dir, tasks, options.get("limit"))
        if reason is None:
            print(f"{progress}: finished earlier, skipped", flush=True)
            continue
        print(f"{progress}: evaluating ({reason})", flush=True)
        folder = point.folder(out_dir)
        if folder.exists():
            shutil.rmtree(folder)
        run_lmms_eval(lmms_eval_command(point.pretrained, point.setting, tasks, folder, options), folder)
        evaluated.append(point)
    return evaluated


def collect_scores(points: list[Point], out_dir: Path) -> dict[Point, dict[str, float]]:
    """Benchmark label -> score (the paper's scale) for every point, read from its results file."""
    scores = {}
    for point in points:
        (run,) = find_runs(sorted(point.folder(out_dir).glob("*/*_results.json")))
        scores[point] = {score.benchmark.label: score.value for score in run.scores}
    return scores


def study_markdown(scores: dict[Point, dict[str, float]]) -> str:
    """One table per checkpoint and benchmark: rows are drop layers, columns kept fractions."""
    lines = ["# Drop once at layer L keeping a fraction of the image tokens (paper Section 3.1)", ""]
    for folder, benchmark, curves, vanilla in _series(scores):
        keeps = sorted({keep for curve in curves.values() for keep, _ in curve})
        header = ["layer", *(f"keep {keep:g}" for keep in keeps)] + (["vanilla (1.0)"] if vanilla is not None else [])
        lines += [f"## {folder}: {benchmark}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for layer, curve in sorted(curves.items()):
            by_keep = dict(curve)
            cells = [f"{by_keep[keep]:.2f}" if keep in by_keep else "-" for keep in keeps]
            lines.append("| " + " | ".join([str(layer), *cells] + ([f"{vanilla:.2f}"] if vanilla is not None else [])) + " |")
        lines.append("")
    return "\n".join(lines)


def write_study_plot(scores: dict[Point, dict[str, float]], path: Path) -> Path:
    """Score vs retained fraction, one curve per drop layer; a column per checkpoint (two give the
    paper's Figure 3), a row per benchmark."""
    from pdrop_eval.report.plot import pyplot

    plt = pyplot()
    series = _series(scores)
    folders = list(dict.fromkeys(folder for folder, *_ in series))
    benchmarks = list(dict.fromkeys(benchmark for _, benchmark, *_ in series))
    figure, axes = plt.subplots(len(benchmarks), len(folders), figsize=(4.6 * len(folders), 3.4 * len(benchmarks)), squeeze=False)
    for folder, benchmark, curves, vanilla in series:
        ax = axes[benchmarks.index(benchmark)][folders.index(folder)]
        for index, (layer, curve) in enumerate(sorted(curves.items())):
            points = curve + ([(VANILLA_KEEP, vanilla)] if vanilla is not None else [])
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", color=f"C{index % 10}", label=f"drop at layer {layer}")
        if vanilla is not None:
            ax.plot([VANILLA_KEEP], [vanilla], marker="*", markersize=12, color="black", linestyle="none", label="vanilla")
        ax.set_title(f"{folder}: {benchmark}", fontsize=9)
        ax.set_xlabel("retained fraction of image tokens")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for row in axes:
        for ax in row:
            if not ax.has_data():
                ax.set_visible(False)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_outputs(scores: dict[Point, dict[str, float]], out_dir: Path) -> tuple[Path, Path]:
    """study.md and study.png in `out_dir` (derived from the runs, so rewritten every time)."""
    if not any(scores.values()):
        raise ValueError(f"no point in {out_dir} has a score the report knows; see the lmms-eval logs under {out_dir / RUNS_FOLDER}")
    markdown = Path(out_dir) / "study.md"
    write_text(markdown, study_markdown(scores), force=True)
    return markdown, write_study_plot(scores, Path(out_dir) / "study.png")


def _series(scores: dict[Point, dict[str, float]]) -> list[tuple[str, str, dict[int, list[tuple[float, float]]], float | None]]:
    """(checkpoint folder, benchmark, layer -> sorted (fraction, score), vanilla score or None), in input order."""
    result = {}
    for point, by_benchmark in scores.items():
        for benchmark, value in by_benchmark.items():
            entry = result.setdefault((point.folder_name, benchmark), ({}, []))
            if point.layer is None:
                entry[1].append(value)
            else:
                entry[0].setdefault(point.layer, []).append((point.keep, value))
    return [
        (folder, benchmark, {layer: sorted(curve) for layer, curve in curves.items()}, vanilla[0] if vanilla else None)
        for (folder, benchmark), (curves, vanilla) in result.items()
    ]
