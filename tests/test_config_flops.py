"""DropConfig validation and parsing; the FLOPs accountant against the paper's published columns."""

import pytest

from pdrop_eval import DropConfig
from pdrop_eval.cli import main as cli_main
from pdrop_eval.flops import PRESETS, paper_tflops, tflops, tokens_per_layer


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
        (lambda: DropConfig(method="random"), "method must be one of"),
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
    ],
)
def test_dict_and_args_round_trip(config):
    assert DropConfig.from_dict(config.to_dict()) == config
    assert DropConfig.from_args(config.to_args(), method=config.method) == config


def test_from_dict_defaults_and_rejections():
    # statistics files written without position_mode keep each method's own default
    assert DropConfig.from_dict({"method": "fastv", "fastv_k": 2, "fastv_r": 0.5}).position_mode == "original"
    assert DropConfig.from_dict({"method": "pyramid", "layer_list": [8], "ratio": 0.5}).position_mode == "compact"
    with pytest.raises(ValueError, match=r"unknown DropConfig field\(s\) \['lam'\]"):
        DropConfig.from_dict({"method": "pyramid", "lam": 0.5})
    with pytest.raises(ValueError, match="method must be one of"):
        DropConfig.from_dict({"method": "random"})
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
