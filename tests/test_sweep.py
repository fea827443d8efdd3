"""`pdrop-eval sweep`: which settings a sweep runs comes from the method registry (`MethodSpec.sweep_key`),
the random control included; the plot gives a method one colour on every checkpoint."""

from dataclasses import replace

import pytest

from pdrop_eval.cli import main
from pdrop_eval.engine.config import SWEPT_METHODS, DropConfig
from pdrop_eval.pipeline import checkpoint_folders, sweep_settings


def test_sweep_settings_vary_each_methods_own_option():
    assert sorted(SWEPT_METHODS) == ["fastv", "pdrop", "random"]
    expected = {
        "pdrop": lambda value: DropConfig.pyramid(ratio=value),
        "fastv": lambda value: DropConfig.fastv(r=value),
        "random": lambda value: DropConfig.random(DropConfig.pyramid(ratio=value)),
    }
    for method, build in expected.items():
        settings = sweep_settings(method, [0.3, 0.5], True)
        assert [setting.drop for setting in settings] == [DropConfig.none(), build(0.3), build(0.5)]
        assert len({setting.name for setting in settings}) == 3
    shaped = sweep_settings("random", [0.25], False, {"layer_list": (2, 8, 16)})
    assert [setting.drop for setting in shaped] == [DropConfig.random(DropConfig.pyramid(layer_list=(2, 8, 16), ratio=0.25))]
    assert [s.drop for s in sweep_settings("fastv", [0.75], False, {"fastv_k": 3})] == [DropConfig.fastv(k=3, r=0.75)]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--method", "pdrop", "--values", "0.5", "--fastv-k", "3"], "PyramidDrop does not take ['fastv_k']"),
        (["--method", "fastv", "--values", "0.5", "--layer-list", "2,8"], "FastV does not take ['layer_list']"),
        (["--method", "pdrop", "--tokens", "25%", "--fastv-k", "3"], "PyramidDrop does not take ['fastv_k']"),
        (["--method", "random", "--tokens", "25%"], "token budgets are solved for fastv, pdrop, not random"),
        (["--method", "random", "--values", "0.5", "--fastv-k", "3"], "takes the counts of one schedule"),
    ],
)
def test_sweep_refuses_options_its_method_does_not_take(options, message, tiny_llava, tmp_path, capsys):
    out_dir = tmp_path / "sweep"
    assert main(["sweep", "--pretrained", str(tiny_llava), *options, "--tasks", "pdrop_local", "--out-dir", str(out_dir)]) == 2
    assert message in capsys.readouterr().err
    assert not out_dir.exists()


def test_checkpoint_folders_are_the_reports_names():
    assert checkpoint_folders(["/x/runA/final", "/y/runB/final/", "hub/other"]) == ["runA__final", "runB__final", "other"]
    with pytest.raises(ValueError, match="named twice"):
        checkpoint_folders(["a/ckpt", "a/ckpt/"])


def test_random_sweep_runs_through_lmms_eval(tiny_llava, tmp_path, capsys):
    """The control's curve: random drop at two λ through the real lmms-eval, one series in the report and
    plot, fewer TFLOPs at the smaller λ."""
    from pdrop_eval.report import build_report
    from pdrop_eval.report.plot import plot_points

    out_dir = tmp_path / "sweep"
    argv = ["sweep", "--pretrained", str(tiny_llava), "--method", "random", "--values", "0.5,0.25", "--no-vanilla",
            "--tasks", "pdrop_local_vqa", "--out-dir", str(out_dir), "--limit", "2"]
    assert main(argv) == 0
    assert "random-lambda0.25: done in" in capsys.readouterr().out
    report = build_report([out_dir / "runs"])
    rows = {row.method: row for row in report.rows}
    assert sorted(rows) == ["Random (PDrop λ=0.25)", "Random (PDrop λ=0.5)"]
    ((series, points),) = plot_points(report.runs)["pdrop_local_vqa"].items()
    assert series[1] == "random" and len(points) == 2
    assert points[0][0] < points[1][0]  # sorted by TFLOPs: λ=0.25 drops more
    assert (out_dir / "sweep.png").read_bytes().startswith(b"\x89PNG")


def test_plot_gives_a_method_one_colour_on_every_checkpoint(demo_run):
    """Two checkpoints (the demo's runs, and the same runs relabelled): each method's two curves share a
    colour and marker, each checkpoint's curves share a line style, and the legend names both."""
    from pdrop_eval.report import build_report
    from pdrop_eval.report.plot import draw_plot, pyplot

    out_dir, _ = demo_run
    runs = build_report([out_dir / "runs"]).runs
    runs += [replace(run, pretrained=run.pretrained + "-copy") for run in runs]
    figure = draw_plot(runs)
    try:
        lines = figure.axes[0].lines
        assert len(lines) == 6  # 2 checkpoints x (vanilla, FastV, PDrop)
        by_colour = {}
        for line in lines:
            by_colour.setdefault(line.get_color(), []).append(line)
        assert len(by_colour) == 3
        for pair in by_colour.values():
            assert len(pair) == 2 and pair[0].get_marker() == pair[1].get_marker()
            assert pair[0].get_linestyle() != pair[1].get_linestyle() and pair[0].get_fillstyle() != pair[1].get_fillstyle()
        assert len({line.get_linestyle() for line in lines}) == 2
        labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
        assert labels == ["vanilla", "FastV", "PDrop", "tiny-llava", "tiny-llava-copy"]
    finally:
        pyplot().close(figure)
