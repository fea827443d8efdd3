"""Budgets to schedules (`pdrop_eval.budget`, `DropConfig.for_budget`, `pdrop-eval schedule`):
exact counts checked against brute force over the counts' own formula, every convention, shares of N
across LLaVA-NeXT's image sizes, impossible budgets, and the budget presets. The real-run check (the
statistics of lmms-eval runs) is in test_lmms_cli.py."""

import json
from decimal import Decimal

import numpy as np
import pytest
from PIL import Image

from pdrop_eval import presets
from pdrop_eval.cli import main as cli_main
from pdrop_eval import budget as budgets
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.flops import PRESETS, image_tokens_from_config, layer_flops
from pdrop_eval.options import resolve_model_options
from pdrop_eval.pipeline import budget_settings

LLAVA15 = PRESETS["llava-1.5-7b"]
NEXT = PRESETS["llava-next-7b"]


def pyramid_average(n: int, num_layers: int, layers: tuple, counts) -> float:
    """(1/L)·Σ_l n_l written out: all N before the first boundary, counts[s] from boundary s on."""
    bounds = [*layers, num_layers]
    return (layers[0] * n + sum((bounds[s + 1] - bounds[s]) * counts[s] for s in range(len(layers)))) / num_layers


def fastv_average(n: int, num_layers: int, k: int, kept: int) -> float:
    return (k * n + (num_layers - k) * kept) / num_layers


def all_pyramid_averages(n: int, num_layers: int, layers: tuple) -> np.ndarray:
    """Every average int(N·λ^s) reaches, by brute force over a dense grid of λ in (0, 1]."""
    ratios = np.linspace(1e-7, 1.0, 400_001)
    counts = [np.floor(n * ratios**stage) for stage in range(1, len(layers) + 1)]
    return np.unique(pyramid_average(n, num_layers, layers, counts))


@pytest.mark.parametrize(
    "n, layers, target",
    [(576, (2, 8, 16), 192), (576, (2, 8, 16), 128), (576, (2, 8, 16), 64), (576, (8, 16, 24), 200.3),
     (2880, (2, 8, 16), 640), (64, (2, 8, 16), 17), (336, (4, 12), 100),
     (2880, (2, 8, 16), 304)],  # 2880·0.175 is 503.99… in floats: the shortest λ of the step is 0.1751
)
def test_pyramid_lambda_gives_the_closest_exact_average(n, layers, target):
    dims = budgets.model_dims(LLAVA15, n)
    solution = budgets.solve(target, dims, "pyramid", layer_list=layers)
    config = solution.config
    assert config.params.layer_list == layers
    counts = [int(n * Decimal(repr(config.params.ratio)) ** stage) for stage in range(1, len(layers) + 1)]  # λ^s as a decimal
    exact = pyramid_average(n, 32, layers, counts)
    assert solution.schedule.avg_image_tokens == exact == solution.achieved
    best = np.min(np.abs(all_pyramid_averages(n, 32, layers) - target))
    assert abs(exact - target) <= best + 1e-9
    assert abs(exact - target) < 0.5  # one step of the average is under one token


@pytest.mark.parametrize("n, k, target", [(576, 2, 192), (576, 2, 128), (576, 3, 64), (2880, 2, 700), (64, 2, 30.1), (2880, 2, 1159)])
def test_fastv_r_gives_the_closest_exact_average(n, k, target):
    dims = budgets.model_dims(LLAVA15, n)
    solution = budgets.solve(target, dims, "fastv", fastv_k=k)
    kept = n - int(n * solution.config.params.fastv_r)
    exact = fastv_average(n, 32, k, kept)
    assert solution.achieved == exact
    assert abs(exact - target) == min(abs(fastv_average(n, 32, k, m) - target) for m in range(1, n + 1))


def test_after_drop_convention_counts_the_tokens_kept_after_the_first_drop():
    pdrop = budgets.solve(192, LLAVA15, "pyramid", convention="after_drop")
    assert int(576 * pdrop.config.params.ratio) == 192 == pdrop.schedule.kept_after_drop
    fastv = budgets.solve(192, LLAVA15, "fastv", convention="after_drop")
    assert 576 - int(576 * fastv.config.params.fastv_r) == 192
    assert fastv.schedule.avg_image_tokens == fastv_average(576, 32, 2, 192)


