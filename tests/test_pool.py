"""The pooling control on the tiny LLaVA-1.5 (8 x 8 image tokens): each sample of a padded batch reads
its image's projected tokens averaged, by hand, over the cells of an adaptive h x w grid; pooling to
the full grid is the stock model; bad settings and models are refused by name."""

import math

import pytest
import torch
from vision_side_reference import load, models_and_batch, with_image_replaced

from pdrop_eval import DropConfig, apply_drop

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return models_and_batch(tiny_llava, seed=7)


def pooled_by_hand(tokens, rows, cols):
    """(rows·cols, d): cell (i, j) averages grid rows floor(i·S/rows) .. ceil((i+1)·S/rows) - 1, and
    likewise columns, of the S x S grid of `tokens` (S² tokens, row by row)."""
    side = math.isqrt(len(tokens))
    grid = tokens.view(side, side, -1)
    cells = []
    for i in range(rows):
        for j in range(cols):
            top, bottom = i * side // rows, -(-(i + 1) * side // rows)
            left, right = j * side // cols, -(-(j + 1) * side // cols)
            cells.append(grid[top:bottom, left:right].reshape(-1, tokens.shape[-1]).mean(0))
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
    too_many = pytest.raises(ValueError, match="pool_tokens=100 pools to a 10 x 10 grid, which the 8 x 8 grid of 64 image tokens cannot")
    with torch.no_grad(), apply_drop(model, DropConfig.from_args("method=pool,pool_tokens=100")), too_many:
        model(**inputs)
    with pytest.raises(ValueError, match="pool_tokens=11 pools to a 1 x 11 grid"):
        DropConfig.from_args("method=pool,pool_tokens=11").kept_counts(64)
    with pytest.raises(ValueError, match="65 image tokens are not one"):
        DropConfig.from_args("method=pool").kept_counts(65)
    with pytest.raises(ValueError, match=r"Average pooling supports LLaVA-1.5 \('llava'\) models only, got a LLaVA-NeXT"):
        apply_drop(load(tiny_llava_next, "sdpa"), DropConfig.from_args("method=pool"))
