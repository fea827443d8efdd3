"""`pdrop-eval study` on a tiny checkpoint through the real lmms-eval: 2 layers x 2 kept fractions, the
one-stage schedules really applied, then a rerun that skips every finished point."""

import json
import os
import shutil

import pytest

from pdrop_eval.cli import main
from pdrop_eval.study import (
    Point,
    study_markdown,
    study_points,
    unfinished_reason,
    write_study_plot,
)

LAYERS, KEEPS, TASK = (2, 16), (0.25, 0.75), "pdrop_local_vqa"


@pytest.fixture(scope="module")
def study_argv(tiny_llava, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("study") / "out"
    argv = ["study", "--pretrained", str(tiny_llava), "--tasks", TASK, "--out-dir", str(out_dir), "--limit", "2"]
    return out_dir, argv + ["--layers", ",".join(map(str, LAYERS)), "--keep", ",".join(map(str, KEEPS)), "--no-vanilla"]


def test_study_evaluates_each_point_then_a_rerun_skips_them(study_argv, tiny_llava, capsys):
    out_dir, argv = study_argv
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("evaluating (not run yet)") == 4 and printed.count("running lmms-eval") == 4
    for layer in LAYERS:
        for keep in KEEPS:
            (stats_path,) = (out_dir / "runs" / tiny_llava.name / f"layer{layer}-keep{keep:g}").glob("*/*_pdrop_stats.json")
            stats = json.loads(stats_path.read_text())
            assert stats["drop"]["layer_list"] == [layer] and stats["drop"]["image_token_ratio_list"] == [keep]
            for sample in stats["samples"]:  # one drop, at that layer, to that fraction of N
                assert "kept" not in sample  # kept tokens are stored only with save_kept=true
                n = sample["num_image_tokens"]
                assert sample["image_tokens_per_layer"] == [n] * layer + [int(n * keep)] * (32 - layer)
    table = (out_dir / "study.md").read_text()
    assert f"## {tiny_llava.name}: {TASK}" in table and "| layer | keep 0.25 | keep 0.75 |" in table
    assert table.count("\n| 2 | ") == 1 and table.count("\n| 16 | ") == 1
    assert (out_dir / "study.png").stat().st_size > 10_000

    assert main(argv) == 0  # the rerun evaluates nothing
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == 4 and "running lmms-eval" not in printed


def test_a_point_is_finished_only_for_its_own_setting(study_argv, tiny_llava):
    """Checked on the folders the test above wrote (same module fixture; it runs first)."""
    out_dir, _ = study_argv
    done = Point(str(tiny_llava), tiny_llava.name, 2, 0.25)
    assert unfinished_reason(done, out_dir, [TASK], 2) is None
    assert "lacks tasks ['pdrop_local_yesno']" in unfinished_reason(done, out_dir, [TASK, "pdrop_local_yesno"], 2)
    assert "--limit 2" in unfinished_reason(done, out_dir, [TASK], 3)
    assert "made by checkpoint" in unfinished_reason(Point(str(tiny_llava) + "/", tiny_llava.name, 2, 0.25), out_dir, [TASK], 2)
    other = Point(str(tiny_llava), tiny_llava.name, 2, 0.5)
    assert unfinished_reason(other, out_dir, [TASK], 2) == "not run yet"
    shutil.copytree(done.folder(out_dir), other.folder(out_dir))  # results of keep 0.25 where keep 0.5 belongs
    assert "made with PyramidDrop(layers=[2], ratios=[0.25]" in unfinished_reason(other, out_dir, [TASK], 2)
    shutil.rmtree(other.folder(out_dir))

    config, results = tiny_llava / "config.json", next(done.folder(out_dir).glob("*/*_results.json"))
    before = config.stat()
    os.utime(config, (before.st_atime, results.stat().st_mtime + 5))  # weights re-trained in place after the run
    try:
        assert "the checkpoint changed after this run (config.json)" in unfinished_reason(done, out_dir, [TASK], 2)
    finally:
        os.utime(config, (before.st_atime, before.st_mtime))
    assert unfinished_reason(done, out_dir, [TASK], 2) is None


def test_vanilla_closes_each_curve_at_one(tmp_path):
    points = study_points(["a/ckpt", "b/ckpt"], [2, 24], [0.5])
    assert [p.setting.name for p in points] == ["vanilla", "layer2-keep0.5", "layer24-keep0.5"] * 2
    assert points[0].folder_name != points[3].folder_name  # same last path part, two folders
    scores = {point: {"MME": 100.0 * point.keep + (point.layer or 0)} for point in points}
    table = study_markdown(scores)
    assert "| layer | keep 0.5 | vanilla (1.0) |" in table and "| 24 | 74.00 | 100.00 |" in table
    assert write_study_plot(scores, tmp_path / "study.png").stat().st_size > 10_000


def test_bad_study_options_are_refused():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        study_points(["ckpt"], [2], [0.5, 1.0])
    with pytest.raises(ValueError, match="must not repeat"):
        study_points(["ckpt"], [2, 2], [0.5])
    assert main(["study", "--pretrained", "x", "--tasks", TASK, "--out-dir", "o", "--layers", "2,x"]) == 2