@pytest.mark.parametrize("method", ["pyramid", "fastv"])
@pytest.mark.parametrize("target", [2.0, 1.0, 0.5])
def test_tflops_budget_is_met_within_one_percent(method, target):
    solution = budgets.solve(budgets.Budget(target, "tflops"), LLAVA15, method)
    counts = solution.schedule.image_tokens_per_layer
    tflops = sum(layer_flops(n, 4096, 11008) for n in counts) / 1e12  # independent of the solver's figure
    assert tflops == pytest.approx(solution.achieved)
    assert abs(tflops - target) / target < 0.01


def test_same_flops_as_another_config_is_the_paper_equal_budget_comparison():
    pdrop = DropConfig.pyramid()  # 8/16/24, λ=0.5: 1.78 T on LLaVA-1.5-7B
    fastv = budgets.for_budget(pdrop, "fastv")
    target = budgets.Schedule.of(pdrop, LLAVA15).tflops
    assert budgets.Schedule.of(fastv, LLAVA15).tflops == pytest.approx(target, rel=0.005)
    assert budgets.for_budget(pdrop, "pyramid", layer_list=(8, 16, 24)) == pdrop


@pytest.mark.parametrize("convention", ["avg_layer", "after_drop"])
@pytest.mark.parametrize("method", ["pyramid", "fastv"])
@pytest.mark.parametrize("share", ["22.2%", "40%", "75%"])
def test_a_share_of_n_holds_for_every_image_size(share, method, convention):
    """LLaVA-NeXT: one λ (R) for all samples; every N gets its share within one token per layer."""
    config = budgets.for_budget(share, method, model="llava-next-7b", convention=convention)
    fraction = float(share.removesuffix("%")) / 100
    for n in range(300, 2881, 13):
        value = budgets.Schedule.of(config, budgets.model_dims(NEXT, n)).value(convention)
        assert abs(value - fraction * n) < 1, n


def test_searching_layer_lists_reaches_what_a_fixed_list_cannot():
    with pytest.raises(ValueError, match="reachable: 144 tokens"):
        budgets.solve(64, LLAVA15, "pyramid", layer_list=(8, 16, 24))
    found = budgets.search_layer_lists(64, LLAVA15)
    best = found[0]
    assert abs(best.error) <= min(abs(solution.error) for solution in found)
    assert abs(best.error) <= abs(budgets.solve(64, LLAVA15, "pyramid").error)
    assert best.achieved == pyramid_average(576, 32, best.config.params.layer_list, best.schedule.kept_per_stage)
    assert budgets.solve(64, LLAVA15, "pyramid", search_layers=True) == best


@pytest.mark.parametrize(
    "budget, options, message",
    [
        (0, {}, "a budget must be positive"),
        (-5, {}, "a budget must be positive"),
        ("0%", {}, "a budget must be positive"),
        (577, {}, r"more than the no-drop value \(576 tokens\)"),
        ("101%", {}, "at most 100%"),
        (64, {"layer_list": (8, 16, 24)}, r"below what PyramidDrop with layer_list \[8, 16, 24\] can reach.*reachable: 144 tokens to 576 tokens"),
        (10, {"method": "fastv"}, r"below what FastV with K=2 can reach.*reachable: 36.9375 tokens"),
        (budgets.Budget(99.0, "tflops"), {}, r"more than the no-drop value \(3.817 TFLOPs\)"),
        ("lots", {}, "a budget is a number or a percentage"),
        (128, {"method": "random"}, "solved for one of the methods fastv, pyramid"),
    ],
)
def test_impossible_budgets_say_what_is_reachable(budget, options, message):
    options = {"method": "pyramid", **options}
    with pytest.raises(ValueError, match=message):
        budgets.solve(budget, LLAVA15, options.pop("method"), **options)


def test_budget_convention_names_are_checked():
    with pytest.raises(ValueError, match="budget convention must be one of avg_layer, after_drop, tflops"):
        budgets.Budget.parse("128", "average")


@pytest.mark.parametrize("name", ["pdrop-192", "pdrop-128", "pdrop-64", "fastv-192", "fastv-128", "fastv-64"])
def test_budget_presets_average_their_names_and_are_what_the_solver_gives(name):
    kind, tokens = name.split("-")
    config = presets.drop_preset(name)
    counts = config.kept_counts(576)
    if kind == "pdrop":
        average = pyramid_average(576, 32, config.params.layer_list, counts)
    else:
        average = fastv_average(576, 32, config.params.fastv_k, counts[0])
    assert abs(average - int(tokens)) <= 0.5
    assert budgets.for_budget(int(tokens), "pyramid" if kind == "pdrop" else "fastv") == config


