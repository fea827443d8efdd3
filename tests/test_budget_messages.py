"""What budget solving says when it cannot do what was asked, or what it did (issue 31 item 10)."""

import pytest

from pdrop_eval import budget
from pdrop_eval.cli import main as cli_main
from pdrop_eval.pipeline import budget_settings


def test_an_unreachable_budget_advises_a_layer_list_other_than_the_one_used():
    dims = budget.model_dims("llava-1.5-7b")
    with pytest.raises(ValueError) as default_layers:
        budget.solve(30, dims, "pyramid")  # layers 2/8/16 see all N before layer 2: at least 36 per layer
    assert "before layer 2" in str(default_layers.value) and "layer_list=2;8;16" not in str(default_layers.value)
    assert "--search-layers" in str(default_layers.value)
    with pytest.raises(ValueError, match=r"before layer 8 \(e\.g\. layer_list=2;8;16\)"):
        budget.solve(30, dims, "pyramid", layer_list=(8, 16, 24))


def test_a_budget_of_everything_keeps_everything_in_plain_numbers(capsys):
    assert cli_main(["schedule", "--model", "llava-1.5-7b", "--tokens", "100%"]) == 0
    printed = capsys.readouterr().out
    assert "fastv_r=0.0" in printed and "e-" not in printed


def test_a_sweep_needing_n_names_the_sweeps_own_flag(tiny_llava_next):
    with pytest.raises(ValueError, match=r"or the N it counts with \(--image-tokens N\)"):
        budget_settings(str(tiny_llava_next), "pdrop", ["16"], False)
