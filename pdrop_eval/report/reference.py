"""Other papers' published numbers (pdrop_eval/data/reference/*.json) shown under the runs of the same
method and kept-token count (--compare-paper). The schema is described in that folder's README."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.budget import average_image_tokens
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.flops import PRESETS
from pdrop_eval.package_data import DATA_DIR
from pdrop_eval.report.benchmarks import KNOWN
from pdrop_eval.report.files import ReportInputError, read_json_object, require
from pdrop_eval.report.paper import PRESET_OF_MODEL, same_setting
from pdrop_eval.report.runs import Score
from pdrop_eval.report.table import Row

REFERENCE_DIR = DATA_DIR / "reference"
SCHEMA = "pdrop-eval/reference-table/v1"
# Image tokens of one image on the models the reference tables cover (LLaVA-1.5: 24x24 patches).
IMAGE_TOKENS_OF_MODEL = {"LLaVA-1.5-7B": 576}
SOURCE_FIELDS = ("paper", "arxiv", "table")


@dataclass(frozen=True)
class PublishedRow:
    id: str
    label: str  # the method as the paper prints it
    image_tokens: int  # the kept-token count the paper states ("Retain 64 tokens")
    infer: DropConfig | None  # None: a method this engine cannot run; such a row is never matched
    scores: dict[str, float]
    source: dict[str, str]  # paper, arxiv, table

    def shown_as(self) -> str:
        return f"↳ {self.label} {self.image_tokens}, arXiv {self.source['arxiv']} {self.source['table']}"


@dataclass(frozen=True)
class ReferenceTable:
    path: Path
    model: str
    read_from: str  # the address the numbers were read from
    rows: list[PublishedRow]


def load_reference(path: Path) -> ReferenceTable:
    """One reference file, validated: schema, model, benchmark keys, drop configs, a source on each row."""
    path = Path(path)
    data = read_json_object(path, f"a reference table ({SCHEMA})")
    if data.get("schema") != SCHEMA:
        raise ReportInputError(f"{path}: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    require(data, path, "reference table", "paper", "arxiv", "table", "read_from", "model", "benchmarks", "rows")
    if data["model"] not in IMAGE_TOKENS_OF_MODEL:
        raise ReportInputError(f"{path}: model {data['model']!r} is not one of {sorted(IMAGE_TOKENS_OF_MODEL)}")
    unknown = [key for key in data["benchmarks"] if key not in KNOWN]
    if unknown:
        raise ReportInputError(f"{path}: unknown benchmark keys {unknown} (see pdrop_eval/report/benchmarks.py)")
    return ReferenceTable(path, data["model"], data["read_from"], [published_row(raw, data, path) for raw in data["rows"]])


def published_row(raw: dict, table: dict, path: Path) -> PublishedRow:
    name = f"row {raw.get('id')!r}"
    require(raw, path, f"reference {name}", "id", "label", "image_tokens", "infer", "scores", "source")
    missing = [field for field in SOURCE_FIELDS if not raw["source"].get(field)]
    if missing:
        raise ReportInputError(f"{path}: {name}: its source lacks {missing}")
    if raw["source"]["arxiv"] != table["arxiv"]:
        raise ReportInputError(f"{path}: {name}: source arXiv {raw['source']['arxiv']} is not the file's {table['arxiv']}")
    outside = [key for key in raw["scores"] if key not in table["benchmarks"]]
    if outside:
        raise ReportInputError(f"{path}: {name}: score keys {outside} are not among the file's benchmarks {table['benchmarks']}")
    not_numbers = [key for key, value in raw["scores"].items() if isinstance(value, bool) or not isinstance(value, (int, float))]
    if not_numbers:
        raise ReportInputError(f"{path}: {name}: scores {not_numbers} are not numbers")
    infer = None
    if raw["infer"] is not None:
        try:
            infer = DropConfig.from_args(raw["infer"])
        except (TypeError, ValueError) as error:
            raise ReportInputError(f"{path}: {name}: bad drop config {raw['infer']}: {error}") from None
    return PublishedRow(raw["id"], raw["label"], raw["image_tokens"], infer, raw["scores"], raw["source"])


def load_references(reference_dir: Path = REFERENCE_DIR) -> list[ReferenceTable]:
    if not Path(reference_dir).is_dir():  # an install without the data would otherwise show no rows, silently
        raise FileNotFoundError(f"no reference tables folder at {reference_dir}")
    return [load_reference(path) for path in sorted(Path(reference_dir).glob("*.json"))]


def published_rows(shown_as: str, paper_model: str, drop: DropConfig, tables: list[ReferenceTable]) -> list[Row]:
    """The published rows of `drop`'s method keeping the same image tokens at every layer of `paper_model`,
    labelled as model `shown_as` so that they stay in that model's group."""
    if paper_model not in IMAGE_TOKENS_OF_MODEL:
        return []
    num_layers = PRESETS[PRESET_OF_MODEL[paper_model]].num_layers
    result = []
    for table in tables:
        for row in table.rows:
            if table.model != paper_model or row.infer is None:
                continue
            tokens = IMAGE_TOKENS_OF_MODEL[paper_model]
            if not same_setting(row.infer, drop, tokens, num_layers):
                continue
            kept = average_image_tokens(row.infer.image_tokens_per_layer(tokens, num_layers))
            shown = Row(shown_as, row.shown_as(), drop, avg_image_tokens=kept, reference=True, sources=[table.path])
            for key, value in row.scores.items():
                shown.add(Score(KNOWN[key], float(value), f"arXiv {row.source['arxiv']} {row.source['table']}", table.path))
            result.append(shown)
    return result
