"""Reading evaluation runs: lmms-eval results JSON, VLMEvalKit work dirs, our statistics file.

A `Run` is one framework invocation for one checkpoint and one drop setting: its scores on the
paper's scales (see `benchmarks`) with the framework's standard errors and document counts, where the
per-document results are (lmms-eval's ``--log_samples`` files, `documents`) and, when the run wrote our
statistics file, the mean TFLOPs of its samples. A statistics file belongs to a run only by its explicit link (`pdrop_eval.stats`): the
results file it names, and for lmms-eval the same model_args, whose drop setting must be the one the
file records; nothing is matched by name, date or task set. Only files are read; no model is loaded.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pdrop_eval import presets, stats
from pdrop_eval.framework_names import METHOD_OF_MODEL, model_drop_defaults
from pdrop_eval.budget import average_image_tokens
from pdrop_eval.engine.config import METHODS, OPTION_KEYS, DropConfig
from pdrop_eval.keyvalue import parse_key_values
from pdrop_eval.options import BUDGET_KEYS, resolve_drop
from pdrop_eval.report.benchmarks import KNOWN, LMMS_METRIC_FACTORS, Benchmark, lmms_sub_metric, lmms_task_metric, vlmeval_benchmark
from pdrop_eval.report.documents import DocumentResults, lmms_samples_path
from pdrop_eval.report.files import ReportInputError, read_json_object, require

VLMEVAL_SCORE_FILE = re.compile(r"^(?P<dataset>.+)_(?P<kind>acc|score)\.csv$")
VLMEVAL_EVAL_ID = re.compile(r"^T\d{8}-\d{6}")  # VLMEvalKit's per-invocation subfolders (copies)
LMMS_METHODS = METHOD_OF_MODEL  # pdrop-eval's lmms-eval models


@dataclass(frozen=True)
class Score:
    benchmark: Benchmark
    value: float  # on the paper's printed scale (percent; MME in points)
    task: str  # the framework's task / dataset name
    source: Path  # the file the value was read from
    stderr: float | None = None  # the framework's standard error, on the same scale (None: not reported)
    documents: int | None = None  # documents scored (None: not reported)
    total: int | None = None  # documents the task has; more than `documents` in a partial run (--limit)

    @property
    def partial(self) -> bool:
        return self.documents is not None and self.total is not None and self.documents < self.total


@dataclass(frozen=True)
class Flops:
    """Mean cost per sample: TFLOPs in the paper convention (image tokens only) and measured (all
    tokens), and the image tokens a decoder layer sees on average, (1/L)·Σ_l n_l."""

    paper: float
    measured: float
    samples: int
    image_tokens: float


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
        image_tokens=sum(p.image_tokens * p.samples for p in parts) / total,
    )


def flops_by_task(run_stats: stats.RunStats) -> dict[str, Flops]:
    by_task: dict[str, list[Flops]] = {}
    for sample in run_stats.samples:
        cost = Flops(sample.stats.tflops_paper, sample.stats.tflops_actual, 1, average_image_tokens(sample.stats.image_tokens_per_layer))
        by_task.setdefault(sample.task, []).append(cost)
    return {task: mean_flops(parts) for task, parts in by_task.items()}


@dataclass
class Run:
    framework: str  # "lmms-eval" | "vlmeval"
    source: Path  # the results JSON, or the VLMEvalKit model folder
    adapter: str  # the framework's model name, e.g. llava_next_pdrop
    pretrained: str  # checkpoint path or hub id ("" when unknown)
    scores: list[Score]
    drop: DropConfig | None = None  # from the statistics file, or lmms-eval's model_args
    stats: stats.RunStats | None = None
    notes: list[str] = field(default_factory=list)
    # Without a drop config: the options that set it as the run recorded them (e.g. a budget), so that
    # runs of different unknown settings are never merged; the source folder where none were recorded.
    unknown_setting: str = ""
    started_in: Path | None = None  # the folder the framework was started from, where the results tell it
    documents: dict[str, DocumentResults] = field(default_factory=dict)  # task -> per-document results

    @property
    def checkpoint(self) -> str:
        """The checkpoint's identity ("" when unknown): a local folder as its resolved absolute path,
        whether the run named it relative to the folder it started in or absolutely; else (a hub id, or
        a folder not on this machine) the name as written."""
        return checkpoint_identity(self.pretrained, self.started_in)

    @property
    def flops(self) -> Flops | None:
        """Mean TFLOPs over all of the run's samples (None without a statistics file or samples)."""
        return mean_flops(flops_by_task(self.stats).values()) if self.stats else None

    def flops_for(self, task: str) -> Flops | None:
        """Mean TFLOPs of this run's samples of `task` (all samples if the file has no split)."""
        if self.stats is None:
            return None
        return flops_by_task(self.stats).get(task, self.flops)


