"""Where each image token of a LLaVA-1.5 / LLaVA-NeXT prompt comes from in the original pictures.

`image_token_regions(processor, image_sizes)` returns one `TokenRegion` per image token of a prompt, in
the order the model lays the tokens out, so entry i describes the i-th image token of the sample (the
index the drop engine's `kept` lists use). It replays the processor's geometry and the model's order:

* LLaVA-1.5 (`LlavaProcessor`): optional pad to a square (``pad_to_square``, as `LlavaRunner` does before
  the processor, or `LlavaImageProcessor`'s ``do_pad``), resize, center crop, then the vision tower's
  patch grid row by row (after the CLS token when the feature strategy keeps it).
* LLaVA-NeXT (`LlavaNextProcessor`): first the base tile (the whole picture squashed to the tile size)
  row by row; then the anyres grid: the picture resized into the best grid resolution keeping its aspect
  ratio, padded to it centrally, cut into tiles, each tile's patch grid joined into one feature map,
  its padded rows or columns removed as `LlavaNextModel.pack_image_features` / `unpad_image` do, read row
  by row with one `image_newline` token closing each row.

Boxes are (left, top, right, bottom) in pixels of the original picture, clipped to it; a grid cell that
the model keeps although it shows only padding gets an empty box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("patch", "base", "grid", "newline", "extra")


@dataclass(frozen=True)
class TokenRegion:
    """One image token: which picture of the prompt (0-based) and what it sees.

    kind: "patch" (LLaVA-1.5 grid cell), "base" (LLaVA-NeXT overview tile cell), "grid" (LLaVA-NeXT anyres
    cell), "newline" (LLaVA-NeXT `image_newline`, closing a grid row: its box spans that row, so a plot can
    draw it beside the row), "extra" (a non-spatial vision token such as CLS: box None).
    """

    image: int
    kind: str
    box: tuple[float, float, float, float] | None


@dataclass(frozen=True)
class _Frame:
    """A picture the processor derived from the original (resized, cropped, padded) and the way back:
    original x = left + x * scale_x, original y = top + y * scale_y."""

    width: int
    height: int
    left: float = 0.0
    top: float = 0.0
    scale_x: float = 1.0
    scale_y: float = 1.0

    def resize(self, width: int, height: int) -> _Frame:
        return _Frame(width, height, self.left, self.top, self.scale_x * self.width / width, self.scale_y * self.height / height)

    def crop(self, x: int, y: int, width: int, height: int) -> _Frame:
        """The window at (x, y) of this frame; negative offsets or a larger size mean padding."""
        return _Frame(width, height, self.left + x * self.scale_x, self.top + y * self.scale_y, self.scale_x, self.scale_y)

    def center_crop(self, width: int, height: int) -> _Frame:
        # transformers' center_crop: offset int((size - crop) / 2), which also places the padding when the crop is larger
        return self.crop(int((self.width - width) / 2), int((self.height - height) / 2), width, height)

    def box(self, x0: float, y0: float, x1: float, y1: float, original: tuple[int, int]) -> tuple[float, float, float, float]:
        """This frame's pixel box in original coordinates, clipped to the original (width, height)."""
        width, height = original
        left, right = (min(max(self.left + x * self.scale_x, 0.0), width) for x in (x0, x1))
        top, bottom = (min(max(self.top + y * self.scale_y, 0.0), height) for y in (y0, y1))
        return (left, top, right, bottom)


def image_token_regions(processor, image_sizes: Sequence[tuple[int, int]], pad_to_square: bool = False) -> list[TokenRegion]:
    """One `TokenRegion` per image token of a prompt showing pictures of `image_sizes` ((width, height) each,
    as PIL's `Image.size`, in prompt order), for a `LlavaProcessor` or `LlavaNextProcessor`.
    `pad_to_square`: the pictures were centered on a square canvas before the processor (LLaVA-1.5 only,
    `LlavaRunner.pad_to_square`)."""
    from transformers import LlavaNextProcessor, LlavaProcessor

    if isinstance(processor, LlavaNextProcessor):
        layout = _llava_next_regions
    elif isinstance(processor, LlavaProcessor):
        layout = _llava_regions
    else:
        raise TypeError(f"token map: expected a LlavaProcessor or LlavaNextProcessor, got {type(processor).__name__}")
    if not processor.patch_size:
        raise ValueError("token map: the processor has no patch_size, so its image token count is unknown")
    extra = processor.num_additional_image_tokens - (processor.vision_feature_select_strategy == "default")
    if extra < 0:
        raise ValueError(
            f"token map: vision_feature_select_strategy='default' removes a CLS token but the processor's "
            f"num_additional_image_tokens is {processor.num_additional_image_tokens}"
        )
    if pad_to_square and layout is _llava_next_regions:
        raise ValueError("token map: pad_to_square applies to LLaVA-1.5 only (LLaVA-NeXT's anyres keeps the aspect ratio)")
    regions = []
    for image, (width, height) in enumerate(image_sizes):
        if width < 1 or height < 1:
            raise ValueError(f"token map: image {image} has size {width}x{height}")
        regions += layout(processor, image, (int(width), int(height)), extra, pad_to_square)
    return regions


