"""The pooling control on the tiny LLaVA-1.5 (8 x 8 image tokens) and the tiny LLaVA-NeXT (8 x 8 base
tile, anyres grid): each sample of a padded batch reads its image's projected tokens averaged, by hand,
over the cells of adaptive grids; pooling to the full grid is the stock model; bad settings and models
are refused by name."""

import math

import pytest
import torch
from vision_side_reference import load, models_and_batch, with_image_replaced

from pdrop_eval import DropConfig, apply_drop
from pdrop_eval.engine.methods.pool import pool_rows
from pdrop_eval.engine.vision_side import pool_part

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return models_and_batch(tiny_llava, seed=7)


@pytest.fixture(scope="module")
def llava_next(tiny_llava_next):
    """Two aspect ratios: 48 x 96 pixels -> an 8 x 16 anyres grid (N = 64 + 8·17 = 200), 96 x 40 -> 16 x 6
    unpadded (N = 64 + 16·7 = 176)."""
    return models_and_batch(tiny_llava_next, seed=7, image_shapes=((48, 96), (96, 40)))


def pooled_by_hand(tokens, rows, cols):
    """(rows·cols, d) of the S x S grid of `tokens` (S² tokens, row by row): `pooled_grid_by_hand`."""
    side = math.isqrt(len(tokens))
    return pooled_grid_by_hand(tokens.view(side, side, -1), rows, cols)


def pooled_grid_by_hand(grid, rows, cols):
    """(rows·cols, d): cell (i, j) averages grid rows floor(i·H/rows) .. ceil((i+1)·H/rows) - 1, and
    likewise columns over W, of the H x W x d `grid`."""
    height, width = grid.shape[:2]
    cells = []
    for i in range(rows):
        for j in range(cols):
            top, bottom = i * height // rows, -(-(i + 1) * height // rows)
            left, right = j * width // cols, -(-(j + 1) * width // cols)
            cells.append(grid[top:bottom, left:right].reshape(-1, grid.shape[-1]).mean(0))
    return torch.stack(cells)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_each_sample_reads_its_pooled_grid(llava, attention):
    """24 tokens: a 4 x 6 grid, whose 6 columns over 8 overlap (adaptive pooling)."""
    models, inputs = llava
    model = models[attention]
    with torch.no_grad():
        embeddings = model(**inputs, output_hidden_states=True).hidden_states[0]
        with apply_drop(model, DropConfig.from_args("method=pool,pool_tokens=24")) as handle:
            logits = model(**inputs).logits[:, -1]
        for sample in range(len(inputs["input_ids"])):
            pooled = with_image_replaced(model, inputs, embeddings, sample, lambda image: pooled_by_hand(image, 4, 6))
            assert torch.allclose(model(inputs_embeds=pooled[None]).logits[0, -1], logits[sample], atol=1e-4)
            assert handle.last_stats[sample].image_tokens_per_layer == (24,) * model.config.text_config.num_hidden_layers


def test_llava_next_pools_base_tile_and_grid_without_newlines(llava_next):
    """pool_tokens=20 per image. Sample 0 (8 x 16 grid, 128 patches): base floor(20·64/192) = 6 -> 2 x 3,
    grid 14 -> 2 x 7. Sample 1 (16 x 6 grid, 96 patches): base floor(20·64/160) = 8 -> 2 x 4, grid 12 ->
    3 x 4 turned upright to 4 x 3. Newline tokens (every 17th / 7th grid token) are dropped."""
    models, inputs = llava_next
    model = models["sdpa"]
    config = DropConfig.from_args("method=pool,pool_tokens=20")
    layout = [((8, 16), (2, 3), (2, 7)), ((16, 6), (2, 4), (4, 3))]  # (grid rows x columns, base cells, grid cells)
    layers = model.config.text_config.num_hidden_layers
    with torch.no_grad():
        embeddings = model(**inputs, output_hidden_states=True).hidden_states[0]
        with apply_drop(model, config) as handle:
            logits = model(**inputs).logits[:, -1]
        for sample, ((rows, cols), base_cells, grid_cells) in enumerate(layout):

            def pool(image, rows=rows, cols=cols, base_cells=base_cells, grid_cells=grid_cells):
                assert len(image) == 64 + rows * (cols + 1)
                grid = image[64:].view(rows, cols + 1, -1)[:, :cols]  # each row's last token is its newline
                return torch.cat([pooled_grid_by_hand(image[:64].view(8, 8, -1), *base_cells), pooled_grid_by_hand(grid, *grid_cells)])

            pooled = with_image_replaced(model, inputs, embeddings, sample, pool)
            assert torch.allclose(model(inputs_embeds=pooled[None]).logits[0, -1], logits[sample], atol=1e-4)
            stats = handle.last_stats[sample]
            assert stats.image_tokens_per_layer == tuple(config.image_tokens_per_layer(stats.num_image_tokens, layers))
        assert [stats.num_image_tokens for stats in handle.last_stats] == [200, 176]


def test_pooling_to_the_full_grid_is_the_stock_model(llava):
    models, inputs = llava
    model = models["sdpa"]
    with torch.no_grad():
        stock = model(**inputs).logits
        with apply_drop(model, DropConfig.from_args("method=pool,pool_tokens=64")):
            pooled = model(**inputs).logits
    assert torch.allclose(pooled, stock, atol=1e-5)


def test_bad_settings_and_models_are_refused_by_name(llava, tiny_llava_next):
    models, inputs = llava
    model = models["sdpa"]
    with pytest.raises(ValueError, match=r"Average pooling does not take \['dominant'\]"):
        DropConfig.from_args("method=pool,dominant=2")
    with pytest.raises(ValueError, match="pool_tokens=1 cannot pool a LLaVA-NeXT image: it needs at least 1 token for the base tile"):
        DropConfig.from_args("method=pool,pool_tokens=1").kept_counts(65)


def test_counts_without_a_fitting_grid_and_images_smaller_than_the_budget(llava):
    """pool_tokens >= N keeps the image as it is (the stock model); a prime count wider than the grid
    pools to about square rows of unequal width, each row band averaged to its own cells."""
    models, inputs = llava
    model = models["sdpa"]
    with torch.no_grad():
        stock = model(**inputs).logits
        with apply_drop(model, DropConfig.from_args("method=pool,pool_tokens=100")) as handle:
            torch.testing.assert_close(model(**inputs).logits, stock)
        assert handle.last_stats[0].image_tokens_per_layer[0] == 64
    assert DropConfig.from_args("method=pool,pool_tokens=11").kept_counts(64) == [11]
    assert pool_rows(11, (8, 8)) == [4, 4, 3] and pool_rows(12, (8, 8)) == [4, 4, 4] and pool_rows(6, (4, 2)) == [2, 2, 2]
    part = torch.arange(12.0).view(3, 4, 1)  # rows 0..2, columns 0..3
    # two row bands of 3 rows (rows 0-1 and 1-2, adaptive pooling's overlap), the first in 2 cells, the second in 1
    expected = torch.tensor([[part[0:2, 0:2].mean()], [part[0:2, 2:4].mean()], [part[1:3].mean()]])
    torch.testing.assert_close(pool_part(part, [2, 1]), expected)
