"""`pdrop-eval demo --methods`: every registered method that takes a token budget, at 50% and 25% of the
image tokens, each beside the random control with its counts, on the shipped vanilla-trained checkpoint;
a method or budget the checkpoint cannot take is left out with its reason, and so is a run that fails."""

from types import SimpleNamespace

import pytest

from pdrop_eval import pipeline
from pdrop_eval.budget import Schedule, model_dims
from pdrop_eval.checkpoints import shipped_checkpoint
from pdrop_eval.cli import main
from pdrop_eval.commands.demo import budget_methods, method_settings
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.engine.methods import METHODS


def test_every_budgeted_method_runs_beside_its_random_control_or_is_left_out_with_the_reason(capsys):
    checkpoint = str(shipped_checkpoint("vanilla"))
    settings = {setting.name: setting.drop for setting in method_settings(checkpoint, budget_methods())}
    printed = capsys.readouterr().out
    assert budget_methods() == [name for name, spec in METHODS.items() if spec.budget_family]  # the registry's, in its order
    assert next(iter(settings.items())) == ("vanilla", DropConfig.none())
    for method in budget_methods():
        title = METHODS[method].title
        if f"{title} left out: " in printed:
            assert not any(name.startswith(f"{method}-") for name in settings)
            continue
        for share in ("50pct", "25pct"):
            name = f"{method}-{share}"
            if name not in settings:
                assert f"{name} left out: " in printed
                continue
            assert settings[name].method == method
            assert settings[f"random-{name}"] == DropConfig.random(settings[name])
    # The shipped checkpoint's vision tower has one layer, and LLaVA feeds its patch embeddings (-2).
    assert "VisionZip left out: VisionZip needs the features of a vision attention layer, got vision_feature_layer=-2" in printed
    assert "dart-25pct left out: budget 25% of the no-drop avg image tokens/layer (= 11.5 tokens) at N=46 is below what DART can reach" in printed
    dims = model_dims(checkpoint, 46)
    assert Schedule.of(settings["pyramid-50pct"], dims).avg_image_tokens == pytest.approx(23, abs=1)
    assert settings["pool-25pct"] == DropConfig.from_args("method=pool,pool_tokens=11")  # a fixed count: 25% of the largest N


def test_methods_flag_runs_them_on_the_vanilla_checkpoint_leaving_failed_runs_out(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pipeline, "evaluate_and_report", lambda *args, **kwargs: calls.append((args, kwargs)) or "report\n")
    assert main(["demo", "--methods", "pool", "--out-dir", str(tmp_path / "out")]) == 0
    (plan, tasks, *_), options = calls[0]
    assert [(pretrained, [setting.name for setting in settings]) for pretrained, settings in plan] == [
        (str(shipped_checkpoint("vanilla")), ["vanilla", "pool-50pct", "random-pool-50pct", "pool-25pct", "random-pool-25pct"])
    ]
    assert tasks == ["pdrop_synth"] and options == {"leave_out_failed": True}
    assert main(["demo", "--methods", "pool,random", "--out-dir", str(tmp_path / "out")]) == 2
    assert "--methods: ['random'] take no token budget" in capsys.readouterr().err


def test_a_failed_run_is_left_out_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    """Two settings, the first one's lmms-eval run failing (lmms-eval and the report are stubs here)."""
    ran = []

    def run_lmms_eval(command, output_path, label):
        ran.append(label)
        if label == "broken":
            raise pipeline.PipelineError("lmms-eval wrote no results into broken")

    monkeypatch.setattr(pipeline, "run_lmms_eval", run_lmms_eval)
    monkeypatch.setattr(pipeline, "build_report", lambda folders: SimpleNamespace(markdown=f"report of {folders}\n", runs=[]))
    monkeypatch.setattr(pipeline, "write_plot", lambda runs, path, x: None)
    plan = [(str(shipped_checkpoint("vanilla")), [pipeline.Setting("broken", DropConfig.none()), pipeline.Setting("fastv", DropConfig.fastv())])]
    with pytest.raises(pipeline.PipelineError, match="no results into broken"):
        pipeline.evaluate_and_report(plan, ["pdrop_local"], tmp_path / "strict", {}, "report")
    assert ran == ["broken"]
    markdown = pipeline.evaluate_and_report(plan, ["pdrop_local"], tmp_path / "out", {}, "report", leave_out_failed=True)
    assert ran == ["broken", "broken", "fastv"] and markdown.startswith(f"report of [{tmp_path / 'out' / 'runs'!r}]")
    assert "  broken: left out of the report: lmms-eval wrote no results into broken" in capsys.readouterr().out
