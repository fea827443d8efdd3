"""`pdrop-eval demo` end to end: real lmms-eval runs, progress while they run, the leaderboard with FLOPs;
by default on the two shipped pdrop_synth-trained checkpoints."""

import re
import subprocess
from pathlib import Path

import pytest

from pdrop_eval.checkpoints import shipped_checkpoint
from pdrop_eval.cli import main
from pdrop_eval.commands.demo import demo_settings
from pdrop_eval.engine.config import DropConfig


def test_demo_ends_with_the_report(demo_run):
    out_dir, stdout = demo_run
    report = (out_dir / "report.md").read_text()
    assert report.startswith("## leaderboard: 3 model/method rows from 3 runs")
    assert report in stdout and stdout.rstrip().endswith(f"Plot: {out_dir / 'report.png'}")
    assert (out_dir / "report.png").read_bytes().startswith(b"\x89PNG")
    methods = [line.split("|")[2].strip() for line in report.splitlines() if line.startswith("| tiny-llava")]
    assert methods == ["vanilla", "FastV K=2 R=0.5", "PDrop λ=0.5", "Δ PDrop λ=0.5 − FastV K=2 R=0.5"]
    for task in ("pdrop_local_mcq", "pdrop_local_vqa", "pdrop_local_yesno", "pdrop_local_mcq_ll"):
        assert f" {task} " in report
    # Progress while lmms-eval runs: its bar echoed per setting, and a line when each run ends.
    for name, model in (("vanilla", "llava_next_vanilla"), ("pdrop-lambda0.5", "llava_next_pdrop"), ("fastv", "llava_fastv")):
        assert f"  {name}: {model} answering 0/" in stdout and f"  {name}: done in " in stdout
        assert re.search(rf"^  {name}: {model} answering (\d+)/\1$", stdout, re.MULTILINE)  # the finished bar too


def test_demo_refuses_to_replace_results_without_force(demo_run, capsys):
    out_dir, _ = demo_run
    before = (out_dir / "report.md").read_text()
    assert main(["demo", "--out-dir", str(out_dir), "--pretrained", str(out_dir.parent / "tiny-llava"), "--tasks", "pdrop_local"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out_dir / "report.md").read_text() == before and Path(out_dir / "runs" / "vanilla").is_dir()


def test_demo_settings_are_the_papers_comparison():
    settings = {setting.name: setting.drop for setting in demo_settings()}
    assert list(settings) == ["vanilla", "pdrop-lambda0.3", "pdrop-lambda0.4", "pdrop-lambda0.5", "pdrop-lambda0.6", "fastv", "random"]
    assert settings["vanilla"] == DropConfig.none()
    for ratio in (0.3, 0.4, 0.5, 0.6):
        assert settings[f"pdrop-lambda{ratio}"] == DropConfig.pyramid(layer_list=(8, 16, 24), ratio=ratio)
    assert settings["fastv"] == DropConfig.fastv(k=2, r=0.5)
    assert settings["random"] == DropConfig.random(DropConfig.pyramid(layer_list=(8, 16, 24), ratio=0.5))


def test_demo_refuses_an_unknown_setting(tmp_path, capsys):
    assert main(["demo", "--only", "vanilla,pdrop-lambda0.7", "--out-dir", str(tmp_path / "out")]) == 2
    assert "pdrop-lambda0.7" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["vanilla", "pdrop"])
def test_shipped_checkpoints_load(name):
    from pdrop_eval.options import load_config

    config = load_config(str(shipped_checkpoint(name)))
    assert config.model_type == "llava_next" and config.get_text_config().num_hidden_layers == 32


def test_default_demo_runs_the_shipped_model_on_pdrop_synth(tmp_path):
    """The README's command, a few documents per setting: both shipped checkpoints, pdrop_synth, and the
    random control labelled as its own method."""
    out_dir = tmp_path / "out"
    command = ["pdrop-eval", "demo", "--only", "vanilla,random", "--limit", "6", "--out-dir", str(out_dir)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = (out_dir / "report.md").read_text()
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]) for line in report.splitlines() if line.startswith("| pdrop-synth-")}
    assert rows == {(model, method) for model in ("pdrop-synth-vanilla", "pdrop-synth-pdrop") for method in ("vanilla", "Random (PDrop λ=0.5)")}
    assert " pdrop_synth " in report
    assert f"4 lmms-eval runs of {shipped_checkpoint('vanilla')} and {shipped_checkpoint('pdrop')} on pdrop_synth" in completed.stdout
    assert "pdrop-synth-pdrop/random: done in" in completed.stdout  # progress lines name the checkpoint
    assert sorted(path.name for path in (out_dir / "runs").iterdir()) == ["pdrop-synth-pdrop", "pdrop-synth-vanilla"]