def _llava_regions(processor, image: int, size: tuple[int, int], extra: int, pad_to_square: bool) -> list[TokenRegion]:
    image_processor = processor.image_processor
    frame = _Frame(*size)
    processor_pads = getattr(image_processor, "do_pad", False)
    if processor_pads and not hasattr(image_processor, "pad_to_square"):
        raise ValueError(f"token map: do_pad of {type(image_processor).__name__} is not supported (only LlavaImageProcessor's pad to square)")
    if pad_to_square or processor_pads:  # a square stays as it is, so padding twice is padding once
        side = max(size)
        frame = frame.crop(-((side - size[0]) // 2), -((side - size[1]) // 2), side, side)
    frame = _resize_and_crop(frame, image_processor)
    regions = [TokenRegion(image, "extra", None)] * extra
    return regions + [TokenRegion(image, "patch", box) for row in _cell_boxes(frame, processor.patch_size, size) for box in row]


def _llava_next_regions(processor, image: int, size: tuple[int, int], extra: int, pad_to_square: bool) -> list[TokenRegion]:
    from transformers.image_processing_utils import select_best_resolution

    if extra:
        raise ValueError(
            "token map: LLaVA-NeXT packs patch features only; a vision_feature_select_strategy keeping a CLS token "
            f"(num_additional_image_tokens={processor.num_additional_image_tokens}) cannot be laid out"
        )
    image_processor = processor.image_processor
    resize, crop, patch = _size(image_processor.size), _size(image_processor.crop_size), processor.patch_size
    width, height = size
    original = _Frame(width, height)
    tile_height, tile_width = (resize.height, resize.width) if resize.height and resize.width else (resize.shortest_edge,) * 2
    tile = crop.height if crop and crop.height else tile_height  # the processor's square grid tile
    base = _resize_and_crop(original.resize(tile_width, tile_height), image_processor)
    regions = [TokenRegion(image, "base", box) for row in _cell_boxes(base, patch, size) for box in row]

    best_height, best_width = select_best_resolution((height, width), image_processor.image_grid_pinpoints)
    if best_height % tile or best_width % tile:
        raise ValueError(f"token map: grid resolution {best_width}x{best_height} is not a multiple of the {tile}px tile")
    fit_width, fit_height = _fit_inside(width, height, best_width, best_height)
    canvas = original.resize(fit_width, fit_height).crop(
        -((best_width - fit_width) // 2), -((best_height - fit_height) // 2), best_width, best_height
    )
    # feature map rows: one list of cell boxes per row of cells, tiles joined side by side
    feature_map = []
    for tile_top in range(0, best_height, tile):
        tile_rows = [
            _cell_boxes(_resize_and_crop(canvas.crop(tile_left, tile_top, tile, tile), image_processor), patch, size)
            for tile_left in range(0, best_width, tile)
        ]
        feature_map += [[box for tile_row in rows for box in tile_row] for rows in zip(*tile_rows)]
    rows, columns = _unpadded_cells(len(feature_map), len(feature_map[0]), width, height)
    for row in rows:
        boxes = feature_map[row][columns.start : columns.stop]
        regions += [TokenRegion(image, "grid", box) for box in boxes]
        span = (boxes[0][0], min(b[1] for b in boxes), boxes[-1][2], max(b[3] for b in boxes))
        regions.append(TokenRegion(image, "newline", span))
    return regions


def _resize_and_crop(frame: _Frame, image_processor) -> _Frame:
    """The processor's per-picture (LLaVA-1.5) or per-tile (LLaVA-NeXT) resize, then center crop."""
    if image_processor.do_resize:
        frame = frame.resize(*_resize_target(frame, _size(image_processor.size)))
    if image_processor.do_center_crop:
        crop = _size(image_processor.crop_size)
        frame = frame.center_crop(crop.width, crop.height)
    return frame


def _resize_target(frame: _Frame, size) -> tuple[int, int]:
    """(width, height) after transformers' resize to `size` (shortest edge kept in proportion, or exact)."""
    if size.shortest_edge and not size.longest_edge:
        short, long = sorted((frame.width, frame.height))
        scaled_long = int(size.shortest_edge * long / short)
        return (size.shortest_edge, scaled_long) if frame.width <= frame.height else (scaled_long, size.shortest_edge)
    if size.height and size.width:
        return size.width, size.height
    raise ValueError(f"token map: image processor size {dict(size.items())} is not supported (use shortest_edge, or height and width)")


def _fit_inside(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int]:
    """(width, height) of the aspect-preserving resize into the target, as `get_patch_output_size`."""
    import math

    scale_x, scale_y = target_width / width, target_height / height
    if scale_x < scale_y:
        return target_width, min(math.ceil(height * scale_x), target_height)
    return min(math.ceil(width * scale_y), target_width), target_height


def _unpadded_cells(grid_height: int, grid_width: int, width: int, height: int) -> tuple[range, range]:
    """Rows and columns of the anyres feature map the model keeps (`unpad_image`, in cells)."""
    if width / height > grid_width / grid_height:
        kept = int(round(height * (grid_width / width), 7))
        padding = (grid_height - kept) // 2
        return range(padding, grid_height - padding), range(grid_width)
    kept = int(round(width * (grid_height / height), 7))
    padding = (grid_width - kept) // 2
    return range(grid_height), range(padding, grid_width - padding)


def _cell_boxes(frame: _Frame, patch: int, original: tuple[int, int]) -> list[list[tuple[float, float, float, float]]]:
    """Original-picture boxes of the vision tower's patch cells over `frame`, one list per row."""
    return [
        [frame.box(column * patch, row * patch, (column + 1) * patch, (row + 1) * patch, original) for column in range(frame.width // patch)]
        for row in range(frame.height // patch)
    ]


def _size(size):
    """A SizeDict from the image processor's size or crop_size (a plain dict when set by hand)."""
    from transformers.image_utils import SizeDict

    return SizeDict(**size) if isinstance(size, dict) else size
