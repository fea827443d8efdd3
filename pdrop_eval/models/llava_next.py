"""LLaVA-NeXT (HF model_type "llava_next"): LLaVA-1.5's parts, with "anyres" images. Per image: a base
tile (the whole picture squashed to the tower's size), then the picture resized into the best grid
resolution keeping its aspect ratio, padded to it centrally, cut into tiles whose patch grids are
joined into one feature map, its padded rows or columns removed (`LlavaNextModel.pack_image_features`
/ `unpad_image`), read row by row with one `image_newline` token closing each row. So N depends on the
picture's size."""

from __future__ import annotations

from pdrop_eval.models.family import config_value
from pdrop_eval.models.layout import Frame, TokenRegion, cell_boxes, fit_inside, resize_and_crop, size_dict, unpadded_cells
from pdrop_eval.models.llava import LlavaFamily


class LlavaNextFamily(LlavaFamily):
    name = "llava_next"
    title = "LLaVA-NeXT"
    model_class_name = "LlavaNextForConditionalGeneration"
    processor_class_name = "LlavaNextProcessor"
    config_class_name = "LlavaNextConfig"
    image_processor_class_name = "LlavaNextImageProcessor"

    # ----- image tokens ---------------------------------------------------------------------------
    def image_tokens_per_image(self, config, image_size: tuple[int, int]) -> int:
        from pdrop_eval.compat import ensure_torchvision_importable

        ensure_torchvision_importable()  # before transformers' image code imports torchvision
        from transformers.image_processing_utils import select_best_resolution

        width, height = image_size
        best_height, best_width = select_best_resolution((height, width), self._grid_resolutions(config))
        rows, columns = self.resolution_grid(config, best_height, best_width)
        rows, columns = unpadded_cells(rows, columns, width, height)
        return self._tile_tokens(config) + self._grid_tokens(config, len(rows), len(columns))  # base tile, then the grid

    def max_image_tokens(self, config) -> tuple[int, bool]:
        """The base tile, plus the largest anyres grid with one newline token per row, which an image of
        the grid's own aspect ratio gets unpadded (2928 for 336-pixel tiles and a 2x2 grid, where the
        paper's FLOPs column uses 2880)."""
        grids = [self.resolution_grid(config, height, width) for height, width in self._grid_resolutions(config)]
        return self._tile_tokens(config) + max(self._grid_tokens(config, rows, columns) for rows, columns in grids), True

    def resolution_grid(self, config, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of patch cells of the feature map of one anyres grid resolution (in pixels)."""
        tile, side = self._vision_field(config, "image_size"), self.patches_per_side(config)
        return height // tile * side, width // tile * side

    def _grid_tokens(self, config, rows: int, columns: int) -> int:
        """Tokens of an unpadded anyres grid of rows x columns cells: the cells and one newline per row."""
        return rows * (columns + 1)


    @staticmethod
    def _grid_resolutions(config) -> list:
        """The anyres grid resolutions, (height, width) each."""
        resolutions = config_value(config, "image_grid_pinpoints", None)
        if not resolutions:
            raise ValueError("a llava_next config needs image_grid_pinpoints to know its number of image tokens")
        return resolutions

    # ----- token-to-pixel layout ------------------------------------------------------------------
    def _extra_tokens(self, processor, pad_to_square: bool) -> int:
        extra = super()._extra_tokens(processor, pad_to_square)
        if pad_to_square:
            raise ValueError("token map: pad_to_square applies to LLaVA-1.5 only (LLaVA-NeXT's anyres keeps the aspect ratio)")
        if extra:
            raise ValueError(
                "token map: LLaVA-NeXT packs patch features only; a vision_feature_select_strategy keeping a CLS token "
                f"(num_additional_image_tokens={processor.num_additional_image_tokens}) cannot be laid out"
            )
        return extra

    def _image_regions(self, processor, image: int, size: tuple[int, int], extra: int, pad_to_square: bool) -> list[TokenRegion]:
        """The base tile row by row, then the unpadded anyres grid row by row, each row closed by its
        newline token (whose box spans the row, so a plot can draw it beside the row)."""
        from transformers.image_processing_utils import select_best_resolution

        image_processor = processor.image_processor
        resize, crop, patch = size_dict(image_processor.size), size_dict(image_processor.crop_size), self._patch_pixels(processor)
        width, height = size
        original = Frame(width, height)
        tile_height, tile_width = (resize.height, resize.width) if resize.height and resize.width else (resize.shortest_edge,) * 2
        tile = crop.height if crop and crop.height else tile_height  # the processor's square grid tile
        base = resize_and_crop(original.resize(tile_width, tile_height), image_processor)
        regions = [TokenRegion(image, "base", box) for row in cell_boxes(base, patch, size) for box in row]

        best_height, best_width = select_best_resolution((height, width), image_processor.image_grid_pinpoints)
        if best_height % tile or best_width % tile:
            raise ValueError(f"token map: grid resolution {best_width}x{best_height} is not a multiple of the {tile}px tile")
        fit_width, fit_height = fit_inside(width, height, best_width, best_height)
        canvas = original.resize(fit_width, fit_height).crop(
            -((best_width - fit_width) // 2), -((best_height - fit_height) // 2), best_width, best_height
        )
        # feature map rows: one list of cell boxes per row of cells, tiles joined side by side
        feature_map = []
        for tile_top in range(0, best_height, tile):
            tile_rows = [
                cell_boxes(resize_and_crop(canvas.crop(tile_left, tile_top, tile, tile), image_processor), patch, size)
                for tile_left in range(0, best_width, tile)
            ]
            feature_map += [[box for tile_row in rows for box in tile_row] for rows in zip(*tile_rows)]
        rows, columns = unpadded_cells(len(feature_map), len(feature_map[0]), width, height)
        for boxes in self._token_rows(processor, [feature_map[row][columns.start : columns.stop] for row in rows]):
            regions += [TokenRegion(image, "grid", box) for box in boxes]
            span = (boxes[0][0], min(b[1] for b in boxes), boxes[-1][2], max(b[3] for b in boxes))
            regions.append(TokenRegion(image, "newline", span))
        return regions

    def _patch_pixels(self, processor) -> int:
        """The side in tile pixels of one vision patch, as the processor knows it."""
        return processor.patch_size

    def _token_rows(self, processor, cells: list[list[tuple]]) -> list[list[tuple]]:
        """The grid tokens' boxes row by row, from the unpadded grid's cell boxes: the cells themselves."""
        return cells

    # ----- tiny checkpoints -----------------------------------------------------------------------
    def _anyres_settings(self, spec) -> dict:
        return {"image_grid_pinpoints": [list(resolution) for resolution in spec.grid_pinpoints]}