def test_n_of_a_checkpoint_is_what_its_processor_gives(tiny_llava, tiny_llava_next):
    """LLaVA-1.5: the fixed N; LLaVA-NeXT: the largest N, which an image of the largest grid's shape gets."""
    from PIL import Image
    from transformers import AutoProcessor

    def processor_count(checkpoint, size) -> int:
        processor = AutoProcessor.from_pretrained(checkpoint)
        encoded = processor(images=[Image.new("RGB", size)], text=["<image>"], return_tensors="pt")
        return int((encoded.input_ids == processor.tokenizer.convert_tokens_to_ids("<image>")).sum())

    config = json.loads((tiny_llava / "config.json").read_text())
    assert image_tokens_from_config(config) == (processor_count(tiny_llava, (64, 64)), False)
    config = json.loads((tiny_llava_next / "config.json").read_text())
    sizes = [(128, 128), (64, 128), (128, 64), (64, 64), (300, 300), (500, 120)]
    assert image_tokens_from_config(config) == (max(processor_count(tiny_llava_next, size) for size in sizes), True)


def test_for_budget_reads_n_and_dims_from_a_checkpoint(tiny_llava_next):
    config = budgets.for_budget(64, model=str(tiny_llava_next))  # N = 336, the largest anyres grid
    assert budgets.Schedule.of(config, budgets.model_dims(str(tiny_llava_next))).avg_image_tokens == pytest.approx(64, abs=0.5)
    assert budgets.model_dims(str(tiny_llava_next)).image_tokens == 336
    with pytest.raises(ValueError, match=r"varies per image \(up to N=336\); give the budget as a share of N \(it is 19.0% at the largest N\)"):
        budgets.solve_for_checkpoint(64, json.loads((tiny_llava_next / "config.json").read_text()), "pyramid")


@pytest.mark.parametrize(
    "method, options, expected",
    [
        ("pyramid", {"budget": "16"}, lambda ckpt: budgets.for_budget(16, model=ckpt)),
        ("pyramid", {"budget": "16", "layer_list": "[4,8]", "position_mode": "original"},
         lambda ckpt: budgets.for_budget(16, model=ckpt, layer_list=(4, 8), position_mode="original")),
        ("fastv", {"budget": "25%", "budget_convention": "after_drop", "fastv_k": "3"},
         lambda ckpt: budgets.for_budget("25%", "fastv", model=ckpt, convention="after_drop", fastv_k=3)),
        ("fastv", {"budget": "0.00005", "budget_convention": "tflops"},
         lambda ckpt: budgets.for_budget(0.00005, "fastv", model=ckpt, convention="tflops")),
        ("random", {"budget": "16", "fastv_k": "3", "seed": "4"},
         lambda ckpt: DropConfig.random(budgets.for_budget(16, "fastv", model=ckpt, fastv_k=3), seed=4)),
    ],
)
def test_budget_model_option_is_solved_for_the_checkpoint(method, options, expected, tiny_llava):
    resolved = resolve_model_options(method, {"pretrained": str(tiny_llava), **options}, owner="model")
    assert resolved.drop == expected(str(tiny_llava))


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("pyramid", {"budget": "128"}, r"model: bad drop settings: budget 128 avg image tokens/layer at N=64 is more than the no-drop value \(64 tokens\)"),
        ("pyramid", {"budget": "16", "lambda": "0.5"}, r"budget=... sets λ / R \(or the kept count\) itself; leave out \[.lambda.\]"),
        ("fastv", {"budget": "16", "drop_preset": "fastv-64"}, r"leave out \['drop_preset'\]"),
        ("fastv", {"budget": "16", "layer_list": "2;8"}, r"FastV does not take \['layer_list'\]"),
        ("pyramid", {"budget_convention": "tflops"}, r"\['budget_convention'\] go with budget=..., which is not given"),
        ("pyramid", {"budget": "16", "budget_convention": "tflop"}, "budget convention must be one of avg_layer, after_drop, tflops"),
        ("none", {"budget": "16"}, r"unknown option\(s\) \['budget'\]"),
        ("fastv", {"budget": "16", "budget_image_tokens": "0"}, "budget_image_tokens must be a positive integer"),
    ],
)
def test_bad_budget_model_options_are_clear_errors(method, options, message, tiny_llava):
    with pytest.raises(ValueError, match=message):
        resolve_model_options(method, {"pretrained": str(tiny_llava), **options}, owner="model")


