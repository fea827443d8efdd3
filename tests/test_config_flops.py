"""DropConfig validation and parsing; the FLOPs accountant against the paper's published columns."""

import pytest

from pdrop_eval import DropConfig
from pdrop_eval.cli import main as cli_main
from pdrop_eval.flops import PRESETS, dims_from_config_dict, paper_tflops, tflops, tokens_per_layer


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: DropConfig.pyramid(ratio=0.0), r"lambda must be in \(0, 1\]"),
        (lambda: DropConfig.pyramid(ratio=1.5), r"lambda must be in \(0, 1\]"),
        (lambda: DropConfig.pyramid(layer_list=[16, 8, 24]), "strictly increasing"),
        (lambda: DropConfig.pyramid(layer_list=[8, 8, 24]), "strictly increasing"),
        (lambda: DropConfig.pyramid(layer_list=[0, 8]), "layer 0"),
        (lambda: DropConfig.pyramid(layer_list=[]), "at least one"),
        (lambda: DropConfig.pyramid(image_token_ratio_list=[0.5, 0.25]), "2 entries but layer_list has 3"),
        (lambda: DropConfig.pyramid(image_token_ratio_list=[0.25, 0.5, 0.1]), "must not increase"),
        (lambda: DropConfig.fastv(r=1.0), r"fastv_r .* must be in \[0, 1\)"),
        (lambda: DropConfig.fastv(r=-0.1), r"fastv_r .* must be in \[0, 1\)"),
        (lambda: DropConfig.fastv(k=0), "fastv_k must be >= 1"),
        (lambda: DropConfig.pyramid(position_mode="shifted"), "position_mode"),
        (lambda: DropConfig(method="random_drop"), "method must be one of"),
        (lambda: DropConfig(method="random"), "Random drop needs a schedule"),
        (lambda: DropConfig.random(DropConfig.none()), "counts of one of"),
        (lambda: DropConfig.random(seed=-1), "seed must be >= 0"),
        (lambda: DropConfig.pyramid(ratio=0.5, image_token_ratio_list=[0.5, 0.25, 0.1]), "exactly one of lambda .* got both"),
        (lambda: DropConfig.from_dict({"method": "fastv", "fastv_k": 2, "fastv_r": 0.5, "ratio": 0.3}), r"FastV does not take \['ratio'\]"),
        (lambda: DropConfig.from_dict({"method": "pyramid", "layer_list": [8], "ratio": 0.5, "seed": 1}), r"PyramidDrop does not take \['seed'\]"),
        (lambda: DropConfig.from_dict({"method": "random", "layer_list": [8], "ratio": 0.5, "fastv_k": 2, "fastv_r": 0.5, "seed": 0}), "one schedule"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="fastv_k must be an int"):
        DropConfig.fastv(k=2.0)
    with pytest.raises(TypeError, match="lambda must be a number"):
        DropConfig.pyramid(ratio="0.5")


def test_from_args_parses_lmms_eval_fragments():
    assert DropConfig.from_args("layer_list=8;16;24,lambda=0.5") == DropConfig.pyramid()
    assert DropConfig.from_args("layer_list=[8,16,24],lambda=0.5") == DropConfig.pyramid()
    assert DropConfig.from_args({"layer_list": "[8, 16, 24]", "lambda": "0.5"}) == DropConfig.pyramid()
    assert DropConfig.from_args("layer_list=[2|4|6],image_token_ratio_list=0.5;0.25;0.125,position_mode=original") == (
        DropConfig.pyramid(layer_list=[2, 4, 6], image_token_ratio_list=[0.5, 0.25, 0.125], position_mode="original")
    )
    assert DropConfig.from_args("fastv_k=3,fastv_r=0.75") == DropConfig.fastv(k=3, r=0.75)
    assert DropConfig.from_args({"fastv_k": 2}, method="fastv") == DropConfig.fastv(k=2, r=0.5)
    assert DropConfig.from_args("", method="none") == DropConfig.none()
    assert DropConfig.from_args("lambda=0.4", method="pyramid") == DropConfig.pyramid(ratio=0.4)


@pytest.mark.parametrize(
    "config",
    [
        DropConfig.none(),
        DropConfig.pyramid(),
        DropConfig.pyramid(layer_list=[2, 4], image_token_ratio_list=[0.6, 0.3], position_mode="original"),
        DropConfig.fastv(k=3, r=0.25),
        DropConfig.fastv(position_mode="compact"),
        DropConfig.random(),
        DropConfig.random(DropConfig.fastv(k=3, r=0.25), seed=7),
        DropConfig.random(DropConfig.pyramid(layer_list=[2, 4], image_token_ratio_list=[0.6, 0.3]), position_mode="original"),
    ],
)
def test_dict_and_args_round_trip(config):
    assert DropConfig.from_dict(config.to_dict()) == config
    assert DropConfig.from_args(config.to_args(), method=config.method) == config


