"""The pooling control: each image's tokens average-pooled on their 2-D patch grid to `pool_tokens`
tokens before the language model, the plain downsampling baseline token-reduction papers compare with.

What exactly: LLaVA-1.5's image tokens (the projector's outputs, i.e. the language model's input
embeddings, so it pools *after* the projector, as LLaVA-NeXT-Video's and LLaVA-OneVision's 2-D pooling
of projected features does) are laid out on their side x side grid (24 x 24 for 576 tokens), row by
row, and reduced with adaptive average pooling (as `torch.nn.functional.adaptive_avg_pool2d`: output
cell (i, j) averages rows floor(i·side/h) .. ceil((i+1)·side/h) - 1 and likewise columns) to an h x w
grid with h·w = pool_tokens exactly, the most nearly square one that fits (64 -> 8 x 8, 128 -> 8 x 16,
192 -> 12 x 16); a count with no such grid (a prime wider than the image) goes on about square rows of
unequal width, each row band pooled to its own number of cells (`pool_rows`). The pooled tokens go on row by row, in
place of the image's tokens (compact positions: the language model sees the shorter sequence).

LLaVA-NeXT: `pool_tokens` counts the whole image. Its block is the base tile (side x side patches, row
by row) then the unpadded anyres grid (R rows x C patches, each row closed by an `image_newline`
token). The newline tokens are dropped; the base tile gets floor(pool_tokens · side² / (side² + R·C))
tokens (at least 1, at most pool_tokens - 1), the grid the rest; each part is pooled as above to the
most nearly square grid of exactly its count that fits its patches, standing upright when R > C, or
rows of unequal width where none fits (`pool_rows`; the split: `next_pool_split`). The pooled tokens go on base first, then
grid, row by row. So every image keeps exactly pool_tokens tokens whatever its N. An image with no
more patches than pool_tokens is not pooled: it keeps its tokens less its first newline tokens, as
many as make pool_tokens (all of them when pool_tokens >= N); LLaVA-1.5's is kept whole when
pool_tokens >= N.
The reducer finds R from the newline tokens it reads.

Plain Python (no torch): the parts load when a model runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdrop_eval.engine.methods.base import (
    PLACE_BEFORE_LANGUAGE_MODEL,
    Boundary,
    MethodSpec,
    check_int,
    parse_int,
)


@dataclass(frozen=True)
class PoolParams:
    pool_tokens: int  # tokens per image after pooling (`pool_rows`)


def fitting_grid(count: int, shape: tuple[int, int]) -> tuple[int, int] | None:
    """The most nearly square h x w grid of exactly `count` cells within `shape` (rows, columns), standing
    like the shape (h >= w when rows > columns); None when no grid of `count` cells fits."""
    rows, columns = shape
    grids = [(h, count // h) for h in range(1, count + 1) if count % h == 0 and h <= rows and count // h <= columns]
    upright = rows > columns
    return min(grids, key=lambda hw: (max(hw) / min(hw), (hw[0] < hw[1]) if upright else (hw[0] > hw[1])), default=None)


def pool_rows(count: int, shape: tuple[int, int]) -> list[int]:
    """The pooled tokens of a part of `shape` (rows, columns) patches, as cells per output row: the most
    nearly square grid of exactly `count` cells that fits (`fitting_grid`; 64 -> 8 x 8 on 24 x 24);
    where none does (a prime count wider than the part), about square rows of count // h or one more
    cells, the wider rows first."""
    grid = fitting_grid(count, shape)
    if grid:
        return [grid[1]] * grid[0]
    rows, columns = shape
    height = min(rows, max(-(-count // columns), round(math.sqrt(count * rows / columns))))
    return [count // height + (row < count % height) for row in range(height)]


def next_pool_split(pool_tokens: int, base_patches: int, grid_patches: int) -> tuple[int, int]:
    """(base, grid): LLaVA-NeXT's pool_tokens shared between the base tile and the anyres grid in
    proportion to their patches, rounded down for the base, each part keeping at least one token."""
    base = min(max(pool_tokens * base_patches // (base_patches + grid_patches), 1), pool_tokens - 1)
    return base, pool_tokens - base


def image_grid_side(num_image_tokens: int) -> int:
    """The side of the square patch grid of `num_image_tokens` image tokens (a ValueError if none)."""
    side = math.isqrt(num_image_tokens)
    if side * side != num_image_tokens:
        raise ValueError(
            f"pooling needs an image's tokens on a square patch grid; {num_image_tokens} image tokens are not one "
            "(a [CLS] token kept by vision_feature_select_strategy='full', or several images in one prompt)"
        )
    return side


class Pool(MethodSpec):
    def check(self, params: PoolParams) -> None:
        if check_int("pool_tokens", params.pool_tokens) < 1:
            raise ValueError(f"pool_tokens must be >= 1, got {params.pool_tokens}")

    def boundaries(self, params: PoolParams, num_layers: int) -> list[Boundary]:
        return [Boundary.before_language_model()]

    def kept_counts(self, params: PoolParams, num_image_tokens: int) -> list[int]:
        if not num_image_tokens:
            return [0]
        if math.isqrt(num_image_tokens) ** 2 != num_image_tokens:  # LLaVA-NeXT (base tile + grid); LLaVA-1.5's reducer refuses it
            if params.pool_tokens < 2:
                raise ValueError(
                    f"pool_tokens={params.pool_tokens} cannot pool a LLaVA-NeXT image: it needs at least 1 token for the "
                    "base tile and 1 for the grid"
                )
            return [min(params.pool_tokens, num_image_tokens)]
        image_grid_side(num_image_tokens)  # LLaVA-1.5: a square grid
        return [min(params.pool_tokens, num_image_tokens)]

    def scorer(self, params: PoolParams):
        from pdrop_eval.engine.vision_side import (
            FirstImageSlots,  # torch: loaded only when a model runs
        )

        return FirstImageSlots()

    def reducer(self, params: PoolParams):
        from pdrop_eval.engine.vision_side import GridPoolReducer

        return GridPoolReducer(pool_tokens=params.pool_tokens)

    def budget_fields(self, count: int) -> dict:
        return {"pool_tokens": count}

    def budget_counts(self, num_image_tokens: int, shape: dict) -> range:
        """1 .. N (LLaVA-NeXT's non-square N: from 2, a token for the base tile and one for the grid)."""
        return range(1 if math.isqrt(num_image_tokens) ** 2 == num_image_tokens else 2, num_image_tokens + 1)

    def label(self, params: PoolParams, position_mode: str) -> str:
        return f"{self.series} {params.pool_tokens}"

    def describe(self, params: PoolParams, position_mode: str) -> str:
        return f"{self.title}(pool_tokens={params.pool_tokens})"

    def options(self, params: PoolParams, position_mode: str) -> dict[str, str]:
        return {"pool_tokens": str(params.pool_tokens)}


POOL_OPTIONS = {"pool_tokens": ("pool_tokens", parse_int)}

POOL = Pool(
    name="pool", title="Average pooling", kind="pool", series="Pool", keys=tuple(POOL_OPTIONS),
    defaults={"pool_tokens": 64, "position_mode": "compact"}, params_class=PoolParams, place=PLACE_BEFORE_LANGUAGE_MODEL,
    budget_family="count", budget_keys=tuple(POOL_OPTIONS),
)