def test_sweep_budgets_are_solved_for_the_checkpoint(tiny_llava, tiny_llava_next, tmp_path, capsys):
    settings = budget_settings(str(tiny_llava), "pdrop", ["16", "25%"], True)
    assert [setting.name for setting in settings] == ["vanilla", "pdrop-avg_layer-16", "pdrop-avg_layer-25pct"]
    assert [setting.drop for setting in settings[1:]] == [budgets.for_budget(16, model=str(tiny_llava)),
                                                          budgets.for_budget("25%", model=str(tiny_llava))]
    (fastv,) = budget_settings(str(tiny_llava_next), "fastv", ["22%"], False, convention="after_drop", shape={"fastv_k": 3})
    assert fastv.drop == budgets.for_budget("22%", "fastv", model=str(tiny_llava_next), convention="after_drop", fastv_k=3)
    argv = ["sweep", "--pretrained", str(tiny_llava_next), "--method", "pdrop", "--tokens", "64", "--tasks", "pdrop_local_vqa",
            "--out-dir", str(tmp_path / "sweep")]
    assert cli_main(argv) == 2  # an absolute budget on LLaVA-NeXT, refused before any run
    assert "varies per image (up to N=336)" in capsys.readouterr().err and not (tmp_path / "sweep").exists()


def test_schedule_command_prints_exact_schedules(capsys):
    assert cli_main(["schedule", "--model", "llava-1.5-7b", "--tokens", "192,128,64"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[3].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in out.splitlines() if line.startswith("| ") and "=" in line}
    for name in ["pdrop-192", "pdrop-128", "pdrop-64", "fastv-192", "fastv-128", "fastv-64"]:
        config = presets.drop_preset(name)
        row = rows[config.to_args()]
        schedule = budgets.Schedule.of(config, LLAVA15)
        assert row[4] == f"{schedule.avg_image_tokens:g}" and row[5] == str(schedule.kept_after_drop)
        assert row[6] == f"{schedule.tflops:.4g}"
    assert "(1/L)·Σ_l n_l" in out


def test_schedule_command_reports_unreachable_budgets(capsys):
    assert cli_main(["schedule", "--tokens", "64", "--layer-list", "8,16,24"]) == 1
    captured = capsys.readouterr()
    assert "PDrop, 64 avg image tokens/layer: budget 64" in captured.err and "reachable: 144 tokens" in captured.err
    assert "fastv_k=2,fastv_r=0.948" in captured.out  # FastV still solved


@pytest.mark.parametrize(
    "checkpoint, method, options, message",
    [
        # LLaVA-1.5's N is fixed (64 here): a budget counted at 500 would average 12.25 tokens a layer at the real N
        ("tiny_llava", "pyramid", {"budget": "100", "budget_image_tokens": "500"},
         r"model: bad drop settings: budget_image_tokens=500: this checkpoint has N=64 image tokens for every image"),
        ("tiny_llava", "fastv", {"budget": "25%", "budget_image_tokens": "63"}, r"budget_image_tokens=63: .* N=64"),
        ("tiny_llava_next", "pyramid", {"budget": "100", "budget_image_tokens": "500"},
         r"budget_image_tokens=500: no image of this checkpoint has more than N=336 image tokens"),
        # the random control takes one schedule's counts: FastV's K and PyramidDrop's layers together were
        # solved as FastV with layer_list dropped (the same mix without budget is refused)
        ("tiny_llava", "random", {"budget": "30%", "fastv_k": "3", "layer_list": "2;8;16"},
         r"takes the counts of one schedule; got options of PyramidDrop and FastV"),
        ("tiny_llava", "pyramid", {"budget": "16", "layer_list": "8;4"}, r"layer_list must be strictly increasing"),
    ],
)
def test_budget_options_that_would_be_ignored_or_misread_are_refused(checkpoint, method, options, message, request):
    pretrained = str(request.getfixturevalue(checkpoint))
    with pytest.raises(ValueError, match=message):
        resolve_model_options(method, {"pretrained": pretrained, **options}, owner="model")


def test_budget_image_tokens_is_taken_where_it_is_the_checkpoints_n(tiny_llava, tiny_llava_next):
    at_n = resolve_model_options("pyramid", {"pretrained": str(tiny_llava), "budget": "16", "budget_image_tokens": "64"}, owner="m")
    assert at_n.drop == budgets.for_budget(16, model=str(tiny_llava))
    next_options = {"pretrained": str(tiny_llava_next), "budget": "16", "budget_image_tokens": "200"}
    assert resolve_model_options("fastv", next_options, owner="m").drop == budgets.for_budget(16, "fastv", model=str(tiny_llava_next), image_tokens=200)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tokens", "16", "--image-tokens", "500"], "--image-tokens=500: this checkpoint has N=64 image tokens for every image"),
        (["--values", "0.5", "--image-tokens", "64"], "--image-tokens and --convention go with --tokens"),
        (["--values", "0.5", "--convention", "after_drop"], "--image-tokens and --convention go with --tokens"),
    ],
)
def test_sweep_refuses_budget_flags_it_would_ignore_or_misread(argv, message, tiny_llava, tmp_path, capsys):
    out_dir = tmp_path / "sweep"
    common = ["sweep", "--pretrained", str(tiny_llava), "--method", "pdrop", "--tasks", "pdrop_local_vqa", "--out-dir", str(out_dir)]
    assert cli_main([*common, *argv]) == 2
    assert message in capsys.readouterr().err and not out_dir.exists()


