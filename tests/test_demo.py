"""`pdrop-eval demo` end to end: tiny model, three real lmms-eval runs, the leaderboard with FLOPs."""

from pathlib import Path

from pdrop_eval.cli import main


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


def test_demo_refuses_to_replace_results_without_force(demo_run, capsys):
    out_dir, _ = demo_run
    before = (out_dir / "report.md").read_text()
    assert main(["demo", "--out-dir", str(out_dir), "--pretrained", str(out_dir / "tiny-llava"), "--tasks", "pdrop_local"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out_dir / "report.md").read_text() == before and Path(out_dir / "runs" / "vanilla").is_dir()