def checkpoint_identity(pretrained: str, started_in: Path | None) -> str:
    written = pretrained.rstrip("/")
    if not written:
        return ""
    path = Path(written).expanduser()
    if not path.is_absolute():
        if started_in is None:
            return os.path.normpath(written)  # relative to a folder we do not know: as written
        path = started_in / path
    return os.path.realpath(path) if path.is_dir() else os.path.normpath(written)


def checkpoint_name(pretrained: str) -> str:
    """The last part of a checkpoint's path or hub id."""
    return Path(pretrained.rstrip("/")).name


def short_names(checkpoints) -> dict[str, str]:
    """A short, unique display name per checkpoint: the last path part, with as many parent parts as
    it takes to tell checkpoints apart (``/ckpt/runA/final``, ``/ckpt/runB/final`` -> ``runA/final``,
    ``runB/final``). Empty names are left out."""
    parts = {checkpoint: Path(checkpoint).parts for checkpoint in set(checkpoints) if checkpoint}
    depth = dict.fromkeys(parts, 1)
    while True:
        names = {checkpoint: str(Path(*path[-depth[checkpoint]:])) for checkpoint, path in parts.items()}
        taken = list(names.values())
        clashing = [checkpoint for checkpoint, name in names.items() if taken.count(name) > 1 and depth[checkpoint] < len(parts[checkpoint])]
        if not clashing:
            return names
        for checkpoint in clashing:
            depth[checkpoint] += 1


# ----- our statistics file -----------------------------------------------------------------------
def read_stats(path: Path) -> stats.RunStats:
    try:
        return stats.read_run_stats(path)
    except stats.StatsFileError as error:
        raise ReportInputError(str(error)) from None


