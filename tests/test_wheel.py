"""The wheel as a user gets it: built from the package's files, installed into a fresh virtual environment
outside the checkout, and run from there: `pdrop-eval report --compare-paper` on the demo's lmms-eval runs
(the paper's tables) and one lmms-eval run on a bundled task (the tasks folder, the model plugin); the demo's
checkpoints are there too."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pdrop_eval.cli import main

REPO = Path(__file__).resolve().parents[1]
WHEEL_SOURCES = ("pyproject.toml", "README.md", "pdrop_eval")


def run(command, cwd, env):
    completed = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, env, cwd): the wheel installed into a venv that reuses this environment's torch, transformers and
    lmms-eval (--system-site-packages) but not the checkout's editable pdrop_eval, which it shadows."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy, so that the build leaves no build/ or egg-info in the checkout
    source.mkdir()
    for name in WHEEL_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source], root, env)
    (wheel,) = (root / "dist").glob("pdrop_eval-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], root, env)
    # This environment's pip (seen through the system site-packages) installs into the venv.
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", wheel], root, env)
    cwd = root / "elsewhere"
    cwd.mkdir()
    return venv, env, cwd


def test_installed_wheel_is_the_one_imported(installed):
    venv, env, cwd = installed
    printed = run([venv / "bin" / "python", "-c", "import pdrop_eval.package_data as d, pdrop_eval.checkpoints as c; "
                   "print(d.__file__); print(d.TASKS_DIR); print(c.shipped_checkpoint('vanilla'))"], cwd, env)
    module, tasks, demo_checkpoint = map(Path, printed.split())
    assert all(path.is_relative_to(venv) for path in (module, tasks, demo_checkpoint))


def test_report_compares_with_the_paper_from_the_wheel(installed, demo_run, tmp_path):
    venv, env, cwd = installed
    demo_dir, _ = demo_run
    arguments = ["report", demo_dir / "runs", "--layout", "paper-table5", "--compare-paper", "--paper-model", "LLaVA-1.5-7B"]
    from_wheel = run([venv / "bin" / "pdrop-eval", *arguments], cwd, env)
    assert "↳ paper LLaVA-1.5-7B, Table 5" in from_wheel  # the paper's tables were found in the wheel
    expected = tmp_path / "checkout.md"
    assert main([str(part) for part in arguments] + ["--out", str(expected)]) == 0
    assert from_wheel.strip() == expected.read_text().strip()


def test_lmms_eval_runs_a_bundled_task_through_the_wheel(installed, demo_run):
    venv, env, cwd = installed
    demo_dir, _ = demo_run
    python = venv / "bin" / "python"
    tasks = run([python, "-m", "pdrop_eval.tasks"], cwd, env).strip()  # as the README passes --include_path
    cpu_startup = run([python, "-c", "import pathlib, pdrop_eval.adapters.lmms as m; print(pathlib.Path(m.__file__).parent / 'cpu_startup')"],
                      cwd, env).strip()
    lmms_env = {**env, "PYTHONPATH": cpu_startup, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(cwd / "datasets")}
    output = cwd / "lmms"
    log = run([python, "-m", "lmms_eval", "--model", "llava_next_pdrop", "--model_args",
               f"pretrained={demo_dir.parent / 'tiny-llava'},dtype=float32,max_new_tokens=4", "--tasks", "pdrop_local_vqa",
               "--include_path", tasks, "--limit", "1", "--batch_size", "1", "--device", "cpu", "--output_path", output], cwd, lmms_env)
    results = list(output.glob("**/*_results.json"))  # lmms-eval exits 0 on failure: the files tell
    assert len(results) == 1, log[-3000:]
    assert "pdrop_local_vqa" in json.loads(results[0].read_text())["results"]
    stats = json.loads(results[0].with_name(results[0].name.removesuffix("_results.json") + "_pdrop_stats.json").read_text())
    assert stats["num_samples"] == 1 and stats["model"] == "llava_next_pdrop"
