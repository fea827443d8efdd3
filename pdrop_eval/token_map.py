"""Where each image token of a prompt comes from in the original pictures.

`image_token_regions(processor, image_sizes)` returns one `TokenRegion` per image token of a prompt, in
the order the model lays the tokens out, so entry i describes the i-th image token of the sample (the
index the drop engine's `kept` lists use). It replays the processor's geometry and the model's order,
as the processor's model family lays them out (`ModelFamily.image_token_regions`): LLaVA-1.5's one
patch grid per picture, LLaVA-NeXT's base tile and unpadded anyres grid with a newline token per row.

Boxes are (left, top, right, bottom) in pixels of the original picture, clipped to it; a grid cell that
the model keeps although it shows only padding gets an empty box.
"""

from __future__ import annotations

from collections.abc import Sequence

from pdrop_eval.models import family_of_processor
from pdrop_eval.models.layout import TokenRegion

__all__ = ["TokenRegion", "image_token_regions"]


def image_token_regions(processor, image_sizes: Sequence[tuple[int, int]], pad_to_square: bool = False) -> list[TokenRegion]:
    """One `TokenRegion` per image token of a prompt showing pictures of `image_sizes` ((width, height) each,
    as PIL's `Image.size`, in prompt order), for the processor of a supported family (`LlavaProcessor`,
    `LlavaNextProcessor`). `pad_to_square`: the pictures were centered on a square canvas before the
    processor (LLaVA-1.5 only, `LlavaRunner.pad_to_square`)."""
    try:
        family = family_of_processor(processor)
    except TypeError as error:
        raise TypeError(f"token map: {error}") from None
    sizes = [(int(width), int(height)) for width, height in image_sizes]
    for image, (width, height) in enumerate(sizes):
        if width < 1 or height < 1:
            raise ValueError(f"token map: image {image} has size {width}x{height}")
    return family.image_token_regions(processor, sizes, pad_to_square)
