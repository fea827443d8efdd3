"""Inputs that used to end in a wrong table without a word (issue 31): budget runs merged into one row,
repeated runs' costs pooled, statistics that contradict their own drop config, options that selected
nothing, one checkpoint under two names, partial runs and standard errors left unsaid. Fake runs are
the demo's real lmms-eval files, copied and edited."""

import json
import os
import re
import shutil

import pytest
from test_report_runs import copy_run, edit_json, table

from pdrop_eval.cli import main
from pdrop_eval.report import ReportInputError, build_report
from pdrop_eval.report.plot import draw_plot, plot_points, pyplot, repeated_points


def set_model_args(old: str, new: str):
    def change(data):
        holder = data["config"] if "config" in data else data
        holder["model_args"] = holder["model_args"].replace(old, new)
    return change


def test_budget_runs_without_statistics_stay_apart(demo_run, tmp_path):
    """Two budgets solved when the model loaded, their statistics files gone: the drop config is unknown,
    so the rows are keyed by the budget options the results recorded, one row each."""
    demo_dir, _ = demo_run
    for folder, budget in (("a", "budget=16,budget_image_tokens=46"), ("b", "budget=34.8%")):
        results, stats = copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / folder)
        edit_json(results, set_model_args("layer_list=8;16;24,lambda=0.5,position_mode=compact", budget))
        stats.unlink()
    rows = table(build_report([tmp_path]).markdown)
    assert set(rows) == {("tiny-llava", "llava_next_pdrop (budget=16,budget_image_tokens=46)"),
                         ("tiny-llava", "llava_next_pdrop (budget=34.8%)")}


def slower_copy(data):
    for sample in data["samples"]:
        sample["tflops_actual"] *= 1.5


def test_repeated_runs_flag_their_costs_and_are_not_a_curve(demo_run, tmp_path):
    """The same setting run twice (same documents): each run's measured TFLOPs are shown and flagged,
    never pooled, and the plot draws the two runs as unjoined points, not a curve."""
    demo_dir, _ = demo_run
    copy_run(demo_dir, "fastv", tmp_path / "a")
    _results, stats = copy_run(demo_dir, "fastv", tmp_path / "b")
    edit_json(stats, slower_copy)
    report = build_report([tmp_path])
    row = table(report.markdown)[("tiny-llava", "FastV K=2 R=0.5")]
    first = json.loads(next((tmp_path / "a").glob("*/*_pdrop_stats.json")).read_text())["samples"]
    measured = sum(s["tflops_actual"] for s in first) / len(first)
    assert row["TFLOPs (measured)"] == f"{measured:.3g} ≠ {measured * 1.5:.3g} ‡"
    assert row["TFLOPs (paper conv.)"] == f"{first[0]['tflops_paper']:.3g}"  # equal in both runs: shown once
    assert "repeated runs of this setting count the same documents" in report.markdown
    assert "pdrop_local_vqa" not in plot_points(report.runs)
    (points,) = repeated_points(report.runs)["pdrop_local_vqa"].values()
    assert len(points) == 2
    figure = draw_plot(report.runs)
    try:
        (line,) = figure.axes[0].lines
        assert line.get_linestyle() == "None" and len(line.get_xdata()) == 2
    finally:
        pyplot().close(figure)


def pyramid_counts_in_a_fastv_file(data):
    data["samples"][3]["image_tokens_per_layer"] = [64] * 8 + [32] * 8 + [16] * 8 + [8] * 8


def negative_count(data):
    data["samples"][3]["image_tokens_per_layer"][-1] = -1


@pytest.mark.parametrize("damage, message", [
    (pyramid_counts_in_a_fastv_file, "pdrop_local_mcq_ll doc_id 1: image tokens per layer contradict the file's drop config FastV"),
    (negative_count, "pdrop_local_mcq_ll doc_id 1 records negative token counts"),
])
def test_statistics_contradicting_their_drop_config_are_refused(demo_run, tmp_path, damage, message):
    demo_dir, _ = demo_run
    _results, stats = copy_run(demo_dir, "fastv", tmp_path / "run")
    edit_json(stats, damage)
    with pytest.raises(ReportInputError, match=re.escape(message)) as error:
        build_report([tmp_path / "run"])
    assert str(stats) in str(error.value)