def test_explicit_options_override_the_preset_after_both_are_parsed():
    preset = {"method": "pyramid", "layer_list": [8, 16, 24], "lambda": 0.5}
    assert DropConfig.from_args("ratio=0.3", method="pyramid", preset=preset) == DropConfig.pyramid(ratio=0.3)
    assert DropConfig.from_args("lambda=0.3", method="pyramid", preset=preset) == DropConfig.pyramid(ratio=0.3)
    # the explicit ratio list replaces the preset's λ instead of clashing with it
    assert DropConfig.from_args("image_token_ratio_list=0.5;0.2;0.1", method="pyramid", preset=preset) == (
        DropConfig.pyramid(image_token_ratio_list=[0.5, 0.2, 0.1])
    )
    # a PyramidDrop preset gives the random control its counts
    assert DropConfig.from_args("seed=4", method="random", preset=preset) == DropConfig.random(DropConfig.pyramid(), seed=4)
    with pytest.raises(ValueError, match="conflicts with the model's method 'fastv'"):
        DropConfig.from_args("", method="fastv", preset=preset)
    with pytest.raises(ValueError, match="given twice"):
        DropConfig.from_args("lambda=0.3,ratio=0.3", method="pyramid", preset=preset)


def test_random_control_takes_the_counts_of_its_schedule():
    pyramid = DropConfig.pyramid(layer_list=[2, 5], ratio=0.4)
    control = DropConfig.random(pyramid, seed=3)
    assert (control.boundaries(8), control.kept_counts(125)) == (pyramid.boundaries(8), pyramid.kept_counts(125))
    fastv = DropConfig.fastv(k=3, r=0.25)
    assert DropConfig.random(fastv).boundaries(8) == fastv.boundaries(8)
    assert DropConfig.random(fastv).position_mode == "original"
    assert DropConfig.from_args("fastv_k=3,fastv_r=0.25", method="random") == DropConfig.random(fastv)
    assert DropConfig.from_args("seed=2") == DropConfig.random(seed=2)  # only the control takes a seed
    assert (control.label(), DropConfig.random(fastv).label()) == ("Random (PDrop λ=0.4 @2,5, seed 3)", "Random (FastV K=3 R=0.25)")


# λ and the official explicit lists, as the paper writes them (the reference code uses such lists).
WRITTEN_RATIO_LISTS = {
    0.3: [0.3, 0.09, 0.027],
    0.4: [0.4, 0.16, 0.064],
    0.5: [0.5, 0.25, 0.125],
    0.6: [0.6, 0.36, 0.216],
    0.7: [0.7, 0.49, 0.343],
}


@pytest.mark.parametrize("ratio", sorted(WRITTEN_RATIO_LISTS))
def test_lambda_counts_equal_those_of_the_written_ratio_list(ratio):
    by_lambda = DropConfig.pyramid(ratio=ratio)
    by_list = DropConfig.pyramid(image_token_ratio_list=WRITTEN_RATIO_LISTS[ratio])
    mismatches = [n for n in range(1, 3001) if by_lambda.kept_counts(n) != by_list.kept_counts(n)]
    assert mismatches == []


def test_lambda_0_6_keeps_27_of_125_tokens_at_the_third_stage():
    assert DropConfig.pyramid(ratio=0.6).kept_counts(125) == [75, 45, 27]  # 0.6**3 in floats would give 26


def test_registry_entries_are_distinct_and_complete():
    from pdrop_eval.framework_names import FRAMEWORK_NAMES
    from pdrop_eval.engine.config import METHODS, OPTION_KEYS

    for attribute in ("kind", "series"):
        values = [getattr(spec, attribute) for spec in METHODS.values()]
        assert len(set(values)) == len(values), attribute
    assert set(FRAMEWORK_NAMES) == set(METHODS)
    for attribute in ("model", "lmms_class", "vlmeval_class"):
        values = [getattr(names, attribute) for names in FRAMEWORK_NAMES.values()]
        assert len(set(values)) == len(values), attribute
    for spec in METHODS.values():
        assert set(spec.keys) <= set(OPTION_KEYS)
        default = DropConfig.from_args("", method=spec.name)
        assert default.spec is spec and DropConfig.from_args(default.to_args(), method=spec.name) == default


def test_from_dict_defaults_and_rejections():
    # statistics files written without position_mode keep each method's own default
    assert DropConfig.from_dict({"method": "fastv", "fastv_k": 2, "fastv_r": 0.5}).position_mode == "original"
    assert DropConfig.from_dict({"method": "pyramid", "layer_list": [8], "ratio": 0.5}).position_mode == "compact"
    with pytest.raises(ValueError, match=r"unknown DropConfig field\(s\) \['lam'\]"):
        DropConfig.from_dict({"method": "pyramid", "lam": 0.5})
    with pytest.raises(ValueError, match="method must be one of"):
        DropConfig.from_dict({"method": "random_drop"})
    with pytest.raises(TypeError, match="drop config dict"):
        DropConfig.from_dict(["pyramid"])


