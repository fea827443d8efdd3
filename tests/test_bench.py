"""`pdrop-eval bench` runs and reports what it promises (no timing assertions: speed lives in the
benchmark, not in tests)."""

import json

from pdrop_eval.cli import main as cli_main
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.flops import tflops, tokens_per_layer


def test_bench_json_reports_times_flops_ratios_and_overhead(capsys):
    shape = ["--hidden-size", "64", "--intermediate-size", "172", "--num-layers", "8", "--num-heads", "4", "--num-kv-heads", "2"]
    assert cli_main(["bench", "--json", *shape, "--image-tokens", "40", "--text-tokens", "8", "--repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("vanilla_s", "pdrop_s", "fastv_s"):
        assert result[key] > 0
    assert result["settings"]["layer_list"] == [2, 4, 6]  # quarters of the depth by default
    vanilla = tflops(64, 172, 8, tokens_per_layer(40, DropConfig.none(), 8, 8))
    pyramid = tflops(64, 172, 8, tokens_per_layer(40, DropConfig.pyramid(layer_list=[2, 4, 6]), 8, 8))
    assert result["theory_pdrop"] == pyramid / vanilla
    assert 0 < result["scoring_overhead"] < 1


def test_bench_table_and_bad_settings(capsys):
    assert cli_main(["bench", "--hidden-size", "32", "--intermediate-size", "64", "--num-layers", "4", "--num-heads", "2",
                     "--num-kv-heads", "2", "--image-tokens", "16", "--text-tokens", "4", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "PyramidDrop" in out and "FastV" in out and "ranking overhead" in out
    assert cli_main(["bench", "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
