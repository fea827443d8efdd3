"""Budgets for methods whose budget sets a kept count (`MethodSpec.budget_family == "count"`): VisionZip
and the pooling control, through `pdrop_eval.budget` and through a framework model's options."""

import pytest

from pdrop_eval import budget
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.options import resolve_model_options

LLAVA15 = budget.model_dims("llava-1.5-7b")  # N = 576, 32 layers


@pytest.mark.parametrize("tokens, dominant, contextual", [(64, 54, 10), (128, 108, 20), (192, 162, 30)])
def test_visionzip_budgets_are_the_official_splits(tokens, dominant, contextual):
    assert budget.for_budget(tokens, "visionzip") == DropConfig.from_args(f"dominant={dominant},contextual={contextual}", method="visionzip")


def test_count_budgets_in_every_convention():
    """Before the language model every layer sees the kept count: the average per layer, the count
    after the drop and a share of N all give it; a TFLOPs budget the closest count."""
    for convention in ("avg_layer", "after_drop"):
        assert budget.for_budget(128, "pool", convention=convention) == DropConfig.from_args("pool_tokens=128", method="pool")
    assert budget.for_budget("25%", "pool").params.pool_tokens == 144
    solution = budget.solve(1.0, LLAVA15, "pool", convention="tflops")
    below = budget.Schedule.of(DropConfig.from_args(f"pool_tokens={solution.config.params.pool_tokens - 1}", method="pool"), LLAVA15)
    assert abs(solution.achieved - 1.0) <= abs(below.tflops - 1.0)
    with pytest.raises(ValueError, match="below what VisionZip can reach"):
        budget.for_budget(1, "visionzip")


def test_a_pool_budget_solves_to_its_own_count_whatever_its_grid():
    """29 tokens have no grid within 24 x 24 but 1 x 29; they pool to about square rows of unequal width,
    so budget 29 is 29 tokens (it used to be moved to 28 = 4 x 7)."""
    assert budget.for_budget(29, "pool").params.pool_tokens == 29


def test_a_framework_model_solves_the_budget_for_its_checkpoint(tiny_llava):
    """budget=25% on the tiny LLaVA (N=64): 16 tokens, split as VisionZip's budgets are; the count
    options beside budget= are refused."""
    options = resolve_model_options("visionzip", {"pretrained": str(tiny_llava), "budget": "25%"}, owner="llava_visionzip")
    assert options.drop == DropConfig.from_args("dominant=14,contextual=2", method="visionzip")
    with pytest.raises(ValueError, match=r"leave out \['pool_tokens'\]"):
        resolve_model_options("pool", {"pretrained": str(tiny_llava), "budget": "16", "pool_tokens": "8"}, owner="llava_pool")


def test_dart_budgets_name_the_smallest_count_that_keeps_the_tokens():
    """DART keeps 4 + 8·(dart_tokens // 8): after_drop 64 is 60 or 68 tokens, a tie that goes to the
    cheaper, written with the smallest dart_tokens that keeps 60."""
    solution = budget.solve(64, LLAVA15, "dart", convention="after_drop")
    assert solution.config == DropConfig.from_args("dart_tokens=56", method="dart") and solution.achieved == 60
    assert budget.for_budget(128, "dart", dart_k=3).params.dart_k == 3


def test_a_share_of_n_is_refused_for_a_count_on_a_checkpoint_whose_n_varies(tiny_llava_next):
    with pytest.raises(ValueError, match=r"DART keeps a fixed number of image tokens, which is no fixed share of N"):
        resolve_model_options("dart", {"pretrained": str(tiny_llava_next), "budget": "25%"}, owner="llava_dart")
    options = resolve_model_options("dart", {"pretrained": str(tiny_llava_next), "budget": "64", "budget_image_tokens": "200"}, owner="llava_dart")
    assert options.drop.spec.name == "dart"


def test_the_schedule_command_solves_every_method_with_methods_all(capsys):
    from pdrop_eval.cli import main as cli_main

    assert cli_main(["schedule", "--model", "llava-1.5-7b", "--tokens", "128", "--methods", "all"]) == 0
    printed = capsys.readouterr().out
    for args in ("dominant=108,contextual=20", "pool_tokens=128", "dart_tokens=96", "lambda=0.421", "fastv_r=0.83"):
        assert args in printed
    with pytest.raises(SystemExit):
        cli_main(["schedule", "--tokens", "128", "--methods", "pyramid,random"])
    assert "a budget is solved for" in capsys.readouterr().err
