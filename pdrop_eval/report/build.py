"""`pdrop-eval report`: runs (or the paper's own tables) -> markdown, and the data for the plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.report.benchmarks import order
from pdrop_eval.report.paper import PAPER_DIR, TABLES, load_table, paper_model_for, reference_row, table_groups
from pdrop_eval.report.runs import Run, find_runs
from pdrop_eval.report.table import DeltaSpec, Row, group_by_model, render, rows_from_runs

LAYOUTS = ("leaderboard", "paper-table1", "paper-table2", "paper-table5")
DEFAULT_DELTA = "pdrop:fastv"


@dataclass
class Report:
    markdown: str
    runs: list[Run]
    rows: list[Row]


def paper_table_number(layout: str) -> int | None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return int(layout.removeprefix("paper-table")) if layout.startswith("paper-table") else None


def render_paper_table(number: int, delta: str = DEFAULT_DELTA, paper_dir: Path = PAPER_DIR) -> str:
    """The paper's Table `number` from results/paper, with Avg and Δ recomputed from its scores."""
    table = load_table(number, paper_dir)
    title = f"Paper Table {number}: {table.caption} (re-rendered from {table.path.name})"
    errata = [f"Erratum ({e['model']}, {e['benchmark']}): {e['note']}" for e in table.errata]
    return render(table_groups(table), table.benchmarks, title, DeltaSpec.parse(delta), table.notes + errata)


def with_references(rows: list[Row], paper_model: str | None, prefer: int | None, paper_dir: Path) -> tuple[list[Row], list[str]]:
    """Each of our rows followed by the paper's numbers for the same model and drop setting."""
    tables = [load_table(n, paper_dir) for n in sorted(TABLES, key=lambda n: n != prefer)]
    result, notes = [], []
    for row in rows:
        result.append(row)
        model = paper_model or paper_model_for(row.checkpoint or row.model)
        reference = reference_row(row.model, model, row.drop, tables) if model and row.drop else None
        if reference is None:
            notes.append(f"no paper numbers for {row.model} / {row.method} (paper models: vanilla-trained "
                         "LLaVA-1.5-7B, LLaVA-NeXT-7B; map a checkpoint with --paper-model)")
        else:
            result.append(reference)
    return result, notes


def build_report(
    run_paths,
    layout: str = "leaderboard",
    compare_paper: bool = False,
    delta: str = DEFAULT_DELTA,
    paper_model: str | None = None,
    paper_dir: Path = PAPER_DIR,
) -> Report:
    number = paper_table_number(layout)
    if not run_paths:
        if number is None:
            raise ValueError("give run folders, or a paper-table layout to re-render the paper's table")
        return Report(render_paper_table(number, delta, paper_dir), [], [])
    runs = find_runs(run_paths)
    rows = rows_from_runs(runs)
    if number is None:
        benchmarks = order(score.benchmark for run in runs for score in run.scores)
    else:
        benchmarks = load_table(number, paper_dir).benchmarks
    notes = [note for run in runs for note in run.notes]
    shown = rows
    if compare_paper:
        shown, missing = with_references(rows, paper_model, number, paper_dir)
        notes += missing
    title = f"{layout}: {len(rows)} model/method rows from {len(runs)} runs"
    sources = [f"{row.model} / {row.method}: " + ", ".join(map(str, row.sources)) for row in rows]
    markdown = render(group_by_model(shown), benchmarks, title, DeltaSpec.parse(delta), notes)
    markdown += "\nRuns:\n" + "\n".join(f"- {line}" for line in sources) + "\n"
    return Report(markdown, runs, rows)
