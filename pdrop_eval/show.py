"""Pictures of what a drop config keeps (the paper's Figure 5), for any prompt or evaluated document.

One PNG per picture of a prompt: the original, then one panel per drop stage with the regions whose
image tokens were dropped by then dimmed. LLaVA-NeXT pictures get two rows: the anyres grid, with its
`image_newline` tokens drawn apart in a strip at the right (one cell per grid row; green kept, grey
dropped), and the base tile (the whole picture at low resolution). The question, the answer and the
drop config make the caption. Where each token lies comes from `pdrop_eval.token_map` only.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.engine.config import DropConfig
from pdrop_eval.report.files import check_writable
from pdrop_eval.report.plot import pyplot
from pdrop_eval.token_map import TokenRegion

DIM = 0.78  # opacity of the shade over dropped regions
ROWS = {  # panel rows of a picture: title, the token kinds drawn on it
    "patch": ("image tokens", ("patch",)),
    "grid": ("anyres grid", ("grid", "newline")),
    "base": ("base tile", ("base",)),
}


@dataclass(frozen=True)
class EvaluatedDocument:
    """A document an evaluation framework answered, read back from its output: the pictures in prompt
    order (PIL), the question and the answer."""

    images: tuple
    question: str
    answer: str


@dataclass(frozen=True)
class Stage:
    label: str  # e.g. "from layer 8"
    kept: frozenset[int]  # indices into the sample's image-token block


def drop_stages(drop: DropConfig, num_layers: int, kept: Sequence[Sequence[int]]) -> list[Stage]:
    """One `Stage` per boundary of `drop` on a `num_layers` decoder, with the kept indices the engine
    reported for it (`SampleStats.kept`)."""
    boundaries = drop.boundaries(num_layers)
    if len(kept) != len(boundaries):
        raise ValueError(f"{len(kept)} kept-token lists for the {len(boundaries)} stage(s) of {drop.describe()}")
    return [Stage(f"from layer {boundary.drop_layer}", frozenset(indices)) for boundary, indices in zip(boundaries, kept)]


def caption(question: str, answer: str, drop: DropConfig, pretrained: str) -> str:
    def wrap(text: str) -> str:  # one paragraph, unprintable characters (a random model's bytes) shown as "?"
        return textwrap.fill("".join(c if c.isprintable() else "?" for c in " ".join(text.split())), 110)

    return f"Q: {wrap(question)}\nA: {wrap(answer)}\n{drop.describe()} · {pretrained}"


def write_pictures(images, regions: Sequence[TokenRegion], stages: Sequence[Stage], caption_text: str, paths: Sequence[Path], force: bool = False) -> list[Path]:
    """Write one PNG per picture of `images` (PIL, prompt order) to `paths`; `regions` are
    `token_map.image_token_regions` of the whole prompt, so stage indices point into them."""
    if len(paths) != len(images):
        raise ValueError(f"{len(images)} picture(s) but {len(paths)} output path(s)")
    if {region.image for region in regions} != set(range(len(images))):
        raise ValueError(f"the token map covers pictures {sorted({r.image for r in regions})}, the prompt has {len(images)}")
    for path in paths:
        check_writable(Path(path), force)
    plt = pyplot()
    for number, (image, path) in enumerate(zip(images, paths)):
        figure = picture_figure(plt, image, regions, number, stages, caption_text)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
        plt.close(figure)
    return [Path(path) for path in paths]


def picture_figure(plt, image, regions: Sequence[TokenRegion], number: int, stages: Sequence[Stage], caption_text: str):
    """The figure of picture `number` of the prompt: axes[row][0] shows the original, axes[row][s] stage s
    (rows: see ROWS)."""
    from matplotlib.collections import PolyCollection

    tokens = [index for index, region in enumerate(regions) if region.image == number]
    kinds = {regions[index].kind for index in tokens}
    rows = [name for name in ROWS if name in kinds]
    width, height = image.size
    strip = 0.06 * width  # newline cells, right of the grid
    unseen = {name: _unseen_margins([regions[i].box for i in tokens if regions[i].kind in ROWS[name][1]], width, height) for name in rows}
    legend = "dimmed: dropped image tokens"
    legend += "; right strip: image_newline tokens (green kept, grey dropped)" if "grid" in rows else ""
    legend += "; hatched: never seen by the model (cropped away)" if any(unseen.values()) else ""
    caption_text = f"{caption_text}\n{legend}"
    panel_width, title_height, caption_height = 3.0, 0.45, 0.25 + 0.15 * (caption_text.count("\n") + 1)
    panel_height = min(max(panel_width * height / width, 1.2), 6.0)
    figure_height = (panel_height + title_height) * len(rows) + caption_height
    columns = 1 + len(stages)
    figure, axes = plt.subplots(len(rows), columns, figsize=(panel_width * columns, figure_height), squeeze=False)
    extra = [index for index in tokens if regions[index].kind == "extra"]
    for row, name in enumerate(rows):
        title, drawn_kinds = ROWS[name]
        drawn = [index for index in tokens if regions[index].kind in drawn_kinds]
        newlines = [index for index in drawn if regions[index].kind == "newline"]
        for column in range(columns):
            ax = axes[row][column]
            ax.imshow(image, extent=(0, width, height, 0))
            ax.set_xlim(0, width + (2 * strip if newlines else 0))
            ax.set_ylim(height, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if unseen[name]:
                ax.add_collection(PolyCollection([_corners(box) for box in unseen[name]], facecolors="white", alpha=0.5, hatch="//", edgecolors="gray", linewidths=0))
            stage = stages[column - 1] if column else Stage("original", frozenset(tokens))
            dropped = [index for index in drawn if index not in stage.kept and index not in newlines]
            ax.add_collection(PolyCollection([_corners(regions[i].box) for i in dropped], facecolors="black", alpha=DIM, linewidths=0, antialiased=False))
            if newlines:
                cells = [_corners((width + 0.5 * strip, regions[i].box[1], width + 1.5 * strip, regions[i].box[3])) for i in newlines]
                colors = ["limegreen" if index in stage.kept else "dimgray" for index in newlines]
                ax.add_collection(PolyCollection(cells, facecolors=colors, edgecolors="white", linewidths=0.3))
            if column == 0:
                ax.set_ylabel(title)
                ax.set_title(f"original {width}x{height}: {len(drawn)} tokens", fontsize=8)
                continue
            kept = sum(index in stage.kept for index in drawn)
            note = "".join(f" · CLS {'kept' if i in stage.kept else 'dropped'}" for i in extra) if row == 0 else ""
            ax.set_title(f"{stage.label}: {kept}/{len(drawn)} kept{note}", fontsize=8)
    figure.text(0.01, 0.01, caption_text, fontsize=8, va="bottom", ha="left", family="monospace")
    figure.tight_layout(rect=(0, caption_height / figure_height, 1, 1))
    return figure


def _unseen_margins(boxes, width: int, height: int) -> list[tuple[float, float, float, float]]:
    """The parts of the picture outside every token's box (a center crop cuts them away), as up to four
    margins around the boxes' bounding box."""
    boxes = [box for box in boxes if box[2] > box[0] and box[3] > box[1]]
    left, top = min(box[0] for box in boxes), min(box[1] for box in boxes)
    right, bottom = max(box[2] for box in boxes), max(box[3] for box in boxes)
    margins = [(0, 0, left, height), (right, 0, width, height), (left, 0, right, top), (left, bottom, right, height)]
    return [box for box in margins if box[2] - box[0] > 1e-6 and box[3] - box[1] > 1e-6]


def _corners(box):
    left, top, right, bottom = box
    return [(left, top), (right, top), (right, bottom), (left, bottom)]
