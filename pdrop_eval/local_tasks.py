"""Data of the offline lmms-eval tasks in `pdrop_eval/tasks/pdrop_local/`: coloured shapes drawn with PIL.

Each task is one parquet file with columns ``id``, ``question``, ``answer``, ``image`` (PNG bytes,
decoded by the task's `doc_to_visual`, so a broken image fails inside the model, naming the document)
and, for the multiple-choice tasks, ``A``..``D``. Images come in three aspect ratios so LLaVA-NeXT
samples get different numbers of image tokens. Everything is deterministic; rebuild with
``python -m pdrop_eval.local_tasks [FOLDER]`` (default: the package's tasks/pdrop_local/data).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from pdrop_eval.package_data import TASKS_DIR

DEFAULT_FOLDER = TASKS_DIR / "pdrop_local" / "data"
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 205, 40)}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ((64, 64), (128, 64), (64, 128))  # width, height
BACKGROUND = (245, 245, 245)
OPTION_LETTERS = ("A", "B", "C", "D")
DOCS_PER_TASK = 6


def draw(shape: str, color: str, size: tuple[int, int]) -> bytes:
    """PNG bytes of one `color` `shape` centred on a light background."""
    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    pen = ImageDraw.Draw(image)
    r = min(width, height) * 0.35
    cx, cy = width / 2, height / 2
    fill = COLORS[color]
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:  # a four-pointed star
        inner = r * 0.4
        pen.polygon(
            [(cx, cy - r), (cx + inner, cy - inner), (cx + r, cy), (cx + inner, cy + inner),
             (cx, cy + r), (cx - inner, cy + inner), (cx - r, cy), (cx - inner, cy - inner)],
            fill=fill,
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _scene(i: int) -> tuple[str, str, tuple[int, int]]:
    """Shape, colour and size of document i, cycling through all three independently."""
    color_names = list(COLORS)
    return SHAPES[i % len(SHAPES)], color_names[(i + i // len(SHAPES)) % len(color_names)], SIZES[i % len(SIZES)]


def vqa_rows() -> list[dict]:
    rows = []
    for i in range(DOCS_PER_TASK):
        shape, color, size = _scene(i)
        rows.append({"id": i, "question": f"What color is the {shape}?", "answer": color, "image": draw(shape, color, size)})
    return rows


def yesno_rows() -> list[dict]:
    rows = []
    color_names = list(COLORS)
    for i in range(DOCS_PER_TASK):
        shape, color, size = _scene(i)
        asked = color if i % 2 == 0 else color_names[(color_names.index(color) + 1) % len(color_names)]
        rows.append(
            {
                "id": i,
                "question": f"Is there a {asked} {shape} in the image?",
                "answer": "yes" if asked == color else "no",
                "image": draw(shape, color, size),
            }
        )
    return rows


def mcq_rows() -> list[dict]:
    rows = []
    for i in range(DOCS_PER_TASK):
        shape, color, size = _scene(i)
        options = dict(zip(OPTION_LETTERS, SHAPES))
        answer = next(letter for letter, option in options.items() if option == shape)
        rows.append({"id": i, "question": "Which shape is in the image?", **options, "answer": answer, "image": draw(shape, color, size)})
    return rows


TASK_ROWS = {"vqa": vqa_rows, "yesno": yesno_rows, "mcq": mcq_rows}


def write_all(folder: str | Path = DEFAULT_FOLDER) -> list[Path]:
    """Write ``<name>.parquet`` for every task data set into `folder`."""
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in TASK_ROWS.items():
        path = folder / f"{name}.parquet"
        pd.DataFrame(rows()).to_parquet(path, index=False)
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_FOLDER):
        print(f"wrote {written_path}")
