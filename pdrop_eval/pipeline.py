"""Evaluate several drop settings of one checkpoint through the real lmms-eval, then report.

`pdrop-eval sweep` and `pdrop-eval demo` both come here. Each setting is one `python -m lmms_eval`
command with its own `--output_path` (our adapters write their statistics file beside the results
file lmms-eval saved for the run). lmms-eval exits 0 even when an evaluation fails, so each setting's
results file is checked afterwards.
"""

from __future__ import annotations

import codecs
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.framework_names import names_for
from pdrop_eval.engine.config import SWEPT_METHODS, DropConfig, MethodSpec
from pdrop_eval.package_data import TASKS_DIR
from pdrop_eval.report import build_report
from pdrop_eval.report.files import OutputExistsError, write_text
from pdrop_eval.report.plot import write_plot

# lmms-eval's own entry point, after pdrop_eval.compat makes torchvision importable on CPU-only torch.
LMMS_EVAL_MAIN = (
    "import runpy; from pdrop_eval.compat import ensure_torchvision_importable; ensure_torchvision_importable(); "
    "runpy.run_module('lmms_eval', run_name='__main__', alter_sys=True)"
)
RUNS_FOLDER = "runs"
LOG_FILE = "lmms_eval.log"  # in each setting's output folder, with the command on its first line


class PipelineError(RuntimeError):
    """An evaluation did not produce its results; the message says which and where the log is."""


@dataclass(frozen=True)
class Setting:
    name: str  # folder name under runs/
    drop: DropConfig


def swept_method(method: str, shape: dict) -> MethodSpec:
    """The method a sweep names by its kind (pdrop, fastv, random), after checking that it takes the
    drop options in `shape`."""
    if method not in SWEPT_METHODS:
        raise ValueError(f"method must be one of {', '.join(SWEPT_METHODS)}, got {method!r}")
    SWEPT_METHODS[method].check_keys(shape)
    return SWEPT_METHODS[method]


def sweep_settings(method: str, values: list[float], with_vanilla: bool, shape: dict | None = None) -> list[Setting]:
    """Vanilla (optional) plus one setting per value of `method`'s swept option (its `sweep_key`: λ for
    pdrop and random, R for fastv); `shape` holds other drop options (layer_list, fastv_k), the
    method's defaults where left out."""
    shape = shape or {}
    spec = swept_method(method, shape)
    settings = [Setting("vanilla", DropConfig.none())] if with_vanilla else []
    for value in values:
        config = DropConfig.from_args({**shape, spec.sweep_key: value}, method=spec.name)
        settings.append(Setting(f"{method}-{spec.sweep_key}{value:g}", config))
    return settings


def budget_settings(
    pretrained: str,
    method: str,
    budgets: list[str],
    with_vanilla: bool,
    convention: str = "avg_layer",
    shape: dict | None = None,
    image_tokens: int | None = None,
) -> list[Setting]:
    """Vanilla (optional) plus one setting per token budget (e.g. "128", "25%" of N), each solved for the
    checkpoint (`pdrop_eval.budget.solve_for_checkpoint`, whose layer_list / fastv_k defaults
    apply where `shape` leaves them out) and printed."""
    from pdrop_eval import budget
    from pdrop_eval.options import load_config

    shape = shape or {}
    spec = swept_method(method, shape)
    if spec.name not in budget.SOLVABLE_METHODS:
        solved = [kind for kind, swept in SWEPT_METHODS.items() if swept.name in budget.SOLVABLE_METHODS]
        raise ValueError(f"token budgets are solved for {', '.join(solved)}, not {method}; sweep {method} with --values instead")
    model_config = load_config(pretrained).to_dict()
    settings = [Setting("vanilla", DropConfig.none())] if with_vanilla else []
    for text in budgets:
        solution = budget.solve_for_checkpoint(
            text, model_config, spec.name, convention=convention, image_tokens=image_tokens, image_tokens_option="--image-tokens N", **shape
        )
        schedule = solution.schedule
        print(f"budget {solution.budget.describe()}: {schedule.config.describe()}; at N={schedule.num_image_tokens} "
              f"{schedule.avg_image_tokens:g} image tokens per layer on average, {schedule.kept_after_drop} after the "
              f"drop, {schedule.tflops:.4g} TFLOPs", flush=True)
        settings.append(Setting(f"{method}-{convention}-{text.replace('%', 'pct')}", schedule.config))
    return settings


def checkpoint_folders(checkpoints: list[str]) -> list[str]:
    """One folder name per checkpoint for its runs: the name the report labels it with
    (`short_names`: the last path part, with parent parts where two would clash), '/' written '__'."""
    from pdrop_eval.report.runs import short_names

    keys = [pretrained.rstrip("/") for pretrained in checkpoints]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a checkpoint is named twice: {checkpoints}")
    names = short_names(keys)
    return [names[key].replace("/", "__") for key in keys]


def check_settings_fit(pretrained: str, settings: list[Setting]) -> None:
    """Every setting's drop layers exist in the checkpoint: found before the first (long) run."""
    from pdrop_eval.options import load_config

    num_layers = load_config(pretrained).get_text_config().num_hidden_layers
    for setting in settings:
        try:
            setting.drop.boundaries(num_layers)
        except ValueError as error:
            raise ValueError(f"setting {setting.name!r} does not fit {pretrained}: {error}") from None


