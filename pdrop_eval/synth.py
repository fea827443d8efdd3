"""`pdrop_synth`: a fine-grained synthetic VQA benchmark whose answers live in small image regions.

An image is a grid of 8x8-pixel cells (one vision patch each in the trainable tiny LLaVA-NeXT,
`pdrop_eval.tiny.SYNTH`) on a light background; a few cells hold a coloured shape (square, circle,
triangle, cross), the rest are empty. A local question names one object by the attribute that no
other object in the image shares and asks for its other attribute ("What color is the triangle?",
"Which shape is blue?"), so the answer is written in one cell only and a model must keep that cell's
image token to answer. Counting questions ("How many red objects are there?") need every object.
Image sizes (32x32 ... 64x32) give LLaVA-NeXT anyres grids of different shapes, so the number of
image tokens varies per sample.

Each row records where its answer lives (`boxes`, pixel boxes ``[x0, y0, x1, y1]`` of the cells
that decide it) and whether it is `local`. Answers are one word or one digit; scoring is exact match.
Everything is deterministic by seed; the test split is built first and no train image repeats a test
image (same size and same objects in the same cells). Test images hold 2-5 objects; train images 1-5.

``pdrop-eval make-synth`` writes ``train.parquet`` (multi-turn: several questions about one image),
``test.parquet`` (one question per row) and the VLMEvalKit TSV of the test split.
"""

from __future__ import annotations

import io
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pdrop_eval.package_data import TASKS_DIR

CELL = 8  # pixels per grid cell (= one patch of the trainable tiny model)
BACKGROUND = (245, 245, 245)
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 200),
}
# Width x height: square, wide and tall pictures; each size is one of the tiny model's anyres grids.
# Small on purpose: every empty cell is an image token that dilutes the one holding the answer.
SIZES = ((32, 32), (48, 32), (32, 48), (48, 48), (64, 32), (32, 64))
# Objects per image (inclusive). The train split is a curriculum: its rows are written easy first, the
# most objects a scene may hold growing from one to the maximum over the first CURRICULUM share of the
# rows, so a model trained on them in order (`pdrop-eval train --sequential`) first learns to read the
# one object there is, then to pick one cell among distractors as every test question requires.
OBJECTS_PER_IMAGE = {"train": (1, 5), "test": (2, 5)}
CURRICULUM = 0.3
MAX_COUNT = 4  # counting answers are 1..MAX_COUNT

# 6x6 glyphs drawn inside an 8x8 cell with a one-pixel margin ('#' = object colour).
SHAPES = {  # drawn to differ in many pixels, so that a tiny model tells them apart quickly
    "square": ("######", "######", "######", "######", "######", "######"),
    "circle": (".####.", "#....#", "#....#", "#....#", "#....#", ".####."),
    "triangle": ("#.....", "##....", "###...", "####..", "#####.", "######"),
    "cross": ("#....#", ".#..#.", "..##..", "..##..", ".#..#.", "#....#"),
}

# Question kinds, their share of the questions, and whether the answer lives in one cell.
KINDS = {
    "color_of_shape": 0.4,  # What color is the triangle?        (shape unique)  -> colour
    "shape_of_color": 0.4,  # Which shape is blue?               (colour unique) -> shape
    "count_color": 0.2,  # How many red objects are there?    (whole image)   -> 1..MAX_COUNT
}
# Train only: a coloured background. Nearly every image token then carries the answer, so a model
# trained from scratch learns to read colours from image tokens at all; without these rows it settles
# on the text-only answer prior, because one object's token is too faint among dozens of background tokens.
WARMUP_KINDS = {"background_color": 0.15}  # What color is the background?  -> colour
GLOBAL_KINDS = ("count_color", "background_color")


@dataclass(frozen=True)
class Item:
    """One object: a shape of one colour in grid cell (row, col)."""

    glyph: str
    color: str
    row: int
    col: int

    def box(self) -> list[int]:
        return [self.col * CELL, self.row * CELL, (self.col + 1) * CELL, (self.row + 1) * CELL]


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    items: tuple[Item, ...]
    fill: str | None = None  # background colour name (warm-up rows), else the light BACKGROUND

    def signature(self) -> tuple:
        return (self.width, self.height, self.fill, tuple(sorted((i.row, i.col, i.glyph, i.color) for i in self.items)))

    def render(self) -> Image.Image:
        image = Image.new("RGB", (self.width, self.height), COLORS[self.fill] if self.fill else BACKGROUND)
        pixels = image.load()
        for item in self.items:
            for dy, line in enumerate(SHAPES[item.glyph]):
                for dx, mark in enumerate(line):
                    if mark == "#":
                        pixels[item.col * CELL + 1 + dx, item.row * CELL + 1 + dy] = COLORS[item.color]
        return image


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str
    boxes: tuple[tuple[int, int, int, int], ...]  # pixel boxes of the cells that decide the answer

    @property
    def local(self) -> bool:
        return self.kind not in GLOBAL_KINDS


def _unique(items, key) -> list[Item]:
    """Items whose attribute `key` no other item shares."""
    counts = Counter(key(item) for item in items)
    return [item for item in items if counts[key(item)] == 1]


def questions_about(scene: Scene, kind: str) -> list[Question]:
    """Every valid question of `kind` about `scene` (empty when the scene has none)."""
    items = scene.items
    box = lambda *members: tuple(tuple(m.box()) for m in members)  # noqa: E731
    if kind == "color_of_shape":
        return [Question(kind, f"What color is the {i.glyph}?", i.color, box(i)) for i in _unique(items, lambda i: i.glyph)]
    if kind == "shape_of_color":
        return [Question(kind, f"Which shape is {i.color}?", i.glyph, box(i)) for i in _unique(items, lambda i: i.color)]
    if kind == "background_color":
        return [Question(kind, "What color is the background?", scene.fill, ((0, 0, scene.width, scene.height),))] if scene.fill else []
    if kind == "count_color":
        found = []
        for color in sorted({i.color for i in items}):
            members = [i for i in items if i.color == color]
            if len(members) <= MAX_COUNT:
                found.append(Question(kind, f"How many {color} objects are there?", str(len(members)), box(*members)))
        return found
    raise ValueError(f"unknown question kind {kind!r}; known: {sorted(KINDS | WARMUP_KINDS)}")