def finite(value, path: Path, key: str) -> float:
    """A score read from `path` at `key`: a finite number, else an error naming both."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReportInputError(f"{path}: {key} is {value!r}, not a finite number")
    return float(value)


# ----- lmms-eval ---------------------------------------------------------------------------------
def _model_args_dict(model_args, path: Path) -> dict[str, str]:
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    try:
        return parse_key_values(str(model_args or ""), "model_args key")
    except ValueError as error:
        raise ReportInputError(f"{path}: config.model_args: {error}") from None


def _lmms_metrics(task_results: dict) -> dict[str, float]:
    """`{"anls,none": 0.5, "anls_stderr,none": ...}` -> `{"anls": 0.5}` (no filters, no standard errors:
    lmms-eval writes ``_stderr``, ``_stderr_clt`` and ``_stderr_clustered`` beside each metric)."""
    metrics = {}
    for key, value in task_results.items():
        name, sep, filter_name = key.partition(",")
        if sep and filter_name == "none" and "_stderr" not in name:
            metrics[name] = value
    return metrics


def lmms_setting(model: str, model_args: dict[str, str]) -> tuple[str, DropConfig | None]:
    """The checkpoint and drop config a pdrop-eval lmms-eval model ran with, from its model_args as the
    results file records them ("" and None for other models). Raises ValueError on bad arguments."""
    if model not in LMMS_METHODS:
        return model_args.get("pretrained", ""), None
    checkpoint = presets.resolve_model_args(model_args.get("model_preset"), {"pretrained": model_args.get("pretrained")})
    if "budget" in model_args:  # solved for the checkpoint when the model loaded: the statistics file has it
        return checkpoint.get("pretrained", ""), None
    drop_args = {**model_drop_defaults(model), **model_args}  # as the model resolved them
    return checkpoint.get("pretrained", ""), resolve_drop(LMMS_METHODS[model], drop_args, owner=model)


def lmms_drop_options(model_args: dict[str, str]) -> str:
    """The model_args that set the drop (a budget and the schedule's shape), as recorded: what tells
    runs apart when no statistics file gives their solved drop config."""
    keys = {*OPTION_KEYS, *BUDGET_KEYS, "drop_preset"}
    return ",".join(f"{key}={value}" for key, value in sorted(model_args.items()) if key in keys)


def lmms_started_in(config: dict, results_file: Path) -> Path | None:
    """The folder lmms-eval was started from: it writes ``<output_path>/<model>/<date>_results.json``, so
    a relative output_path names it from the results file's place; None when that cannot be told."""
    output_path = str((config.get("resolved_cli_args") or {}).get("output_path") or "")
    relative = Path(output_path)
    if not output_path or relative.is_absolute() or ".." in relative.parts:
        return None
    output_dir = results_file.resolve().parent.parent
    depth = len(relative.parts)
    if depth and output_dir.parts[-depth:] != relative.parts:
        return None
    return Path(*output_dir.parts[: len(output_dir.parts) - depth])


def _lmms_stderr(task_results: dict, metric: str, factor: float) -> float | None:
    value = task_results.get(f"{metric}_stderr,none")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None  # lmms-eval writes "N/A" where it computes none
    return value * factor


def _lmms_counts(data: dict, task: str) -> tuple[int | None, int | None]:
    """(documents scored, documents of the task) from the results' ``n-samples``."""
    counts = (data.get("n-samples") or {}).get(task) or {}
    scored, total = counts.get("effective"), counts.get("original")
    return _count(scored), _count(total)


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _lmms_aggregation(data: dict, task: str, metric: str) -> str:
    """How lmms-eval aggregated `metric` of `task` (``mean``, or the name of the task's own function)."""
    for entry in ((data.get("configs") or {}).get(task) or {}).get("metric_list") or []:
        if isinstance(entry, dict) and entry.get("metric") == metric:
            aggregation = str(entry.get("aggregation", "mean"))
            match = re.match(r"<function (\S+)", aggregation)  # lmms-eval records a function as its repr
            return match[1] if match else aggregation
    return "unknown"


def read_lmms_results(path: Path) -> Run:
    what = "an lmms-eval results file (<date>_results.json)"
    data = read_json_object(path, what)
    require(data, path, what, "results", "config")
    results, config = data["results"], data["config"]
    if not isinstance(results, dict) or not isinstance(config, dict) or "model" not in config:
        raise ReportInputError(f"{path}: not {what}: 'results' and 'config.model' are missing or malformed")
    model_args = _model_args_dict(config.get("model_args"), path)
    try:
        pretrained, drop = lmms_setting(str(config["model"]), model_args)
    except (TypeError, ValueError) as error:
        raise ReportInputError(f"{path}: config.model_args {config.get('model_args')!r}: {error}") from None
    run = Run("lmms-eval", path, str(config["model"]), pretrained, scores=[], drop=drop, started_in=lmms_started_in(config, path))
    if drop is None and config["model"] in LMMS_METHODS:
        run.unknown_setting = lmms_drop_options(model_args)
    groups = {name for name, subtasks in (data.get("group_subtasks") or {}).items() if subtasks}
    for task, task_results in results.items():
        if task in groups:  # a group's entry repeats its subtasks (or nothing); the subtasks are read
            continue
        if not isinstance(task_results, dict):
            raise ReportInputError(f"{path}: results.{task} should be an object")
        metrics = _lmms_metrics(task_results)
        chosen = lmms_task_metric(task, metrics)
        if chosen is None:
            run.notes.append(f"{path}: task {task!r} reports no metric the report knows ({', '.join(sorted(metrics)) or 'none'}); not scored")
            continue
        benchmark, metric = chosen
        value = finite(metrics[metric], path, f"results.{task}.{metric},none")
        factor = LMMS_METRIC_FACTORS[metric]
        scored, total = _lmms_counts(data, task)
        run.scores.append(Score(benchmark, value * factor, task, path, _lmms_stderr(task_results, metric, factor), scored, total))
        samples_file = lmms_samples_path(path, task)
        if samples_file.is_file():
            run.documents[task] = DocumentResults(task, metric, _lmms_aggregation(data, task, metric), factor, samples_file)
        for sub_metric in sorted(set(metrics) - {metric}):
            _add_sub_metric(run, data, task, benchmark, sub_metric, metrics[sub_metric], task_results)
    _attach_lmms_stats(run, config.get("model_args"))
    return run


def _add_sub_metric(run: Run, data: dict, task: str, benchmark: Benchmark, metric: str, value, task_results: dict) -> None:
    """A further metric the task reports (pdrop_synth's local / counting exact match, POPE's precision):
    a column of its own in the leaderboard, never in the average; a value that is not a finite number
    (a metric over no documents of a partial run) is left out with a note."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        run.notes.append(f"{run.source}: {task} reports {metric} = {value!r}; left out")
        return
    sub, factor = lmms_sub_metric(benchmark, metric)
    scored, total = _lmms_counts(data, task)
    run.scores.append(Score(sub, value * factor, task, run.source, _lmms_stderr(task_results, metric, factor), scored, total))


def _attach_lmms_stats(run: Run, model_args) -> None:
    """Give `run` the statistics file written for it, `<date>_pdrop_stats.json`, after checking its
    link: it names this results file, records the same model_args and the drop setting they give."""
    path = stats.lmms_stats_path(run.source)
    if not path.is_file():
        run.notes.append(f"{run.source}: no statistics file for this run ({path.name}), so no TFLOPs")
        return
    run_stats = read_stats(path)
    if run_stats.results_file != run.source.name or run_stats.model != run.adapter:
        raise ReportInputError(
            f"{path}: belongs to {run_stats.model}'s results file {run_stats.results_file!r}, not to "
            f"{run.source} ({run.adapter}); rename or remove it"
        )
    if run_stats.model_args != model_args:
        raise ReportInputError(
            f"{path}: records model_args {run_stats.model_args!r}, but {run.source} was run with {model_args!r}; "
            "these statistics are not this run's"
        )
    if run.drop is not None and run_stats.drop != run.drop:
        raise ReportInputError(
            f"{path}: records drop setting {run_stats.drop.describe()}, but the model_args of {run.source} "
            f"give {run.drop.describe()}"
        )
    run.stats, run.drop = run_stats, run_stats.drop
    run.pretrained = run.pretrained or run_stats.pretrained


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
        value = float(row[column])
    except (KeyError, TypeError, ValueError):
        raise ReportInputError(f"{path}: no numeric {column!r} column in {list(row)}") from None
    return finite(value, path, f"column {column!r}")


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
    """`<work_dir>/<model>/`: `<model>_<dataset>_acc.csv` / `_score.csv`, `status.json`, and our
    `<model>_pdrop_stats.json` (linked to that status.json)."""
    status_path = folder / stats.VLMEVAL_RESULTS_FILE
    status = read_json_object(status_path, "VLMEvalKit's status.json") if status_path.exists() else {}
    model = str(status.get("model_name") or folder.name)
    run = Run("vlmeval", folder, model, "", scores=[], unknown_setting=f"setting not recorded: {folder}")
    prefix = f"{model}_"
    recorded = status.get("datasets", {})
    for path in sorted(folder.glob("*.csv")):
        match = VLMEVAL_SCORE_FILE.match(path.name)
        if not match or not path.name.startswith(prefix):
            continue
        dataset = match["dataset"][len(prefix):]
        if dataset in recorded or not status:
            run.scores.append(read_vlmeval_score(path, dataset))
    scored = {score.task for score in run.scores}
    for dataset, entry in recorded.items():
        if dataset not in scored:
            entry = entry if isinstance(entry, dict) else {}
            reason = entry.get("error_message") or entry.get("skip_reason") or "no score file; no reason recorded"
            run.notes.append(f"{status_path}: {dataset} was not scored ({str(reason)[:160]}); left out")
    _attach_vlmeval_stats(run)
    return run


def _attach_vlmeval_stats(run: Run) -> None:
    path = stats.vlmeval_stats_path(run.source, run.adapter)
    if not path.is_file():
        run.notes.append(f"{run.source}: no statistics file for this run ({path.name}), so no TFLOPs")
        return
    run_stats = read_stats(path)
    if (run_stats.framework, run_stats.model, run_stats.results_file) != ("vlmeval", run.adapter, stats.VLMEVAL_RESULTS_FILE):
        raise ReportInputError(
            f"{path}: belongs to {run_stats.framework} model {run_stats.model!r} ({run_stats.results_file}), "
            f"not to the VLMEvalKit model folder {run.source} ({run.adapter})"
        )
    run.stats, run.drop, run.pretrained = run_stats, run_stats.drop, run_stats.pretrained


# ----- finding runs --------------------------------------------------------------------------------
def _runs_in_folder(folder: Path, names: list[str]) -> list[Run]:
    runs = [read_lmms_results(folder / name) for name in sorted(names) if name.endswith(stats.LMMS_RESULTS_SUFFIX)]
    has_vlmeval = stats.VLMEVAL_RESULTS_FILE in names or any(VLMEVAL_SCORE_FILE.match(name) for name in names)
    if has_vlmeval:
        runs.append(read_vlmeval_model_dir(folder))
    return runs


def find_runs(paths) -> list[Run]:
    """All runs under the given folders (searched recursively) or results files."""
    runs = []
    for path in map(Path, paths):
        if path.is_file():
            if not path.name.endswith(stats.LMMS_RESULTS_SUFFIX):
                raise ReportInputError(f"{path}: not an lmms-eval results file (*{stats.LMMS_RESULTS_SUFFIX}) nor a run folder")
            runs.append(read_lmms_results(path))
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"no such run folder or results file: {path}")
        found = []
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = sorted(d for d in subfolders if not VLMEVAL_EVAL_ID.match(d))
            found.extend(_runs_in_folder(Path(folder), names))
        if not found:
            raise ReportInputError(
                f"{path}: no lmms-eval results (*{stats.LMMS_RESULTS_SUFFIX}) or VLMEvalKit scores (status.json, *_acc.csv, *_score.csv) in it"
            )
        runs.extend(found)
    return runs
