"""Behaviour that no other test pinned down (a planted one-line bug survived each, issue 31): ties in the
ranking, LLaVA-NeXT's N under a set of grids without a square one, and the query row under right padding."""

import dataclasses
import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from pdrop_eval import DropConfig, apply_drop
from pdrop_eval.flops import image_tokens_from_config
from pdrop_eval.models import family_of_config
from pdrop_eval.tiny import TINY, make_tiny_model


def _picture(seed: int, size: tuple[int, int]) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy())


def _prompt(question: str) -> str:
    return f"USER: <image>\n{question} ASSISTANT:"


def _load(path):
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval(), AutoProcessor.from_pretrained(path)


def _kept(model, config, inputs) -> list:
    with apply_drop(model, config) as handle, torch.no_grad():
        model(**inputs)
    return [stats.kept for stats in handle.last_stats]


def test_tied_scores_keep_the_earliest_image_tokens(tiny_llava):
    """The ranking keeps the earlier slot on a tie. With each boundary layer's k_proj zeroed every key is
    0, the query's attention is uniform over its row, and each stage keeps the first int(N·λ^s) image tokens."""
    model, processor = _load(tiny_llava)
    config = DropConfig.pyramid(layer_list=[8, 16, 24], ratio=0.5)
    with torch.no_grad():
        for layer in (8, 16, 24):
            model.model.language_model.layers[layer].self_attn.k_proj.weight.zero_()
    inputs = processor(images=[_picture(0, (64, 64))], text=[_prompt("What color is the square?")], return_tensors="pt")
    (kept,) = _kept(model, config, inputs)
    assert [list(stage) for stage in kept] == [list(range(count)) for count in config.kept_counts(64)]


def test_next_n_without_a_square_grid_is_what_the_processor_gives(tmp_path):
    """One newline token per grid row: with a square grid among the pinpoints (every shipped and tiny
    config), or both orientations of one, a newline per column gives the same largest N. Wide grids only
    (1x2 and 1x3 tiles of 8x8 patches) tell them apart: 64 + 8·24 + 8 = 264, not 64 + 8·24 + 24."""
    spec = dataclasses.replace(TINY, grid_pinpoints=((64, 128), (64, 192)))
    path = make_tiny_model(tmp_path / "wide", arch="llava_next", num_layers=2, spec=spec)
    processor = AutoProcessor.from_pretrained(path)
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    config = json.loads((path / "config.json").read_text())
    counts = {}
    for size in [(192, 64), (128, 64), (100, 90), (64, 64), (300, 40), (64, 200)]:
        encoded = processor(images=[Image.new("RGB", size)], text=["<image>"], return_tensors="pt")
        counts[size] = int((encoded.input_ids == image_token).sum())
        assert family_of_config(config).image_tokens_per_image(config, size) == counts[size], size
    assert image_tokens_from_config(config) == (max(counts.values()), True) == (264, True)


@pytest.mark.parametrize("config", [DropConfig.pyramid(), DropConfig.fastv(k=3, r=0.6)], ids=["pdrop", "fastv"])
def test_right_padded_samples_rank_with_their_own_last_token(tiny_llava_next, config):
    """Inference ranks with each sample's last real token, wherever the padding is: right-padded, a
    shorter prompt keeps what it keeps alone (its last slot is padding, not its query)."""
    model, processor = _load(tiny_llava_next)
    prompts = [_prompt("What?"), _prompt("Is there a red circle in the picture? Please answer yes or no.")]
    pictures = [_picture(1, (64, 64)), _picture(2, (128, 64))]
    processor.tokenizer.padding_side = "right"
    batch = processor(images=pictures, text=prompts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, -1] == 0 and batch["attention_mask"][:, 0].all()  # the first sample is right-padded
    alone = [_kept(model, config, processor(images=[picture], text=[prompt], return_tensors="pt"))[0] for prompt, picture in zip(prompts, pictures)]
    assert _kept(model, config, batch) == alone
