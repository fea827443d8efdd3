"""Bad command-line input ends with exit 2 and one line naming the option, before any work is done."""

import pytest

from pdrop_eval.cli import main

SMALL_BENCH = ["bench", "--hidden-size", "32", "--intermediate-size", "64", "--num-layers", "4", "--num-heads", "2", "--num-kv-heads", "2"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["flops", "--image-tokens", "-5"], "--image-tokens (N) must be a positive integer, got -5"),
        (["flops", "--image-tokens", "0"], "--image-tokens (N) must be a positive integer, got 0"),
        ([*SMALL_BENCH, "--image-tokens", "-3"], "--image-tokens must be an integer >= 1, got -3"),
        ([*SMALL_BENCH, "--text-tokens", "-1"], "--text-tokens must be an integer >= 0, got -1"),
        ([*SMALL_BENCH, "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        ([*SMALL_BENCH, "--repeats", "0"], "--repeats must be an integer >= 1, got 0"),
        ([*SMALL_BENCH, "--dtype", "float8"], "--dtype must be one of float32, float16, bfloat16, got 'float8'"),
        ([*SMALL_BENCH, "--num-heads", "3"], "--num-heads (3) must divide --hidden-size (32)"),
        ([*SMALL_BENCH, "--num-kv-heads", "3"], "--num-kv-heads (3) must divide --num-heads (2)"),
        ([*SMALL_BENCH, "--device", "cuda"], "--device cuda: CUDA is not available"),
        ([*SMALL_BENCH, "--threads", "0"], "--threads must be a positive integer, got 0"),
        (["make-tiny-model", "unused", "--num-layers", "0"], "num_layers (--num-layers) must be a positive integer, got 0"),
    ],
)
def test_bad_option_is_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith(f"pdrop-eval {argv[0]}: error: ") and message in captured.err
    assert captured.out == ""


def test_make_tiny_model_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["make-tiny-model", str(tmp_path), "--num-layers", "2"]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == "{}"


@pytest.mark.parametrize("target", ["folder", "below_a_file"])
def test_report_out_that_cannot_be_written_is_refused_before_printing(target, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path if target == "folder" else tmp_path / "a_file" / "report.md"
    assert main(["report", "--layout", "paper-table5", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert ("is a folder" if target == "folder" else "a_file is a file, not a folder") in captured.err


def test_sweep_checks_layers_against_the_checkpoint_before_any_run(tiny_llava, tmp_path, capsys):
    out_dir = tmp_path / "sweep"
    argv = ["sweep", "--pretrained", str(tiny_llava), "--method", "pdrop", "--values", "0.5", "--tasks", "pdrop_local", "--out-dir", str(out_dir)]
    assert main([*argv, "--layer-list", "8;16;40"]) == 2
    assert "beyond the model's 32 layers" in capsys.readouterr().err
    assert not out_dir.exists()
    assert main([*argv, "--layer-list", "8,x"]) == 2
    assert "--layer-list: bad value for drop option 'layer_list'" in capsys.readouterr().err