@pytest.mark.parametrize(
    "text,method,message",
    [
        ("lamda=0.5", None, r"unknown drop option\(s\) \['lamda'\]"),
        ("lambda=half", None, "bad value for drop option 'lambda'"),
        ("layer_list=8;x", None, "bad value for drop option 'layer_list'"),
        ("lambda=0.5,ratio=0.5", None, "given twice"),
        ("fastv_k=2", "pyramid", "PyramidDrop does not take"),
        ("fastv_k=2,ratio=0.5", "fastv", r"FastV does not take \['ratio'\]"),
        ("layer_list=8", "none", r"Vanilla \(no drop\) does not take \['layer_list'\]"),
        ("lambda=0.5,lambda=0.4", None, "'lambda' given twice"),
        ("lambda=0.4,image_token_ratio_list=0.5;0.25;0.125", None, "got both"),
        ("position_mode=original", None, "do not say which method"),
        ("layer_list=8,fastv_k=2", None, "one schedule"),
        ("method=fastv", "pyramid", "conflicts"),
        ("lambda", None, "key=value"),
        ("lambda=2", None, r"lambda must be in \(0, 1\]"),
    ],
)
def test_from_args_rejects_bad_fragments(text, method, message):
    with pytest.raises(ValueError, match=message):
        DropConfig.from_args(text, method=method)


def test_image_tokens_per_layer_and_flops_helpers():
    config = DropConfig.pyramid(layer_list=[2, 4], ratio=0.5)
    assert config.image_tokens_per_layer(10, 6) == [10, 10, 5, 5, 2, 2]
    assert tokens_per_layer(10, config, 6, num_text_tokens=3) == [13, 13, 8, 8, 5, 5]
    assert tflops(2, 3, 1, [5]) == (4 * 5 * 4 + 2 * 25 * 2 + 3 * 5 * 2 * 3) / 1e12
    with pytest.raises(ValueError, match="3 entries for 2 layers"):
        tflops(2, 3, 2, [1, 2, 3])
    # grouped-query attention: keys and values 1 wide instead of 2 save 2·n·d·(d - kv) = 20
    assert tflops(2, 3, 1, [5], kv_size=1) == (4 * 5 * 4 - 2 * 5 * 2 * 1 + 2 * 25 * 2 + 3 * 5 * 2 * 3) / 1e12


def test_grouped_query_attention_dims_come_from_the_config():
    # Qwen2.5-7B's decoder: 28 query heads of 128 columns, 4 key-value heads
    qwen = {"text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                            "num_attention_heads": 28, "num_key_value_heads": 4}}
    assert dims_from_config_dict(qwen, image_tokens=256).kv_size == 4 * 128
    vicuna = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32}
    assert dims_from_config_dict(vicuna).kv_size is None
    explicit_head_dim = {**vicuna, "num_key_value_heads": 8, "head_dim": 64}
    assert dims_from_config_dict(explicit_head_dim).kv_size == 8 * 64


# The paper's "Infer Flops (T)" column: Tables 1, 4 and 5, printed to 3 significant digits.
PAPER_TFLOPS = [
    ("llava-1.5-7b", DropConfig.none(), 3.82),
    ("llava-1.5-7b", DropConfig.pyramid(ratio=0.5), 1.78),
    ("llava-1.5-7b", DropConfig.pyramid(ratio=0.4), 1.54),
    ("llava-1.5-7b", DropConfig.pyramid(ratio=0.6), 2.06),
    ("llava-1.5-7b", DropConfig.fastv(k=2, r=0.5), 2.01),
    ("llava-next-7b", DropConfig.none(), 20.8),
    ("llava-next-7b", DropConfig.pyramid(ratio=0.5), 9.46),
    ("llava-next-7b", DropConfig.pyramid(ratio=0.4), 8.22),
    ("llava-next-7b", DropConfig.pyramid(ratio=0.6), 11.0),
    ("llava-next-7b", DropConfig.fastv(k=2, r=0.5), 10.6),
]


@pytest.mark.parametrize("preset,config,paper", PAPER_TFLOPS)
def test_paper_flops_column_is_reproduced(preset, config, paper):
    assert float(f"{paper_tflops(PRESETS[preset], config):.3g}") == paper


def test_flops_command_prints_table(capsys, tiny_llava):
    assert cli_main(["flops", "--model", "llava-next-7b", "--drop", "layer_list=8;16;24,lambda=0.5"]) == 0
    out = capsys.readouterr().out
    dims = PRESETS["llava-next-7b"]
    ratio = paper_tflops(dims, DropConfig.pyramid()) / paper_tflops(dims, DropConfig.none())
    assert "9.46" in out and f"{ratio:.3f}" in out
    assert cli_main(["flops", "--model", str(tiny_llava), "--image-tokens", "64"]) == 0
    assert "N=64" in capsys.readouterr().out
    assert cli_main(["flops", "--model", "llava-9b"]) == 2
    assert "unknown model 'llava-9b'" in capsys.readouterr().err