@pytest.mark.parametrize("argv, message", [
    (["--delta", "pdrop:bogus"], "'bogus' is neither a method kind"),
    (["--layout", "paper-table1"], "--layout paper-table1 has columns MME, MMB, MMBCN, SEEDI, MMStar, POPE; the runs scored none of them"),
])
def test_options_that_select_nothing_are_errors(demo_run, capsys, argv, message):
    demo_dir, _ = demo_run
    assert main(["report", str(demo_dir / "runs"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_delta_side_matching_several_rows_says_so(demo_run, tmp_path):
    demo_dir, _ = demo_run
    copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / "a")
    results, stats = copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / "b")
    for path in (results, stats):
        edit_json(path, set_model_args("lambda=0.5", "lambda=0.25"))
    edit_json(stats, lambda data: data["drop"].update(ratio=0.25))
    edit_json(stats, lambda data: [s.update(image_tokens_per_layer=[64] * 8 + [16] * 8 + [4] * 8 + [1] * 8) for s in data["samples"]])
    markdown = build_report([tmp_path], delta="pdrop:vanilla").markdown
    assert "no Δ row for tiny-llava (--delta pdrop:vanilla): 'pdrop' matches 2 rows (PDrop λ=0.25; PDrop λ=0.5)" in markdown


def test_one_checkpoint_named_relatively_and_absolutely_is_one_model(demo_run, tmp_path):
    """A run started in tmp_path with pretrained=ckpt and --output_path out (both relative; ckpt links to
    the demo's checkpoint) and the demo's own run (absolute path): one model, two rows."""
    demo_dir, _ = demo_run
    checkpoint = demo_dir.parent / "tiny-llava"
    os.symlink(checkpoint, tmp_path / "ckpt")
    results, stats = copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / "out")
    for path in (results, stats):
        edit_json(path, set_model_args(f"pretrained={checkpoint}", "pretrained=ckpt"))
    edit_json(stats, lambda data: data.update(pretrained="ckpt"))
    edit_json(results, lambda data: data["config"]["resolved_cli_args"].update(output_path="out"))
    shutil.copytree(demo_dir / "runs" / "fastv", tmp_path / "absolute")
    rows = table(build_report([tmp_path / "out", tmp_path / "absolute"]).markdown)
    assert {model for model, _method in rows} == {"tiny-llava"}
    assert ("tiny-llava", "PDrop λ=0.5") in rows and ("tiny-llava", "FastV K=2 R=0.5") in rows


def test_cells_show_stderr_documents_partial_runs_and_sub_metrics(demo_run, tmp_path):
    demo_dir, _ = demo_run
    results, _stats = copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / "run")

    def change(data):
        vqa = data["results"]["pdrop_local_vqa"]
        vqa.update({"exact_match,none": 0.5, "exact_match_stderr,none": 0.25, "local_exact_match,none": 1.0,
                    "local_exact_match_stderr,none": 0.0, "global_exact_match,none": float("nan")})
        data["n-samples"]["pdrop_local_mcq"] = {"original": 2, "effective": 2}  # a full run of a 2-document task

    edit_json(results, change)
    report = build_report([tmp_path / "run"])
    row = table(report.markdown)[("tiny-llava", "PDrop λ=0.5")]
    assert row["pdrop_local_vqa"] == "50.0 ±25.0 (n=2/6)"  # a --limit 2 run of a 6-document task
    assert row["pdrop_local_mcq"] == "0.0 ±0.0 (n=2)"
    assert row["pdrop_local_vqa local_exact_match"] == "100.0 ±0.0 (n=2/6)"
    assert "pdrop_local_vqa global_exact_match" not in row and "pdrop_local_vqa reports global_exact_match = nan; left out" in report.markdown
    assert "n=a/b: a partial run" in report.markdown
    # Sub-metrics repeat their task's documents: the average is over the four tasks only.
    assert row["Avg"] == f"{50.0 / 4:.1f}"
