"""`pdrop-eval show`: the pictures dim exactly the dropped tokens' regions, and the command runs end to end."""

import random

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from pdrop_eval.cli import main
from pdrop_eval.engine.config import DropConfig
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
