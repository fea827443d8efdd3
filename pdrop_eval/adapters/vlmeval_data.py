"""Local VLMEvalKit datasets: `$LMUData/<name>.tsv` files with base64-encoded images.

VLMEvalKit reads a dataset it does not know from `<LMUData>/<name>.tsv` (columns `index`, `image`,
`question`, `answer`, optional `A`..`E`, `hint`, `category`); option columns make it a
multiple-choice set. `pdrop-vlmeval` additionally recognises a local Yes/No set (see
`pdrop_eval.adapters.vlmeval_run`). `write_tsv` writes such a file; `make_toy_datasets` writes two
tiny sets drawn with PIL that the tests and demos evaluate offline.
"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

TOY_MCQ = "PDropToyMCQ"
TOY_YN = "PDropToyYN"

_COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
# Square, wide and tall images: LLaVA-NeXT picks a different anyres grid (and image-token count) for each.
_SIZES = [(64, 64), (128, 64), (64, 128)]


def encode_image(image) -> str:
    """PNG bytes of a PIL image, base64-encoded as VLMEvalKit stores them."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_tsv(path: str | Path, rows: list[dict]) -> Path:
    """Write rows (each with a PIL `image` and the text columns) as a VLMEvalKit TSV."""
    if not rows:
        raise ValueError("a dataset needs at least one row")
    columns = list(rows[0])
    for required in ("index", "image", "question", "answer"):
        if required not in columns:
            raise ValueError(f"VLMEvalKit datasets need an {required!r} column; got {columns}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        for row in rows:
            if list(row) != columns:
                raise ValueError(f"row {row.get('index')!r} has columns {list(row)}, expected {columns}")
            writer.writerow({**row, "image": encode_image(row["image"])})
    return path


def _shape_image(color: str, size: tuple[int, int], shape: str):
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(image)
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    if shape == "circle":
        draw.ellipse(box, fill=_COLORS[color])
    else:
        draw.rectangle(box, fill=_COLORS[color])
    return image


def toy_mcq_rows(count: int = 6) -> list[dict]:
    """'Which color is the shape?' with four color options; the answer letter rotates."""
    names = list(_COLORS)
    rows = []
    for i in range(count):
        color = names[i % len(names)]
        rows.append({
            "index": i,
            "image": _shape_image(color, _SIZES[i % len(_SIZES)], "square" if i % 2 else "circle"),
            "question": "What color is the shape in the image?",
            **{letter: option for letter, option in zip("ABCD", names)},
            "answer": "ABCD"[names.index(color)],
            "category": "color",
        })
    return rows


def toy_yn_rows(count: int = 6) -> list[dict]:
    """'Is there a red circle?' with balanced Yes/No answers."""
    rows = []
    for i in range(count):
        shape = "circle" if i % 2 == 0 else "square"
        color = "red" if i % 3 != 2 else "blue"
        rows.append({
            "index": 100 + i,
            "image": _shape_image(color, _SIZES[i % len(_SIZES)], shape),
            "question": "Is there a red circle in the picture? Please answer yes or no.",
            "answer": "Yes" if (shape, color) == ("circle", "red") else "No",
            "category": "existence",
        })
    return rows


def make_toy_datasets(lmu_data: str | Path, count: int = 6) -> dict[str, Path]:
    """Write the toy MCQ and Y/N sets into `lmu_data` (use it as $LMUData); returns name -> path."""
    lmu_data = Path(lmu_data)
    return {
        TOY_MCQ: write_tsv(lmu_data / f"{TOY_MCQ}.tsv", toy_mcq_rows(count)),
        TOY_YN: write_tsv(lmu_data / f"{TOY_YN}.tsv", toy_yn_rows(count)),
    }