@pytest.mark.parametrize(
    "drop, expected",
    [
        ("budget=128", budgets.for_budget(128)),  # budget=... alone: PyramidDrop's schedule (layers 2/8/16)
        ("method=fastv,budget=25%,budget_convention=after_drop", budgets.for_budget("25%", "fastv", convention="after_drop")),
        ("budget=1.5,budget_convention=tflops,layer_list=4;12;20", budgets.for_budget(1.5, convention="tflops", layer_list=(4, 12, 20))),
        ("method=random,budget=64,fastv_k=3,seed=2", DropConfig.random(budgets.for_budget(64, "fastv", fastv_k=3), seed=2)),
        ("drop_preset=pdrop-0.5,lambda=0.3", DropConfig.pyramid(ratio=0.3)),
    ],
)
def test_flops_drop_takes_the_model_args_drop_keys(drop, expected, capsys):
    """README: `--drop` takes the `--model_args` drop keys; budget=... and drop_preset were unknown keys."""
    assert cli_main(["flops", "--model", "llava-1.5-7b", "--drop", drop]) == 0
    assert f"| {expected.describe()} " in capsys.readouterr().out


def test_show_and_train_drop_solve_a_budget_for_their_checkpoint(tiny_llava, tiny_llava_next, tmp_path, capsys):
    from pdrop_eval.options import resolve_drop_option

    assert resolve_drop_option("budget=25%", str(tiny_llava_next), owner="--drop") == budgets.for_budget("25%", model=str(tiny_llava_next))
    picture = tmp_path / "picture.png"
    Image.new("RGB", (32, 32)).save(picture)
    argv = ["show", str(picture), "--question", "?", "--pretrained", str(tiny_llava), "--out", str(tmp_path), "--drop", "budget=100"]
    assert cli_main(argv) == 2  # solved at the checkpoint's own N=64, before the model loads
    assert "--drop: bad drop settings: budget 100 avg image tokens/layer at N=64 is more than the no-drop value" in capsys.readouterr().err
    argv = ["train", "--pretrained", str(tiny_llava), "--data", "unused.parquet", "--output-dir", str(tmp_path / "trained"), "--drop", "budget=100"]
    assert cli_main(argv) == 2
    assert "--drop: bad drop settings: budget 100 avg image tokens/layer at N=64" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--drop: unknown key\(s\) \['lambdaa'\]"):
        resolve_drop_option("lambdaa=0.5", str(tiny_llava), owner="--drop")
    with pytest.raises(ValueError, match=r"budget_image_tokens: the N a budget counts with is the command's own \(--image-tokens\)"):
        resolve_drop_option("budget=16,budget_image_tokens=64", budgets.model_dims("llava-1.5-7b"), owner="--drop")
