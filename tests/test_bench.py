"""`pdrop-eval bench` runs and reports what it promises (no timing assertions: speed lives in the
benchmark, not in tests)."""

import json

from pdrop_eval.cli import main as cli_main


def spec_layer_flops(n: int, d: int = 64, m: int = 172) -> int:
    """SPEC section 3, written out here so the test does not share the code's helper."""
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def test_bench_json_reports_times_flops_ratios_and_overhead(capsys):
    shape = ["--hidden-size", "64", "--intermediate-size", "172", "--num-layers", "8", "--num-heads", "4", "--num-kv-heads", "2"]
    assert cli_main(["bench", "--json", *shape, "--image-tokens", "40", "--text-tokens", "8", "--repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("vanilla_s", "pdrop_s", "fastv_s"):
        assert result[key] > 0
    assert result["settings"]["layer_list"] == [2, 4, 6]  # quarters of the depth by default
    # 40 image + 8 text tokens; λ=0.5 at layers 2/4/6 keeps 20, 10, 5 image tokens; FastV K=2 keeps 20
    pyramid = [48, 48, 28, 28, 18, 18, 13, 13]
    fastv = [48, 48, 28, 28, 28, 28, 28, 28]
    vanilla = 8 * spec_layer_flops(48)
    assert abs(result["theory_pdrop"] - sum(map(spec_layer_flops, pyramid)) / vanilla) < 1e-12
    assert abs(result["theory_fastv"] - sum(map(spec_layer_flops, fastv)) / vanilla) < 1e-12
    assert 0 < result["scoring_overhead"] < 1


def test_bench_table_and_bad_settings(capsys):
    assert cli_main(["bench", "--hidden-size", "32", "--intermediate-size", "64", "--num-layers", "4", "--num-heads", "2",
                     "--num-kv-heads", "2", "--image-tokens", "16", "--text-tokens", "4", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "PyramidDrop" in out and "FastV" in out and "ranking overhead" in out
