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

from pdrop_eval.engine.config import DropConfig
from pdrop_eval.report import build_report
from pdrop_eval.report.files import OutputExistsError, write_text
from pdrop_eval.report.plot import write_plot

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO_ROOT / "tasks"
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


SWEEP_METHODS = {"pdrop": "pyramid", "fastv": "fastv"}


def sweep_settings(method: str, values: list[float], with_vanilla: bool, layer_list=(8, 16, 24), fastv_k: int = 2) -> list[Setting]:
    """Vanilla (optional) plus one setting per λ (pdrop) or R (fastv)."""
    settings = [Setting("vanilla", DropConfig.none())] if with_vanilla else []
    for value in values:
        if method == "pdrop":
            settings.append(Setting(f"pdrop-lambda{value:g}", DropConfig.pyramid(layer_list=layer_list, ratio=value)))
        elif method == "fastv":
            settings.append(Setting(f"fastv-k{fastv_k}-r{value:g}", DropConfig.fastv(k=fastv_k, r=value)))
        else:
            raise ValueError(f"method must be pdrop or fastv, got {method!r}")
    return settings


def budget_settings(
    pretrained: str,
    method: str,
    budgets: list[str],
    with_vanilla: bool,
    convention: str = "avg_layer",
    layer_list=None,
    fastv_k: int = 2,
    image_tokens: int | None = None,
) -> list[Setting]:
    """Vanilla (optional) plus one setting per token budget (e.g. "128", "25%" of N), each solved for the
    checkpoint (`pdrop_eval.engine.budget.solve_for_checkpoint`) and printed."""
    from pdrop_eval.engine import budget
    from pdrop_eval.options import load_config

    model_config = load_config(pretrained).to_dict()
    shape = {"layer_list": layer_list or budget.BUDGET_LAYER_LIST} if method == "pdrop" else {"fastv_k": fastv_k}
    settings = [Setting("vanilla", DropConfig.none())] if with_vanilla else []
    for text in budgets:
        solution = budget.solve_for_checkpoint(
            text, model_config, SWEEP_METHODS[method], convention=convention, image_tokens=image_tokens, **shape
        )
        schedule = solution.schedule
        print(f"budget {solution.budget.describe()}: {schedule.config.describe()}; at N={schedule.num_image_tokens} "
              f"{schedule.avg_image_tokens:g} image tokens per layer on average, {schedule.kept_after_drop} after the "
              f"drop, {schedule.tflops:.4g} TFLOPs", flush=True)
        settings.append(Setting(f"{method}-{convention}-{text.replace('%', 'pct')}", schedule.config))
    return settings


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
    model_args = ",".join(filter(None, [f"pretrained={pretrained}", setting.drop.to_args()]))
    command = [sys.executable, "-c", LMMS_EVAL_MAIN, "--model", setting.drop.spec.lmms_model, "--model_args", model_args]
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
) -> str:
    """Run every setting of each (checkpoint, settings) pair of `plan`, then write `<report_name>.md`
    and `.png` (x axis `plot_x`: TFLOPs or tokens) into `out_dir`; returns the markdown. Runs go to
    runs/<setting>/, or runs/<checkpoint>/<setting>/ when the plan holds several checkpoints."""
    from pdrop_eval.report.runs import checkpoint_name

    out_dir = Path(out_dir)
    names = [checkpoint_name(pretrained) for pretrained, _ in plan]
    if len(set(names)) != len(names):
        raise ValueError(f"the checkpoints' folder names must differ, got {names}")
    for pretrained, settings in plan:
        check_settings_fit(pretrained, settings)
    markdown_path, plot_path = out_dir / f"{report_name}.md", out_dir / f"{report_name}.png"
    prepare_out_dir(out_dir, [markdown_path.name, plot_path.name], force)
    runs_dir = out_dir / RUNS_FOLDER
    for name, (pretrained, settings) in zip(names, plan):
        for setting in settings:
            label = f"{name}/{setting.name}" if len(plan) > 1 else setting.name
            output_path = runs_dir / label
            run_lmms_eval(lmms_eval_command(pretrained, setting, tasks, output_path, options), output_path, label)
    report = build_report([runs_dir])
    write_text(markdown_path, report.markdown, force=False)
    write_plot(report.runs, plot_path, x=plot_x)
    return report.markdown + f"\nReport: {markdown_path}\nPlot: {plot_path}\n"