def lmms_eval_command(pretrained: str, setting: Setting, tasks: list[str], output_path: Path, options: dict) -> list[str]:
    """The lmms-eval command line of one setting; `options` are extra flags (limit, batch_size,
    device; True for a flag without value, e.g. force_simple)."""
    from pdrop_eval.options import checkpoint_architecture

    model_args = ",".join(filter(None, [f"pretrained={pretrained}", setting.drop.to_args()]))
    model = names_for(setting.drop.method, checkpoint_architecture(pretrained)).model  # the model of the checkpoint's family
    command = [sys.executable, "-c", LMMS_EVAL_MAIN, "--model", model, "--model_args", model_args]
    command += ["--tasks", ",".join(tasks), "--include_path", str(TASKS_DIR), "--output_path", str(output_path), "--log_samples"]
    for flag, value in options.items():
        command += [f"--{flag}"] if value is True else [f"--{flag}", str(value)]
    return command


def prepare_out_dir(out_dir: Path, outputs: list[str], force: bool) -> None:
    """Refuse to touch earlier results unless `force`; with it, remove only what we write."""
    existing = [out_dir / name for name in [RUNS_FOLDER, *outputs] if (out_dir / name).exists()]
    if existing and not force:
        raise OutputExistsError(f"{existing[0]} exists; pass --force to replace the earlier results in {out_dir}")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def run_lmms_eval(command: list[str], output_path: Path, label: str | None = None) -> None:
    """Run one lmms-eval command, its output into the log as it comes, and a progress line on stdout each
    time one of its progress bars moves by a tenth (lmms-eval itself would be silent here for minutes).
    Progress lines start with `label` (default: the output folder's name)."""
    output_path.mkdir(parents=True, exist_ok=True)
    log_path = output_path / LOG_FILE
    print(f"running lmms-eval: {shlex.join(command[3:])}", flush=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    progress = ProgressEcho(label or output_path.name)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with log_path.open("w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        pending = ""
        while chunk := process.stdout.read1(4096):  # whatever is there: progress shows as it happens
            text = decoder.decode(chunk)
            log.write(text)
            *lines, pending = re.split(r"[\r\n]", pending + text)  # a bar's carriage-return redraws count as lines
            for line in lines:
                progress.feed(line)
        progress.feed(pending)
        returncode = process.wait()
    if returncode != 0 or not any(output_path.glob("*/*_results.json")):
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise PipelineError(f"lmms-eval wrote no results into {output_path} (exit code {returncode}); see {log_path}:\n{tail}")
    print(f"  {progress.label}: done in {time.perf_counter() - started:.0f} s", flush=True)


class ProgressEcho:
    """Turns tqdm bars in a log ("Model Responding:  40%|####  | 8/20 [...]") into one printed line per
    tenth of each bar."""

    BAR = re.compile(r"^(?P<desc>[^|]*?):?\s+(?P<percent>\d+)%\|.*?(?P<done>\d+)/(?P<total>\d+)")

    def __init__(self, label: str):
        self.label = label
        self.shown: dict[str, int] = {}

    def feed(self, line: str) -> None:
        match = self.BAR.match(line.strip())
        if not match:
            return
        desc, tenth = match["desc"].strip() or "progress", int(match["percent"]) // 10
        if tenth > self.shown.get(desc, -1):
            self.shown[desc] = tenth
            print(f"  {self.label}: {desc} {match['done']}/{match['total']}", flush=True)


def evaluate_and_report(
    plan: list[tuple[str, list[Setting]]],
    tasks: list[str],
    out_dir: Path,
    options: dict,
    report_name: str,
    force: bool = False,
    plot_x: str = "tflops",
    leave_out_failed: bool = False,
) -> str:
    """Run every setting of each (checkpoint, settings) pair of `plan`, then write `<report_name>.md`
    and `.png` (x axis `plot_x`: TFLOPs or tokens) into `out_dir`; returns the markdown. Runs go to
    runs/<setting>/, or runs/<checkpoint>/<setting>/ when the plan holds several checkpoints.
    `leave_out_failed`: a setting whose run fails is left out of the report, its error printed, instead
    of stopping the pipeline."""
    out_dir = Path(out_dir)
    names = checkpoint_folders([pretrained for pretrained, _ in plan])
    for pretrained, settings in plan:
        check_settings_fit(pretrained, settings)
    markdown_path, plot_path = out_dir / f"{report_name}.md", out_dir / f"{report_name}.png"
    prepare_out_dir(out_dir, [markdown_path.name, plot_path.name], force)
    runs_dir = out_dir / RUNS_FOLDER
    for name, (pretrained, settings) in zip(names, plan):
        for setting in settings:
            label = f"{name}/{setting.name}" if len(plan) > 1 else setting.name
            output_path = runs_dir / label
            try:
                run_lmms_eval(lmms_eval_command(pretrained, setting, tasks, output_path, options), output_path, label)
            except PipelineError as error:
                if not leave_out_failed:
                    raise
                print(f"  {label}: left out of the report: {error}", flush=True)
    report = build_report([runs_dir])
    write_text(markdown_path, report.markdown, force=False)
    write_plot(report.runs, plot_path, x=plot_x)
    return report.markdown + f"\nReport: {markdown_path}\nPlot: {plot_path}\n"
