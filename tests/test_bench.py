"""`pdrop-eval bench` runs and reports what it promises (no timing assertions: speed lives in the
benchmark, not in tests)."""

import json

import pytest

from pdrop_eval.cli import main as cli_main


def spec_layer_flops(n: int, d: int = 64, m: int = 172, kv: int = 32) -> int:
    """SPEC section 3 with grouped-query attention's narrower key/value projections (4 heads, 2 of them
    key-value: kv = d / 2), written out here so the test does not share the code's helper."""
    return 2 * n * d * d + 2 * n * d * kv + 2 * n * n * d + 3 * n * d * m


def test_bench_json_reports_times_flops_ratios_and_overhead(capsys):
    shape = ["--hidden-size", "64", "--intermediate-size", "172", "--num-layers", "8", "--num-heads", "4", "--num-kv-heads", "2"]
    assert cli_main(["bench", "--json", *shape, "--image-tokens", "40", "--text-tokens", "8", "--repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    for method in ("vanilla", "pdrop", "fastv"):
        times = result["seconds"][method]
        assert len(times["runs"]) == 2 and times["min"] <= times["median"] <= times["max"] and times["min"] > 0
    assert result["settings"]["layer_list"] == [2, 4, 6]  # quarters of the depth by default
    # 40 image + 8 text tokens; λ=0.5 at layers 2/4/6 keeps 20, 10, 5 image tokens; FastV K=2 keeps 20
    pyramid = [48, 48, 28, 28, 18, 18, 13, 13]
    fastv = [48, 48, 28, 28, 28, 28, 28, 28]
    vanilla = 8 * spec_layer_flops(48)
    assert abs(result["theory_pdrop"] - sum(map(spec_layer_flops, pyramid)) / vanilla) < 1e-12
    assert abs(result["theory_fastv"] - sum(map(spec_layer_flops, fastv)) / vanilla) < 1e-12
    assert 0 < result["scoring_overhead"] < 1
    assert result["peak_bytes"] == {"vanilla": None, "pdrop": None, "fastv": None}  # CUDA memory only, measured there


SMALL = dict(hidden_size=32, intermediate_size=64, num_layers=4, num_heads=2, num_kv_heads=2, image_tokens=16, text_tokens=4)


def test_variants_are_timed_in_turns_after_untimed_warm_up():
    """A B C A B C ...: a drift of the machine falls on every variant alike. The last layer's input shows
    which variant ran: 16 + 4 tokens vanilla, 2 + 4 PyramidDrop (λ=0.5 at 1/2/3), 8 + 4 FastV."""
    from pdrop_eval import bench
    from pdrop_eval.bench_settings import BenchSettings

    settings = BenchSettings(**SMALL, warmup=2, repeats=3)
    model = bench.build_model(settings)
    input_ids = bench.prompt_ids(settings, model.config.image_token_id)
    seen, timed = [], []
    model.model.language_model.layers[-1].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    original_timed = bench._timed
    bench._timed = lambda device, function: (timed.append(len(seen)), original_timed(device, function))[1]
    try:
        seconds, peaks = bench._interleaved_seconds(model, input_ids, settings, bench.variants(settings))
    finally:
        bench._timed = original_timed
    assert seen == [20, 6, 12] * 5  # two warm-up rounds, then three timed ones
    assert timed == list(range(6, 15))  # runs 7 to 15 timed; the warm-up never
    assert [len(runs) for runs in seconds.values()] == [3, 3, 3] and peaks == {"vanilla": None, "pdrop": None, "fastv": None}


def test_time_ratios_pair_each_rounds_times(monkeypatch, capsys):
    """Round by round: vanilla 1, 4, 2 s against PyramidDrop 0.9, 1.2, 1.6 s is 0.9 / 0.3 / 0.8 (median 0.8),
    where the ratio of the medians would say 0.6, and sorted times paired 0.9 / 0.6 / 0.4."""
    from pdrop_eval import bench

    def script():
        return iter([1.0, 0.9, 0.9, 4.0, 1.2, 3.6, 2.0, 1.6, 1.8])  # vanilla, PyramidDrop, FastV per round

    scripted = script()
    monkeypatch.setattr(bench, "_timed", lambda device, function, *args, **kwargs: (function(*args, **kwargs), next(scripted, 1.0)))
    small = [f"--{name.replace('_', '-')}={value}" for name, value in SMALL.items()]
    assert cli_main(["bench", "--json", *small, "--repeats", "3", "--warmup", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seconds"]["vanilla"] == {"median": 2.0, "min": 1.0, "max": 4.0, "runs": [1.0, 4.0, 2.0]}
    assert result["time_ratio"]["pdrop"] == pytest.approx({"median": 0.8, "min": 0.3, "max": 0.9, "runs": [0.9, 0.3, 0.8]})
    assert result["time_ratio"]["fastv"] == pytest.approx({"median": 0.9, "min": 0.9, "max": 0.9, "runs": [0.9, 0.9, 0.9]})
    scripted = script()
    assert cli_main(["bench", *small, "--repeats", "3", "--warmup", "0"]) == 0
    table = capsys.readouterr().out
    assert "median (min-max) of 3 rounds" in table
    rows = {cells[0]: cells[1:] for line in table.splitlines() if line.startswith("| ") for cells in [[c.strip() for c in line.split("|")[1:-1]]]}
    assert rows["PyramidDrop"][:2] == ["1200.0 (900.0-1600.0)", "0.800 (0.300-0.900)"]


def test_bench_table_and_bad_settings(capsys):
    assert cli_main(["bench", "--hidden-size", "32", "--intermediate-size", "64", "--num-layers", "4", "--num-heads", "2",
                     "--num-kv-heads", "2", "--image-tokens", "16", "--text-tokens", "4", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "PyramidDrop" in out and "FastV" in out and "ranking overhead" in out


def test_bench_train_times_training_steps(capsys):
    shape = ["--hidden-size", "64", "--intermediate-size", "172", "--num-layers", "8", "--num-heads", "4", "--num-kv-heads", "2"]
    args = ["bench", "--train", *shape, "--image-tokens", "40", "--text-tokens", "8", "--answer-tokens", "3", "--repeats", "1", "--warmup", "0"]
    assert cli_main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["train"] and 0 < result["scoring_overhead"] < 1
    assert all(times["min"] > 0 for times in result["seconds"].values())
    pyramid = [48, 48, 28, 28, 18, 18, 13, 13]  # as in prefill: the same tokens go forward and backward
    assert abs(result["theory_pdrop"] - sum(map(spec_layer_flops, pyramid)) / (8 * spec_layer_flops(48))) < 1e-12
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "training step (forward + backward, 3 answer tokens)" in out and "% of PyramidDrop training step" in out
    assert cli_main([*args, "--answer-tokens", "8"]) == 2
    assert "--answer-tokens must be between 1 and --text-tokens - 1 (7)" in capsys.readouterr().err


def test_bench_generate_times_prefill_then_cached_decoding(capsys):
    from pdrop_eval import bench
    from pdrop_eval.bench_settings import BenchSettings

    settings = BenchSettings(hidden_size=32, intermediate_size=64, num_layers=4, num_heads=2, num_kv_heads=2,
                             image_tokens=12, text_tokens=6, generate_tokens=4, warmup=1, repeats=2)
    model = bench.build_model(settings)
    input_ids = bench.prompt_ids(settings, model.config.image_token_id)
    lengths = []  # tokens given to each language-model forward
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    assert len(bench._seconds(model, input_ids, settings)) == 2
    assert lengths == [18, 1, 1, 1] * 3  # warm-up + repeats: the prompt, then one token per cached step

    shape = ["--hidden-size", "64", "--intermediate-size", "172", "--num-layers", "8", "--num-heads", "4", "--num-kv-heads", "2"]
    args = ["bench", *shape, "--image-tokens", "40", "--text-tokens", "8", "--generate-tokens", "3", "--repeats", "1", "--warmup", "0"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("generate (3 new tokens, greedy), d=64") and "generate ms" in out and "% of PyramidDrop generate" in out
    assert cli_main([*args, "--train"]) == 2
    assert "--train and --generate-tokens" in capsys.readouterr().err


def test_train_step_runs_backward_on_the_answer_tokens_only():
    import torch

    from pdrop_eval import bench
    from pdrop_eval.bench_settings import BenchSettings

    settings = BenchSettings(hidden_size=32, intermediate_size=64, num_layers=4, num_heads=2, num_kv_heads=2,
                                   image_tokens=12, text_tokens=6, answer_tokens=2, train=True, warmup=1, repeats=2)
    model = bench.build_model(settings)
    input_ids = bench.prompt_ids(settings, model.config.image_token_id)
    labels = bench._answer_labels(input_ids, settings)
    assert (labels[:, :-2] == -100).all() and torch.equal(labels[:, -2:], input_ids[:, -2:])
    backward_calls = []
    model.lm_head.weight.register_hook(lambda grad: backward_calls.append(grad.abs().sum().item()))
    assert len(bench._seconds(model, input_ids, settings)) == 2
    assert len(backward_calls) == 3 and all(total > 0 for total in backward_calls)  # warm-up + repeats
    assert not model.training and model.lm_head.weight.grad is None
