"""Start-up stays light: importing the package, the lmms-eval manifests (lmms-eval imports them on every
run, whatever the model), the report, the FLOPs accountant and the options resolver, and running the
commands that only compute or read files, load neither torch nor transformers."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers")


def _heavy_modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(name for name in {HEAVY!r} if name in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return eval(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    [
        "pdrop_eval", "pdrop_eval.adapters.lmms", "pdrop_eval.report", "pdrop_eval.flops", "pdrop_eval.options", "pdrop_eval.pipeline",
        "pdrop_eval.budget", "pdrop_eval.token_map", "pdrop_eval.show", "pdrop_eval.study", "pdrop_eval.models",
    ],
)
def test_importing_loads_no_torch_or_transformers(module):
    assert _heavy_modules_after(f"import {module}") == []


@pytest.mark.parametrize(
    "argv", [["flops"], ["report", "--help"], ["report", "--layout", "paper-table5"], ["schedule", "--tokens", "192,128,64", "--tflops", "50%"]]
)
def test_file_and_arithmetic_commands_load_no_torch_or_transformers(argv):
    code = f"from pdrop_eval.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _heavy_modules_after(code) == []


def test_drop_configs_are_computed_without_the_engine():
    assert _heavy_modules_after("from pdrop_eval import DropConfig\nDropConfig.random().kept_counts(576)") == []
