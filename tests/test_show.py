"""`pdrop-eval show`: the pictures dim exactly the dropped tokens' regions, and the command runs end to end,
on a prompt and on documents of real lmms-eval / VLMEvalKit runs that stored their kept tokens."""

import json
import os
import random
import shutil
import sys
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from pdrop_eval.adapters.vlmeval_data import TOY_MCQ, make_toy_datasets
from pdrop_eval.cli import main
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.options import resolve_model_options
from pdrop_eval.pipeline import LMMS_EVAL_MAIN, TASKS_DIR, run_lmms_eval
from pdrop_eval.report.plot import pyplot
from pdrop_eval.show import ROWS, Stage, drop_stages, picture_figure
from pdrop_eval.token_map import image_token_regions


def pixel_at(figure, ax, x: float, y: float) -> np.ndarray:
    """RGB of the rendered figure at data point (x, y) of `ax`."""
    buffer = np.asarray(figure.canvas.buffer_rgba())
    column, row = ax.transData.transform((x, y))
    return buffer[buffer.shape[0] - int(row) - 1, int(column), :3].astype(int)


def test_dropped_regions_are_dimmed_and_kept_ones_are_not(tiny_llava_next):
    processor = AutoProcessor.from_pretrained(tiny_llava_next)
    sizes = [(90, 60), (180, 110)]  # the second picture of a two-picture prompt: its indices start after the first's
    regions = image_token_regions(processor, sizes)
    rng = random.Random(0)
    first = frozenset(rng.sample(range(len(regions)), len(regions) // 2))
    stages = [Stage("from layer 8", first), Stage("from layer 16", frozenset(rng.sample(sorted(first), len(first) // 2)))]
    tokens = [index for index, region in enumerate(regions) if region.image == 1]
    plt = pyplot()
    figure = picture_figure(plt, Image.new("RGB", sizes[1], "white"), regions, 1, stages, "Q: ?\nA: !")
    figure.canvas.draw()
    axes = figure.axes
    row_of = {kind: row for row, name in enumerate(name for name in ROWS if name in {regions[i].kind for i in tokens}) for kind in ROWS[name][1]}
    checked = {"kept": 0, "dropped": 0, "newline": 0}
    for column, stage in enumerate(stages, 1):
        for index in tokens:
            region = regions[index]
            ax = axes[row_of[region.kind] * (1 + len(stages)) + column]
            left, top, right, bottom = region.box
            if region.kind == "newline":  # a strip cell right of the picture, at the row's height
                color = pixel_at(figure, ax, sizes[1][0] * 1.06, (top + bottom) / 2)
                assert (color[1] > 150 and color[0] < 100) == (index in stage.kept), (index, color)  # green when kept
                checked["newline"] += 1
                continue
            if right - left < 3 or bottom - top < 3:
                continue  # too small to sample
            color = pixel_at(figure, ax, (left + right) / 2, (top + bottom) / 2)
            kept = index in stage.kept
            assert (color.min() > 200) if kept else (color.max() < 90), (stage.label, index, region, color)
            checked["kept" if kept else "dropped"] += 1
    plt.close(figure)
    assert min(checked.values()) > 10, checked


@pytest.mark.parametrize("pad_to_square", [False, True])
def test_regions_the_model_never_sees_are_hatched(tiny_llava, pad_to_square):
    """llava-hf's center crop cuts the sides of a wide picture away; padding to a square keeps them."""
    processor = AutoProcessor.from_pretrained(tiny_llava)
    regions = image_token_regions(processor, [(200, 100)], pad_to_square)
    plt = pyplot()
    figure = picture_figure(plt, Image.new("RGB", (200, 100), "black"), regions, 0, [Stage("from layer 2", frozenset(range(len(regions))))], "")
    figure.canvas.draw()
    for ax in figure.axes:
        assert pixel_at(figure, ax, 100, 50).max() < 30  # seen and kept: the picture itself
        assert (pixel_at(figure, ax, 8, 50).min() > 80) == (not pad_to_square)  # the cropped-away margin
    plt.close(figure)


def test_stage_lists_must_match_the_drop_config():
    assert [s.label for s in drop_stages(DropConfig.fastv(k=3), 32, [[0, 1]])] == ["from layer 3"]
    with pytest.raises(ValueError, match="1 kept-token lists for the 3 stage"):
        drop_stages(DropConfig.pyramid(), 32, [[0, 1]])


def test_show_command_answers_and_writes_one_picture_per_image(tiny_llava, tmp_path, capsys):
    images = []
    for name, size in [("wide", (120, 50)), ("tall", (40, 90))]:
        images.append(tmp_path / f"{name}.png")
        Image.new("RGB", size, "orange").save(images[-1])
    out = tmp_path / "out"
    argv = ["show", *map(str, images), "--question", "What color is it?", "--pretrained", str(tiny_llava)]
    argv += ["--drop", "fastv_k=2,fastv_r=0.75", "--out", str(out), "--max-new-tokens", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "answer: " in printed
    assert "from layer 2: 32 of 128 image tokens kept" in printed  # two pictures of 64 tokens, a quarter kept
    written = sorted(path.name for path in out.iterdir())
    assert written == ["image1_wide.png", "image2_tall.png"]
    assert Image.open(out / "image1_wide.png").size[0] > 500  # original + one stage panel

    assert main(argv) == 2  # refuses to overwrite
    assert "pass --force" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "missing.png"), "--question", "?", "--pretrained", str(tiny_llava)]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lmms_kept_run(tiny_llava_next, tmp_path_factory):
    """A real lmms-eval run (PyramidDrop 8/16/24, λ=0.5) with save_kept=true."""
    out = tmp_path_factory.mktemp("lmms_kept") / "out"
    command = [sys.executable, "-c", LMMS_EVAL_MAIN, "--model", "llava_next_pdrop", "--model_args", f"pretrained={tiny_llava_next},save_kept=true"]
    command += ["--tasks", "pdrop_local_vqa", "--include_path", str(TASKS_DIR), "--output_path", str(out), "--log_samples", "--limit", "2", "--device", "cpu"]
    run_lmms_eval(command, out)
    return out


@pytest.fixture(scope="module")
def vlmeval_kept_run(tiny_llava_next, tmp_path_factory):
    """A real pdrop-vlmeval run on the toy multiple-choice set with save_kept=true; (work dir, LMUData)."""
    import subprocess

    lmu_data = tmp_path_factory.mktemp("LMUData")
    make_toy_datasets(lmu_data)
    work_dir = tmp_path_factory.mktemp("vlmeval_kept")
    command = [sys.executable, "-c", "import sys; from pdrop_eval.adapters.vlmeval_run import main; sys.exit(main())"]
    command += ["--model", "llava_next_pdrop", "--data", TOY_MCQ, "--judge", "exact_matching", "--work-dir", str(work_dir)]
    command += ["--model-args", f"pretrained={tiny_llava_next},max_new_tokens=3,save_kept=true"]
    env = {**os.environ, "LMUData": str(lmu_data), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, env=env, cwd=work_dir, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return work_dir, lmu_data


def test_save_kept_is_off_unless_asked(tiny_llava):
    assert resolve_model_options("pyramid", {"pretrained": str(tiny_llava)}, owner="m").save_kept is False
    assert resolve_model_options("pyramid", {"pretrained": str(tiny_llava), "save_kept": "true"}, owner="m").save_kept is True
    with pytest.raises(ValueError, match="save_kept must be true or false"):
        resolve_model_options("pyramid", {"pretrained": str(tiny_llava), "save_kept": "yes please"}, owner="m")


@pytest.mark.parametrize("framework", ["lmms-eval", "vlmeval"])
def test_statistics_store_each_documents_kept_tokens(framework, request):
    folder = request.getfixturevalue("lmms_kept_run") if framework == "lmms-eval" else request.getfixturevalue("vlmeval_kept_run")[0]
    (stats_path,) = folder.rglob("*_pdrop_stats.json")
    samples = json.loads(stats_path.read_text())["samples"]
    assert samples
    for sample in samples:  # the engine's kept lists: nested, sorted, as many as each stage's layers saw
        kept = sample["kept"]
        assert [len(stage) for stage in kept] == [sample["image_tokens_per_layer"][layer] for layer in (8, 16, 24)]
        assert all(stage == sorted(stage) and set(stage) >= set(after) for stage, after in pairwise(kept))
        assert set(kept[0]) <= set(range(sample["num_image_tokens"]))


def test_show_run_draws_an_evaluated_lmms_document(lmms_kept_run, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert main(["show", "--run", str(lmms_kept_run), "--doc", "1", "--out", str(out)]) == 0
    (samples_file,) = lmms_kept_run.rglob("*_samples_pdrop_local_vqa.jsonl")
    logged = [json.loads(line) for line in samples_file.read_text().splitlines()]
    answer = next(sample["filtered_resps"] for sample in logged if sample["doc_id"] == 1)
    assert f"pdrop_local_vqa doc 1: {answer!r}" in capsys.readouterr().out
    assert [path.name for path in out.iterdir()] == ["pdrop_local_vqa_doc1_image1.png"]

    assert main(["show", "--run", str(lmms_kept_run), "--doc", "7", "--out", str(out)]) == 2
    assert "no document 7 in the statistics" in capsys.readouterr().err
    without = tmp_path / "without_kept"  # the same run as one evaluated without save_kept=true
    shutil.copytree(lmms_kept_run, without)
    (stats_path,) = without.rglob("*_pdrop_stats.json")
    data = json.loads(stats_path.read_text())
    data["samples"] = [{key: value for key, value in sample.items() if key != "kept"} for sample in data["samples"]]
    stats_path.write_text(json.dumps(data))
    assert main(["show", "--run", str(without), "--doc", "1", "--out", str(out), "--force"]) == 2
    assert "evaluate with the model arg save_kept=true" in capsys.readouterr().err


def test_show_run_draws_an_evaluated_vlmeval_row(vlmeval_kept_run, tmp_path, capsys, monkeypatch):
    work_dir, lmu_data = vlmeval_kept_run
    monkeypatch.setenv("LMUData", str(lmu_data))
    out = tmp_path / "pictures"
    assert main(["show", "--run", str(work_dir), "--doc", "2", "--task", TOY_MCQ, "--out", str(out)]) == 0
    assert f"{TOY_MCQ} doc 2: " in capsys.readouterr().out
    assert torch.is_grad_enabled()  # VLMEvalKit's import turns autograd off; reading a row must not
    assert [path.name for path in out.iterdir()] == [f"{TOY_MCQ}_doc2_image1.png"]
