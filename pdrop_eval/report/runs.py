"""Reading evaluation runs: lmms-eval results JSON, VLMEvalKit work dirs, our statistics file.

A `Run` is one framework invocation for one checkpoint and one drop setting: its scores on the
paper's scales (see `benchmarks`) and, when our statistics file sits beside it, the drop config and
the mean TFLOPs of its samples. Only files are read here; no model is loaded.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pdrop_eval.engine.config import DropConfig
from pdrop_eval.keyvalue import parse_key_values
from pdrop_eval.report.benchmarks import Benchmark, LMMS_METRIC_FACTORS, KNOWN, lmms_task_metric, vlmeval_benchmark
from pdrop_eval.report.files import ReportInputError, read_json_object, require

STATS_SCHEMA = "pdrop-eval/stats/v1"
STATS_GLOB = "*pdrop_stats*.json"
LMMS_RESULTS_SUFFIX = "_results.json"
VLMEVAL_SCORE_FILE = re.compile(r"^(?P<dataset>.+)_(?P<kind>acc|score)\.csv$")
VLMEVAL_EVAL_ID = re.compile(r"^T\d{8}-\d{6}")  # VLMEvalKit's per-invocation subfolders (copies)


@dataclass(frozen=True)
class Score:
    benchmark: Benchmark
    value: float  # on the paper's printed scale (percent; MME in points)
    task: str  # the framework's task / dataset name
    source: Path  # the file the value was read from


@dataclass(frozen=True)
class Flops:
    """Mean TFLOPs per sample: paper convention (image tokens only) and measured (all tokens)."""

    paper: float
    measured: float
    samples: int


def mean_flops(parts) -> Flops | None:
    """Sample-weighted mean of several `Flops` (None entries are skipped)."""
    parts = [p for p in parts if p is not None and p.samples > 0]
    total = sum(p.samples for p in parts)
    if not total:
        return None
    return Flops(
        paper=sum(p.paper * p.samples for p in parts) / total,
        measured=sum(p.measured * p.samples for p in parts) / total,
        samples=total,
    )


@dataclass
class Stats:
    """Our statistics file (`*pdrop_stats*.json`), as far as the report needs it."""

    path: Path
    model: str
    pretrained: str
    drop: DropConfig
    flops: Flops | None  # None when the run recorded no samples
    flops_by_task: dict[str, Flops]


@dataclass
class Run:
    framework: str  # "lmms-eval" | "vlmeval"
    source: Path  # the results JSON, or the VLMEvalKit model folder
    adapter: str  # the framework's model name, e.g. llava_next_pdrop
    pretrained: str  # checkpoint path or hub id
    scores: list[Score]
    stats: Stats | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def drop(self) -> DropConfig | None:
        return self.stats.drop if self.stats else None

    def flops_for(self, task: str) -> Flops | None:
        """Mean TFLOPs of this run's samples of `task` (all samples if the file has no split)."""
        if self.stats is None:
            return None
        return self.stats.flops_by_task.get(task, self.stats.flops)


def checkpoint_name(pretrained: str) -> str:
    """What tables call a checkpoint: the last part of its path or hub id."""
    return Path(pretrained.rstrip("/")).name