def _random_scene(rng: random.Random, filled: bool, objects: tuple[int, int]) -> Scene:
    width, height = rng.choice(SIZES)
    if filled:  # a coloured background with up to four objects of other colours
        fill = rng.choice(list(COLORS))
        cells = rng.sample([(r, c) for r in range(height // CELL) for c in range(width // CELL)], rng.randint(0, 4))
        colors = [name for name in COLORS if name != fill]
        return Scene(width, height, tuple(Item(rng.choice(list(SHAPES)), rng.choice(colors), r, c) for r, c in cells), fill)
    rows, cols = height // CELL, width // CELL
    count = rng.randint(*objects)
    cells = rng.sample([(r, c) for r in range(rows) for c in range(cols)], count)
    items = tuple(Item(rng.choice(list(SHAPES)), rng.choice(list(COLORS)), r, c) for r, c in cells)
    return Scene(width, height, items)


def _scene_with_questions(rng: random.Random, turns: int, taken: set, objects: tuple[int, int], kinds: dict[str, float]) -> tuple[Scene, list[Question]]:
    """A scene not in `taken` and up to `turns` distinct questions about it, the first of a kind drawn from
    `kinds` (drawn again with every scene: a kind may be impossible in it, e.g. no colour is unique)."""
    while True:
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        scene = _random_scene(rng, kind in WARMUP_KINDS, objects)
        first = questions_about(scene, kind)
        if first and scene.signature() not in taken:
            break
    chosen = [rng.choice(first)]
    others = [q for k in kinds for q in questions_about(scene, k) if q.text != chosen[0].text]
    rng.shuffle(others)
    chosen += others[: turns - 1]
    return scene, chosen


def exact_match(prediction: str, answer: str) -> bool:
    """The benchmark's score: equal after lower-casing and dropping punctuation and outer spaces."""
    return _normalize(prediction) == _normalize(answer)


def _normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_split(split: str, count: int, seed: int = 0, turns: int = 1, exclude: set | None = None) -> tuple[list[dict], set]:
    """`count` rows of `split` ("train" or "test") and the signatures of their scenes.

    A row has ``id``, ``image`` (PNG bytes), ``width``, ``height``, and either one question
    (``question``, ``answer``, ``kind``, ``local``, ``boxes``; turns=1) or lists of them (turns>1:
    one multi-turn conversation about the image). Scenes in `exclude` are never used.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if count < 1 or turns < 1:
        raise ValueError(f"count and turns must be >= 1, got count={count}, turns={turns}")
    rng = random.Random(f"pdrop_synth/{split}/{seed}")
    kinds = KINDS if split == "test" else {**{k: w * (1 - sum(WARMUP_KINDS.values())) for k, w in KINDS.items()}, **WARMUP_KINDS}
    taken = set(exclude or ())
    rows = []
    fewest, most = OBJECTS_PER_IMAGE[split]
    for index in range(count):
        cap = most
        if split == "train":  # easy first: the cap on objects rises linearly over the curriculum rows
            cap = min(most, fewest + int(index / (CURRICULUM * count) * most))
        scene, questions = _scene_with_questions(rng, turns, taken, (fewest, cap), kinds)
        taken.add(scene.signature())
        fields = {
            "question": [q.text for q in questions],
            "answer": [q.answer for q in questions],
            "kind": [q.kind for q in questions],
            "local": [q.local for q in questions],
            "boxes": [[list(b) for b in q.boxes] for q in questions],
        }
        if turns == 1:
            fields = {key: value[0] for key, value in fields.items()}
        rows.append({"id": index, **fields, "width": scene.width, "height": scene.height, "image": png_bytes(scene.render())})
    return rows, taken - set(exclude or ())


def make_splits(train_images: int = 6000, test_questions: int = 400, turns: int = 3, seed: int = 0) -> dict[str, list[dict]]:
    """The test split (one question per image) first, then a train split of multi-turn rows on other images."""
    test, test_scenes = make_split("test", test_questions, seed, turns=1)
    train, _ = make_split("train", train_images, seed, turns=turns, exclude=test_scenes)
    return {"train": train, "test": test}


DEFAULT_FOLDER = TASKS_DIR / "pdrop_synth" / "data"
TSV_NAME = "PDropSynth"


def write_synth(folder: str | Path = DEFAULT_FOLDER, train_images: int = 6000, test_questions: int = 400,
                turns: int = 3, seed: int = 0) -> dict[str, Path]:
    """Write ``train.parquet``, ``test.parquet`` and the test split as VLMEvalKit's ``PDropSynth.tsv``."""
    import pandas as pd

    from pdrop_eval.adapters.vlmeval_data import write_tsv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = make_splits(train_images, test_questions, turns, seed)
    written = {}
    for split, rows in splits.items():
        written[split] = folder / f"{split}.parquet"
        pd.DataFrame(rows).to_parquet(written[split], index=False)
    written["tsv"] = write_tsv(
        folder / f"{TSV_NAME}.tsv",
        [
            {"index": row["id"], "image": Image.open(io.BytesIO(row["image"])), "question": row["question"],
             "answer": row["answer"], "category": row["kind"]}
            for row in splits["test"]
        ],
    )
    return written
