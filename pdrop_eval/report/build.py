"""`pdrop-eval report`: runs (or the paper's own tables) -> a table (markdown, LaTeX, CSV or JSON via
`export`), and the data for the plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.report.benchmarks import order
from pdrop_eval.report.paper import PAPER_DIR, TABLES, load_table, paper_model_for, reference_row, table_groups
from pdrop_eval.report.reference import REFERENCE_DIR, load_references, published_rows
from pdrop_eval.report.runs import Run, find_runs
from pdrop_eval.report.table import DeltaSpec, Row, Table, build_table, group_by_model, rows_from_runs, to_markdown

LAYOUTS = ("leaderboard", "paper-table1", "paper-table2", "paper-table5")
DEFAULT_DELTA = "pdrop:fastv"


@dataclass
class Report:
    table: Table
    runs: list[Run]
    rows: list[Row]  # ours (without the paper's reference rows)
    groups: list[list[Row]]  # the rows shown, by model
    benchmarks: list
    delta: DeltaSpec

    @property
    def sources(self) -> list[str]:
        """Per row of ours, the files it was read from."""
        return [f"{row.model} / {row.method}: " + ", ".join(map(str, row.sources)) for row in self.rows]

    @property
    def markdown(self) -> str:
        runs = "\nRuns:\n" + "\n".join(f"- {line}" for line in self.sources) + "\n" if self.rows else ""
        return to_markdown(self.table) + runs


def paper_table_number(layout: str) -> int | None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return int(layout.removeprefix("paper-table")) if layout.startswith("paper-table") else None


def paper_table_report(number: int, delta: str = DEFAULT_DELTA, paper_dir: Path = PAPER_DIR) -> Report:
    """The paper's Table `number` from results/paper, with Avg and Δ recomputed from its scores."""
    table = load_table(number, paper_dir)
    title = f"Paper Table {number}: {table.caption} (re-rendered from {table.path.name})"
    errata = [f"Erratum ({e['model']}, {e['benchmark']}): {e['note']}" for e in table.errata]
    groups, spec = table_groups(table), DeltaSpec.parse(delta)
    rendered = build_table(groups, table.benchmarks, title, spec, table.notes + errata, bold_best=True)
    return Report(rendered, [], [], groups, table.benchmarks, spec)


def render_paper_table(number: int, delta: str = DEFAULT_DELTA, paper_dir: Path = PAPER_DIR) -> str:
    """The paper's Table `number` as markdown."""
    return paper_table_report(number, delta, paper_dir).markdown


def with_references(
    rows: list[Row], paper_model: str | None, prefer: int | None, paper_dir: Path, reference_dir: Path
) -> tuple[list[Row], list[str]]:
    """Each of our rows followed by the PyramidDrop paper's numbers for the same model and drop setting,
    then other papers' published numbers for the same method and kept tokens (data/reference)."""
    tables = [load_table(n, paper_dir) for n in sorted(TABLES, key=lambda n: n != prefer)]
    published = load_references(reference_dir)
    result, notes = [], []
    for row in rows:
        result.append(row)
        model = paper_model or paper_model_for(row.checkpoint or row.model)
        reference = reference_row(row.model, model, row.drop, tables) if model and row.drop else None
        others = published_rows(row.model, model, row.drop, published) if model and row.drop else []
        if reference is None and not others:
            notes.append(f"no paper numbers for {row.model} / {row.method} (paper models: vanilla-trained "
                         "LLaVA-1.5-7B, LLaVA-NeXT-7B; map a checkpoint with --paper-model)")
        result.extend(([reference] if reference else []) + others)
    return result, notes


def build_report(
    run_paths,
    layout: str = "leaderboard",
    compare_paper: bool = False,
    delta: str = DEFAULT_DELTA,
    paper_model: str | None = None,
    paper_dir: Path = PAPER_DIR,
    reference_dir: Path = REFERENCE_DIR,
) -> Report:
    number = paper_table_number(layout)
    spec = DeltaSpec.parse(delta)
    if not run_paths:
        if number is None:
            raise ValueError("give run folders, or a paper-table layout to re-render the paper's table")
        return paper_table_report(number, delta, paper_dir)
    runs = find_runs(run_paths)
    rows = rows_from_runs(runs)
    spec.check(rows)
    found = order(score.benchmark for run in runs for score in run.scores)
    notes = [note for run in runs for note in run.notes]
    if number is None:
        benchmarks = found
    else:
        benchmarks = load_table(number, paper_dir).benchmarks
        notes += layout_notes(layout, benchmarks, found, compare_paper)
    shown = rows
    if compare_paper:
        shown, missing = with_references(rows, paper_model, number, paper_dir, reference_dir)
        notes += missing
    title = f"{layout}: {len(rows)} model/method rows from {len(runs)} runs"
    groups = group_by_model(shown)
    table = build_table(groups, benchmarks, title, spec, notes, bold_best=number is not None)
    return Report(table, runs, rows, groups, benchmarks, spec)


def layout_notes(layout: str, columns: list, found: list, compare_paper: bool) -> list[str]:
    """A paper layout over runs of other benchmarks: an error where no run fills any of its columns
    (unless the paper's rows are added), else a note naming what the layout leaves out."""
    keys = {benchmark.key for benchmark in columns}
    outside = [benchmark.label for benchmark in found if benchmark.key not in keys and benchmark.part_of is None]
    if outside and len(outside) == len([b for b in found if b.part_of is None]) and not compare_paper:
        raise ValueError(
            f"--layout {layout} has columns {', '.join(b.label for b in columns)}; the runs scored none of them "
            f"({', '.join(outside)}): use --layout leaderboard, or --compare-paper to show the paper's rows"
        )
    return [f"--layout {layout} has no column for {', '.join(outside)}; see --layout leaderboard"] if outside else []