# ----- our statistics file -----------------------------------------------------------------------
def _number(value, path: Path, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportInputError(f"{path}: {name} should be a number, got {value!r}")
    return float(value)


def drop_config_from_stats(drop: dict, path: Path) -> DropConfig:
    try:
        return DropConfig.from_dict(drop)
    except (TypeError, ValueError) as error:
        raise ReportInputError(f"{path}: invalid drop config {drop!r}: {error}") from None


def read_stats(path: Path) -> Stats:
    what = f"a pdrop-eval statistics file (schema {STATS_SCHEMA})"
    data = read_json_object(path, what)
    if data.get("schema") != STATS_SCHEMA:
        raise ReportInputError(f"{path}: schema is {data.get('schema')!r}, expected {STATS_SCHEMA!r}")
    require(data, path, "statistics file", "model", "pretrained", "drop", "samples")
    samples = data["samples"]
    if not isinstance(samples, list):
        raise ReportInputError(f"{path}: 'samples' should be a list")
    by_task: dict[str, list[Flops]] = {}
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise ReportInputError(f"{path}: samples[{index}] should be an object")
        require(sample, path, f"statistics sample (samples[{index}])", "task", "tflops_paper", "tflops_actual")
        flops = Flops(
            _number(sample["tflops_paper"], path, f"samples[{index}].tflops_paper"),
            _number(sample["tflops_actual"], path, f"samples[{index}].tflops_actual"),
            1,
        )
        by_task.setdefault(str(sample["task"]), []).append(flops)
    return Stats(
        path=path,
        model=str(data["model"]),
        pretrained=str(data["pretrained"]),
        drop=drop_config_from_stats(data["drop"], path),
        flops=mean_flops(flops for parts in by_task.values() for flops in parts),
        flops_by_task={task: mean_flops(parts) for task, parts in by_task.items()},
    )


# ----- lmms-eval ---------------------------------------------------------------------------------
def _model_args_dict(model_args, path: Path) -> dict[str, str]:
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    try:
        return parse_key_values(str(model_args or ""), "model_args key")
    except ValueError as error:
        raise ReportInputError(f"{path}: config.model_args: {error}") from None


def _lmms_metrics(task_results: dict) -> dict[str, float]:
    """`{"anls,none": 0.5, "anls_stderr,none": ...}` -> `{"anls": 0.5}` (numbers, no filters)."""
    metrics = {}
    for key, value in task_results.items():
        name, sep, filter_name = key.partition(",")
        if sep and filter_name == "none" and not name.endswith("_stderr"):
            metrics[name] = value
    return metrics


def read_lmms_results(path: Path) -> Run:
    what = "an lmms-eval results file (<date>_results.json)"
    data = read_json_object(path, what)
    require(data, path, what, "results", "config")
    results, config = data["results"], data["config"]
    if not isinstance(results, dict) or not isinstance(config, dict) or "model" not in config:
        raise ReportInputError(f"{path}: not {what}: 'results' and 'config.model' are missing or malformed")
    model_args = _model_args_dict(config.get("model_args"), path)
    run = Run("lmms-eval", path, str(config["model"]), model_args.get("pretrained", ""), scores=[])
    groups = {name for name, subtasks in (data.get("group_subtasks") or {}).items() if subtasks}
    for task, task_results in results.items():
        if task in groups:  # a group's entry repeats its subtasks (or nothing); the subtasks are read
            continue
        if not isinstance(task_results, dict):
            raise ReportInputError(f"{path}: results.{task} should be an object")
        metrics = _lmms_metrics(task_results)
        chosen = lmms_task_metric(task, metrics)
        if chosen is None:
            run.notes.append(f"{path}: task {task!r} reports no metric the report knows ({', '.join(sorted(metrics)) or 'none'})")
            continue
        benchmark, metric = chosen
        value = metrics[metric]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportInputError(f"{path}: results.{task}.{metric} is {value!r}, not a number")
        run.scores.append(Score(benchmark, float(value) * LMMS_METRIC_FACTORS[metric], task, path))
    return run


# ----- VLMEvalKit --------------------------------------------------------------------------------
def _read_score_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ReportInputError(f"{path}: unreadable CSV ({error})") from None
    if not rows:
        raise ReportInputError(f"{path}: empty score file")
    return rows


def _csv_number(row: dict, column: str, path: Path) -> float:
    try:
        return float(row[column])
    except (KeyError, TypeError, ValueError):
        raise ReportInputError(f"{path}: no numeric {column!r} column in {list(row)}") from None


def _overall_row(rows: list[dict], path: Path) -> dict:
    if "split" not in rows[0]:
        return rows[0]
    if len(rows) == 1:
        return rows[0]
    overall = [row for row in rows if row.get("split") == "Overall"]
    if len(overall) != 1:
        raise ReportInputError(f"{path}: several splits and no single 'Overall' row")
    return overall[0]


def read_vlmeval_score(path: Path, dataset: str) -> Score:
    """One score file, by the shape VLMEvalKit gives it (vlmeval/dataset, ms-vlmeval 0.0.20):

    - `_acc.csv` with a `split` column: multiple choice (`report_acc`), fractions -> percent;
    - `_acc.csv` without it: VQA, already percent;
    - `_score.csv`: Yes/No; MME has `perception` (points); POPE's `Overall` is the F1 score in percent.
    """
    rows = _read_score_csv(path)
    row = _overall_row(rows, path)
    if path.name.endswith("_acc.csv"):
        value = _csv_number(row, "Overall", path)
        return Score(vlmeval_benchmark(dataset), value * 100.0 if "split" in row else value, dataset, path)
    if "perception" in row:
        return Score(vlmeval_benchmark(dataset, KNOWN["mme"].max_points), _csv_number(row, "perception", path), dataset, path)
    return Score(vlmeval_benchmark(dataset), _csv_number(row, "Overall", path), dataset, path)


def read_vlmeval_model_dir(folder: Path) -> Run:
    """`<work_dir>/<model>/`: `<model>_<dataset>_acc.csv` / `_score.csv`, `status.json`."""
    status_path = folder / "status.json"
    status = read_json_object(status_path, "VLMEvalKit's status.json") if status_path.exists() else {}
    model = str(status.get("model_name") or folder.name)
    run = Run("vlmeval", folder, model, "", scores=[])
    prefix = f"{model}_"
    for path in sorted(folder.glob("*.csv")):
        match = VLMEVAL_SCORE_FILE.match(path.name)
        if not match or not path.name.startswith(prefix):
            continue
        dataset = match["dataset"][len(prefix):]
        if dataset in status.get("datasets", {}) or not status:
            run.scores.append(read_vlmeval_score(path, dataset))
    for dataset, entry in status.get("datasets", {}).items():
        if isinstance(entry, dict) and (entry.get("error_message") or entry.get("skip_reason")):
            reason = entry.get("error_message") or entry.get("skip_reason")
            run.notes.append(f"{status_path}: {dataset} was not scored ({str(reason)[:160]})")
    return run


# ----- finding runs and their statistics files ----------------------------------------------------
def _fits(stats: Stats, run: Run) -> bool:
    """Could `stats` have been written by `run`? Same model name, checkpoint and tasks."""
    tasks = {score.task for score in run.scores}
    same_checkpoint = not run.pretrained or checkpoint_name(stats.pretrained) == checkpoint_name(run.pretrained)
    return stats.model == run.adapter and same_checkpoint and set(stats.flops_by_task) <= tasks


def attach_stats(run: Run, candidates: list[Stats]) -> None:
    """Give `run` the one statistics file in its folder that fits it (preferring one whose name
    starts like the results file's `<date>_`); a run without one keeps dashes for TFLOPs."""
    fitting = [stats for stats in candidates if _fits(stats, run)]
    date = run.source.name[: -len(LMMS_RESULTS_SUFFIX)] if run.source.name.endswith(LMMS_RESULTS_SUFFIX) else None
    same_date = [stats for stats in fitting if date and stats.path.name.startswith(date)]
    chosen = same_date or fitting
    if len(chosen) > 1:
        names = ", ".join(str(stats.path) for stats in chosen)
        raise ReportInputError(f"{run.source}: several statistics files fit this run ({names}); keep one run per folder")
    if not chosen:
        run.notes.append(f"{run.source}: no pdrop-eval statistics file ({STATS_GLOB}) beside it, so no TFLOPs")
        return
    run.stats = chosen[0]
    run.pretrained = run.pretrained or chosen[0].pretrained


def _runs_in_folder(folder: Path, names: list[str]) -> list[Run]:
    runs = [read_lmms_results(folder / name) for name in sorted(names) if name.endswith(LMMS_RESULTS_SUFFIX)]
    has_vlmeval = "status.json" in names or any(VLMEVAL_SCORE_FILE.match(name) for name in names)
    if has_vlmeval:
        runs.append(read_vlmeval_model_dir(folder))
    if runs:
        candidates = [read_stats(path) for path in sorted(folder.glob(STATS_GLOB))]
        for run in runs:
            attach_stats(run, candidates)
    return runs


def find_runs(paths) -> list[Run]:
    """All runs under the given folders (searched recursively) or results files."""
    runs = []
    for path in map(Path, paths):
        if path.is_file():
            if not path.name.endswith(LMMS_RESULTS_SUFFIX):
                raise ReportInputError(f"{path}: not an lmms-eval results file (*{LMMS_RESULTS_SUFFIX}) nor a run folder")
            runs.extend(_runs_in_folder_for_file(path))
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"no such run folder or results file: {path}")
        found = []
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = sorted(d for d in subfolders if not VLMEVAL_EVAL_ID.match(d))
            found.extend(_runs_in_folder(Path(folder), names))
        if not found:
            raise ReportInputError(
                f"{path}: no lmms-eval results (*{LMMS_RESULTS_SUFFIX}) or VLMEvalKit scores (status.json, *_acc.csv, *_score.csv) in it"
            )
        runs.extend(found)
    return runs


def _runs_in_folder_for_file(path: Path) -> list[Run]:
    run = read_lmms_results(path)
    attach_stats(run, [read_stats(stats) for stats in sorted(path.parent.glob(STATS_GLOB))])
    return [run]
