"""The paper's reported numbers (pdrop_eval/data/paper/tableN.json) as report rows.

Rows keep the paper's printed values; averages and deltas are recomputed by the renderer, so
re-rendering a table checks the data against the paper's own Avg and Δ columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.budget import average_image_tokens
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.flops import PRESETS
from pdrop_eval.package_data import DATA_DIR
from pdrop_eval.report.benchmarks import KNOWN, Benchmark
from pdrop_eval.report.files import ReportInputError, read_json_object, require
from pdrop_eval.report.runs import Score, checkpoint_name
from pdrop_eval.report.table import Row, method_label

PAPER_DIR = DATA_DIR / "paper"
SCHEMA = "pdrop-eval/paper-table/v1"
TABLES = (1, 2, 3, 4, 5)
# FLOPs presets (pdrop_eval.flops.PRESETS) and default #patches of the paper's models.
PRESET_OF_MODEL = {"LLaVA-1.5-7B": "llava-1.5-7b", "LLaVA-NeXT-7B": "llava-next-7b"}
DEFAULT_PATCHES = {"LLaVA-1.5-7B": 1, "LLaVA-NeXT-7B": 5}
# HF checkpoints that stand for the paper's models (the paper's LLaVA-NeXT-7B is trained with
# Open-LLaVA-NeXT, so scores of the llava-hf checkpoint differ somewhat; see pdrop_eval/data/paper/README.md).
MODEL_OF_CHECKPOINT = {"llava-1.5-7b-hf": "LLaVA-1.5-7B", "llava-v1.6-vicuna-7b-hf": "LLaVA-NeXT-7B"}


@dataclass(frozen=True)
class PaperRow:
    table: int
    id: str
    model: str
    label: str
    train: str  # "vanilla" | "pdrop"
    infer: DropConfig
    patches: int
    image_tokens: int
    gpu_hours: float | None
    tflops: float | None
    scores: dict[str, float]
    average: float


@dataclass(frozen=True)
class PaperTable:
    number: int
    path: Path
    caption: str
    benchmarks: list[Benchmark]
    rows: list[PaperRow]
    deltas: list[dict]
    errata: list[dict]
    notes: list[str]


def load_table(number: int, paper_dir: Path = PAPER_DIR) -> PaperTable:
    path = Path(paper_dir) / f"table{number}.json"
    if not path.exists():
        raise FileNotFoundError(f"no paper table at {path}")
    data = read_json_object(path, f"a paper table ({SCHEMA})")
    if data.get("schema") != SCHEMA:
        raise ReportInputError(f"{path}: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    require(data, path, "paper table", "table", "benchmarks", "rows")
    unknown = [key for key in data["benchmarks"] if key not in KNOWN]
    if unknown:
        raise ReportInputError(f"{path}: unknown benchmark keys {unknown}")
    rows = []
    for raw in data["rows"]:
        require(raw, path, f"paper row {raw.get('id')!r}", "id", "model", "train", "infer", "patches", "scores", "average")
        try:
            infer = DropConfig.from_args(raw["infer"])
        except (TypeError, ValueError) as error:
            raise ReportInputError(f"{path}: row {raw['id']}: bad drop config {raw['infer']}: {error}") from None
        rows.append(
            PaperRow(
                number, raw["id"], raw["model"], raw.get("label", raw["id"]), raw["train"], infer, raw["patches"],
                raw.get("image_tokens"), raw.get("gpu_hours"), raw.get("tflops"), raw["scores"], raw["average"],
            )
        )
    benchmarks = [KNOWN[key] for key in data["benchmarks"]]
    return PaperTable(number, path, data.get("caption", ""), benchmarks, rows, data.get("deltas", []), data.get("errata", []), data.get("notes", []))


def model_name(row: PaperRow) -> str:
    default = DEFAULT_PATCHES.get(row.model)
    return row.model if row.patches == default else f"{row.model} p{row.patches}"


def method_name(row: PaperRow) -> str:
    return method_label(row.infer) + (" (PDrop-trained)" if row.train == "pdrop" else "")


def paper_avg_image_tokens(row: PaperRow) -> float | None:
    """(1/L)·Σ_l n_l of the row's setting on the paper's model (None where the table gives no N)."""
    if row.image_tokens is None:
        return None
    num_layers = PRESETS[PRESET_OF_MODEL[row.model]].num_layers
    return average_image_tokens(row.infer.image_tokens_per_layer(row.image_tokens, num_layers))


def report_row(row: PaperRow, path: Path) -> Row:
    result = Row(model_name(row), method_name(row), row.infer, tflops_paper=row.tflops, avg_image_tokens=paper_avg_image_tokens(row), sources=[path])
    for key, value in row.scores.items():
        result.add(Score(KNOWN[key], float(value), f"paper Table {row.table}", path))
    return result


def table_groups(table: PaperTable) -> list[list[Row]]:
    """The table's rows in the paper's order, grouped by model (a Δ row closes each group)."""
    groups: dict[str, list[Row]] = {}
    for row in table.rows:
        groups.setdefault(model_name(row), []).append(report_row(row, table.path))
    return list(groups.values())


# ----- matching our runs to the paper (--compare-paper) --------------------------------------------
def paper_model_for(pretrained_or_model: str) -> str | None:
    return MODEL_OF_CHECKPOINT.get(checkpoint_name(pretrained_or_model).lower())


def same_setting(a: DropConfig, b: DropConfig, image_tokens: int, num_layers: int) -> bool:
    """Same method and the same image tokens at every layer of the paper's model."""
    return a.method == b.method and a.image_tokens_per_layer(image_tokens, num_layers) == b.image_tokens_per_layer(
        image_tokens, num_layers
    )


def reference_row(shown_as: str, paper_model: str, drop: DropConfig, tables: list[PaperTable]) -> Row | None:
    """What the paper reports for `drop` applied at inference to the vanilla-trained `paper_model`
    (default #patches), merged over `tables` (earlier tables win where two print a benchmark);
    the row is labelled as model `shown_as` so that it stays in that model's group."""
    num_layers = PRESETS[PRESET_OF_MODEL[paper_model]].num_layers
    matches = [
        (table, row)
        for table in tables
        for row in table.rows
        if row.model == paper_model
        and row.train == "vanilla"
        and row.patches == DEFAULT_PATCHES[paper_model]
        and same_setting(row.infer, drop, row.image_tokens, num_layers)
    ]
    if not matches:
        return None
    numbers = sorted({table.number for table, _ in matches})
    method = f"↳ paper {paper_model}, Table " + ", ".join(map(str, numbers))
    result = Row(shown_as, method, drop, reference=True)
    for table, row in matches:
        result.sources.append(table.path)
        result.tflops_paper = result.tflops_paper if result.tflops_paper is not None else row.tflops
        if result.avg_image_tokens is None:
            result.avg_image_tokens = paper_avg_image_tokens(row)
        for key, value in row.scores.items():
            if key not in result.scores:
                result.add(Score(KNOWN[key], float(value), f"paper Table {table.number}", table.path))
    return result
