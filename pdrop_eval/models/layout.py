"""Picture geometry shared by the families' token-to-pixel layouts (`ModelFamily.image_token_regions`).

A `Frame` is a picture the processor derived from the original (resized, cropped, padded) together
with the way back to original pixels; `cell_boxes` gives the original-picture box of every vision patch
over a frame. Boxes are (left, top, right, bottom) in pixels of the original picture, clipped to it.
"""

from __future__ import annotations

from dataclasses import dataclass


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
class Frame:
    """A picture the processor derived from the original (resized, cropped, padded) and the way back:
    original x = left + x * scale_x, original y = top + y * scale_y."""

    width: int
    height: int
    left: float = 0.0
    top: float = 0.0
    scale_x: float = 1.0
    scale_y: float = 1.0

    def resize(self, width: int, height: int) -> Frame:
        return Frame(width, height, self.left, self.top, self.scale_x * self.width / width, self.scale_y * self.height / height)

    def crop(self, x: int, y: int, width: int, height: int) -> Frame:
        """The window at (x, y) of this frame; negative offsets or a larger size mean padding."""
        return Frame(width, height, self.left + x * self.scale_x, self.top + y * self.scale_y, self.scale_x, self.scale_y)

    def center_crop(self, width: int, height: int) -> Frame:
        # transformers' center_crop: offset int((size - crop) / 2), which also places the padding when the crop is larger
        return self.crop(int((self.width - width) / 2), int((self.height - height) / 2), width, height)

    def box(self, x0: float, y0: float, x1: float, y1: float, original: tuple[int, int]) -> tuple[float, float, float, float]:
        """This frame's pixel box in original coordinates, clipped to the original (width, height)."""
        width, height = original
        left, right = (min(max(self.left + x * self.scale_x, 0.0), width) for x in (x0, x1))
        top, bottom = (min(max(self.top + y * self.scale_y, 0.0), height) for y in (y0, y1))
        return (left, top, right, bottom)


def resize_and_crop(frame: Frame, image_processor) -> Frame:
    """The processor's per-picture (LLaVA-1.5) or per-tile (LLaVA-NeXT) resize, then center crop."""
    if image_processor.do_resize:
        frame = frame.resize(*_resize_target(frame, size_dict(image_processor.size)))
    if image_processor.do_center_crop:
        crop = size_dict(image_processor.crop_size)
        frame = frame.center_crop(crop.width, crop.height)
    return frame


def _resize_target(frame: Frame, size) -> tuple[int, int]:
    """(width, height) after transformers' resize to `size` (shortest edge kept in proportion, or exact)."""
    if size.shortest_edge and not size.longest_edge:
        short, long = sorted((frame.width, frame.height))
        scaled_long = int(size.shortest_edge * long / short)
        return (size.shortest_edge, scaled_long) if frame.width <= frame.height else (scaled_long, size.shortest_edge)
    if size.height and size.width:
        return size.width, size.height
    raise ValueError(f"token map: image processor size {dict(size.items())} is not supported (use shortest_edge, or height and width)")


def fit_inside(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int]:
    """(width, height) of the aspect-preserving resize into the target, as `get_patch_output_size`."""
    import math

    scale_x, scale_y = target_width / width, target_height / height
    if scale_x < scale_y:
        return target_width, min(math.ceil(height * scale_x), target_height)
    return min(math.ceil(width * scale_y), target_width), target_height


def unpadded_cells(grid_height: int, grid_width: int, width: int, height: int) -> tuple[range, range]:
    """Rows and columns of the anyres feature map the model keeps (`unpad_image`, in cells)."""
    if width / height > grid_width / grid_height:
        kept = int(round(height * (grid_width / width), 7))
        padding = (grid_height - kept) // 2
        return range(padding, grid_height - padding), range(grid_width)
    kept = int(round(width * (grid_height / height), 7))
    padding = (grid_width - kept) // 2
    return range(grid_height), range(padding, grid_width - padding)


def cell_boxes(frame: Frame, patch: int, original: tuple[int, int]) -> list[list[tuple[float, float, float, float]]]:
    """Original-picture boxes of the vision tower's patch cells over `frame`, one list per row."""
    return [
        [frame.box(column * patch, row * patch, (column + 1) * patch, (row + 1) * patch, original) for column in range(frame.width // patch)]
        for row in range(frame.height // patch)
    ]


def size_dict(size):
    """A SizeDict from the image processor's size or crop_size (a plain dict when set by hand)."""
    from transformers.image_utils import SizeDict

    return SizeDict(**size) if isinstance(size, dict) else size
