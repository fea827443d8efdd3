"""The image-token -> picture-region map against the processor and the model's own layout code.

Pictures go through the real processor; its pixel_values go through the model's own patch embedding
(weights set so each patch feature is the mean colour of the pixels that patch saw) and, for LLaVA-NeXT,
the model's own `pack_image_features`. So the i-th feature is what the i-th image token of the prompt
really sees, and the map must name a box of the original picture that shows exactly that.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    CLIPImageProcessor,
    LlavaImageProcessor,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
)
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextModel,
    image_size_to_num_patches,
)

from pdrop_eval.tiny import TINY
from pdrop_eval.token_map import image_token_regions
from pdrop_eval.wrapper import expand_to_square

SIZES = [(64, 64), (100, 40), (40, 100), (200, 150), (30, 90), (128, 128), (300, 57), (57, 131)]
NEWLINE_MARK = -1000.0


def variants(checkpoint: str) -> dict:
    """The tiny checkpoint's processor plus variants that exercise every geometry step: name ->
    (processor, whether LlavaRunner pads the pictures to a square before it)."""
    stock = AutoProcessor.from_pretrained(checkpoint)
    common = {"tokenizer": stock.tokenizer, "patch_size": TINY.patch_size, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
    crop = {"height": 64, "width": 64}
    if isinstance(stock, LlavaNextProcessor):
        larger = LlavaNextImageProcessor(size={"shortest_edge": 72}, crop_size=crop, image_grid_pinpoints=[list(p) for p in TINY.grid_pinpoints])
        return {"stock": (stock, False), "resize-72-crop-64": (LlavaNextProcessor(image_processor=larger, **common), False)}
    return {
        "stock": (stock, False),
        "runner-pads": (stock, True),
        "resize-72-crop-64": (LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 72}, crop_size=crop), **common), False),
        "squash-no-crop": (LlavaProcessor(image_processor=CLIPImageProcessor(size=crop, do_center_crop=False), **common), False),
        # black padding (mean 0), so padded pixels read as "no picture" below
        "processor-pads": (
            LlavaProcessor(
                image_processor=LlavaImageProcessor(do_pad=True, size={"shortest_edge": 64}, crop_size=crop, image_mean=[0, 0, 0], image_std=[1, 1, 1]),
                **common,
            ),
            False,
        ),
        "cls-kept": (LlavaProcessor(**{**common, "vision_feature_select_strategy": "full"}, image_processor=stock.image_processor), False),
    }


def as_given(images, pad_to_square: bool):
    """The pictures as LlavaRunner hands them to the processor (black padding: reads as "no picture")."""
    return [expand_to_square(image, (0, 0, 0)) for image in images] if pad_to_square else images


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def checkpoint(request, tiny_llava, tiny_llava_next):
    return str(tiny_llava if request.param == "llava" else tiny_llava_next)


def prompt_image_tokens(processor, images) -> tuple[int, dict]:
    text = "USER: " + "<image>\n" * len(images) + "What is there? ASSISTANT:"
    encoded = processor(images=images, text=[text], return_tensors="pt")
    return int((encoded.input_ids == processor.image_token_id).sum()), encoded


def model_token_colors(processor, config, images) -> list:
    """Per image token of the prompt, in the model's order: the mean RGB (0-1) of the pixels its vision
    patch saw, or None for an image_newline token; the CLS token of the "full" strategy gives the mean
    of nothing in particular and is returned as None too."""
    _, encoded = prompt_image_tokens(processor, images)
    vision = config.vision_config
    embed = CLIPVisionEmbeddings(vision)
    with torch.no_grad():
        embed.patch_embedding.weight.zero_()
        for channel in range(3):
            embed.patch_embedding.weight[channel, channel] = 1.0 / vision.patch_size**2
        embed.class_embedding.fill_(float("nan"))
        embed.position_embedding.weight.zero_()
    image_processor = processor.image_processor
    mean, std = torch.tensor(image_processor.image_mean), torch.tensor(image_processor.image_std)
    keep_cls = processor.vision_feature_select_strategy == "full"

    def features(pixels):  # (tiles, 3, H, W) -> (tiles, cells, hidden), CLS dropped unless kept
        out = embed(pixels.float())
        return out if keep_cls else out[:, 1:]

    with torch.no_grad():
        if isinstance(processor, LlavaNextProcessor):
            sizes = encoded.image_sizes
            per_image = [
                features(pixels[: image_size_to_num_patches(size, config.image_grid_pinpoints, vision.image_size)])
                for pixels, size in zip(encoded.pixel_values, sizes)
            ]
            newline = torch.full((vision.hidden_size,), NEWLINE_MARK)
            packed, _ = LlavaNextModel.pack_image_features(SimpleNamespace(config=config), per_image, sizes, "default", image_newline=newline)
            tokens = torch.cat(packed)
        else:
            tokens = features(encoded.pixel_values).flatten(0, 1)
    colors = []
    for token in tokens:
        if token[0] == NEWLINE_MARK or torch.isnan(token[0]):
            colors.append(None)
        else:
            colors.append((token[:3] * std + mean).tolist())
    return colors


def position_picture(width: int, height: int) -> Image.Image:
    """Red encodes x, green encodes y (pixel centres, 0-1), blue is 1 everywhere on the picture, so
    padding (black) is told apart."""
    x = (np.arange(width) + 0.5) / width
    y = (np.arange(height) + 0.5) / height
    pixels = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y[:, None], (height, width)), np.ones((height, width))], -1)
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8))


def test_token_count_equals_the_processors_expansion(checkpoint):
    for name, (processor, pad) in variants(checkpoint).items():
        for sizes in [[size] for size in SIZES] + [SIZES[1:4], [(1, 1), (500, 3)]]:
            expected, _ = prompt_image_tokens(processor, as_given([Image.new("RGB", size) for size in sizes], pad))
            regions = image_token_regions(processor, sizes, pad)
            assert len(regions) == expected, (name, sizes)
            assert [r.image for r in regions] == sorted(r.image for r in regions)  # pictures in prompt order
            assert {r.image for r in regions} == set(range(len(sizes)))


def test_every_token_box_shows_what_the_model_sees(checkpoint):
    """Each token's box centre is where its patch's pixels came from; padding-only patches get empty boxes."""
    config = AutoConfig.from_pretrained(checkpoint)
    for name, (processor, pad) in variants(checkpoint).items():
        sizes = SIZES[1:5]  # one multi-image prompt per variant; the single-image layouts are inside it
        colors = model_token_colors(processor, config, as_given([position_picture(*size) for size in sizes], pad))
        regions = image_token_regions(processor, sizes, pad)
        assert len(colors) == len(regions), name
        spatial = 0
        for index, (region, color) in enumerate(zip(regions, colors)):
            where = f"{name}: token {index} ({region})"
            if color is None:
                assert region.kind in ("newline", "extra"), where
                continue
            assert region.kind in ("patch", "base", "grid"), where
            width, height = sizes[region.image]
            left, top, right, bottom = region.box
            red, green, coverage = color
            if coverage < 0.02:  # the patch saw only padding
                assert (right - left) * (bottom - top) < 1e-6, where
                continue
            spatial += 1
            # centroid of the picture pixels the patch saw, from the position encoding
            seen_x, seen_y = red / coverage * width, green / coverage * height
            # a one-cell error moves the centre by a whole cell
            same = [r.box for r in regions if r.image == region.image and r.kind == region.kind]
            cell_width, cell_height = max(b[2] - b[0] for b in same), max(b[3] - b[1] for b in same)
            assert abs(seen_x - (left + right) / 2) < 1.5 + 0.2 * cell_width, (where, seen_x)
            assert abs(seen_y - (top + bottom) / 2) < 1.5 + 0.2 * cell_height, (where, seen_y)
        assert spatial >= len(regions) / 2, name  # most tokens were checked


def test_marker_lands_in_the_tokens_the_map_names(checkpoint):
    """A white square drawn on the second picture of a two-picture prompt lights exactly the tokens whose
    boxes lie inside it; tokens whose boxes miss it, and every token of the first picture, stay dark."""
    config = AutoConfig.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    sizes = [(90, 60), (160, 70)]
    marker = (96, 14, 136, 50)  # left, top, right, bottom on the second picture
    second = Image.new("RGB", sizes[1])
    second.paste((255, 255, 255), marker)
    colors = model_token_colors(processor, config, [Image.new("RGB", sizes[0], (40, 40, 40)), second])
    regions = image_token_regions(processor, sizes)
    inside = outside = 0
    for region, color in zip(regions, colors):
        if region.kind not in ("patch", "base", "grid"):
            continue
        brightness = color[0]
        if region.image == 0:
            assert abs(brightness - 40 / 255) < 0.02, region
            continue
        left, top, right, bottom = region.box
        if left >= marker[0] and top >= marker[1] and right <= marker[2] and bottom <= marker[3]:
            inside += 1
            assert brightness > 0.85, region
        elif right <= marker[0] - 1 or left >= marker[2] + 1 or bottom <= marker[1] - 1 or top >= marker[3] + 1:
            outside += 1
            assert brightness < 0.1, region
    assert inside >= 4 and outside > inside


def test_unsupported_processors_are_refused(tiny_llava, tiny_llava_next):
    stock = AutoProcessor.from_pretrained(tiny_llava)
    with pytest.raises(TypeError, match="LlavaProcessor or LlavaNextProcessor"):
        image_token_regions(stock.image_processor, [(64, 64)])
    missing_cls = LlavaProcessor(image_processor=stock.image_processor, tokenizer=stock.tokenizer, patch_size=8, vision_feature_select_strategy="default")
    with pytest.raises(ValueError, match="num_additional_image_tokens"):
        image_token_regions(missing_cls, [(64, 64)])
    with pytest.raises(ValueError, match="image 1 has size 0x5"):
        image_token_regions(stock, [(64, 64), (0, 5)])
    with pytest.raises(ValueError, match="pad_to_square applies to LLaVA-1.5 only"):
        image_token_regions(AutoProcessor.from_pretrained(tiny_llava_next), [(64, 64)], pad_to_square=True)
