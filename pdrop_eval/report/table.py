"""Rows of a report (one per checkpoint and drop setting), averages, deltas, markdown.

Runs of the same checkpoint and drop config are merged into one row, whichever framework they came
from; two different values for one benchmark in one row are a conflict: the cell shows both, the
benchmark leaves that row's average, and the notes name the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from pdrop_eval.engine.config import METHODS, DropConfig
from pdrop_eval.report.benchmarks import Benchmark
from pdrop_eval.report.runs import Run, Score, checkpoint_name, mean_flops

DASH = "-"
KIND_ORDER = tuple(spec.kind for spec in METHODS.values())  # the registry's order: vanilla, FastV, PDrop, ...


def method_kind(drop: DropConfig | None) -> str | None:
    return drop.spec.kind if drop else None


def method_label(drop: DropConfig) -> str:
    """Short, table-friendly description of a drop config (defaults left unsaid)."""
    return drop.label()


@dataclass
class Row:
    model: str
    method: str
    drop: DropConfig | None  # None when the run had no statistics file
    scores: dict[str, list[Score]] = field(default_factory=dict)
    tflops_paper: float | None = None
    tflops_measured: float | None = None
    sources: list[Path] = field(default_factory=list)
    reference: bool = False  # a paper row shown beside ours (--compare-paper): never in a delta

    @property
    def kind(self) -> str | None:
        return method_kind(self.drop)

    def add(self, score: Score) -> None:
        self.scores.setdefault(score.benchmark.key, []).append(score)

    def values(self, key: str) -> list[float]:
        """The distinct values found for benchmark `key` (more than one is a conflict)."""
        return sorted({round(score.value, 6) for score in self.scores.get(key, [])})

    def value(self, key: str) -> float | None:
        values = self.values(key)
        return values[0] if len(values) == 1 else None

    def average(self, benchmarks: list[Benchmark]) -> tuple[float | None, list[Benchmark]]:
        """Mean percent over the benchmarks with one value; also those left out (missing/conflict)."""
        present = [(b, self.value(b.key)) for b in benchmarks if self.value(b.key) is not None]
        left_out = [b for b in benchmarks if self.value(b.key) is None]
        if not present:
            return None, left_out
        return sum(b.percent(v) for b, v in present) / len(present), left_out


def rows_from_runs(runs: list[Run]) -> list[Row]:
    """One row per (checkpoint, drop config); runs without our statistics file stay separate by
    their framework model name, since their drop setting is unknown."""
    rows: dict[tuple, Row] = {}
    flops: dict[tuple, list] = {}
    for run in runs:
        model = checkpoint_name(run.pretrained) if run.pretrained else run.adapter
        key = (model, run.drop) if run.drop else (model, run.adapter)
        if key not in rows:
            rows[key] = Row(model, method_label(run.drop) if run.drop else run.adapter, run.drop)
            flops[key] = []
        row = rows[key]
        for score in run.scores:
            row.add(score)
        row.sources.append(run.source)
        flops[key].append(run.stats.flops if run.stats else None)
    for key, row in rows.items():
        mean = mean_flops(flops[key])
        if mean:
            row.tflops_paper, row.tflops_measured = mean.paper, mean.measured
    return sort_rows(list(rows.values()))


def sort_rows(rows: list[Row]) -> list[Row]:
    """By model; within a model vanilla, FastV, PDrop (the paper's order), then by TFLOPs."""

    def key(row: Row):
        kind = KIND_ORDER.index(row.kind) if row.kind in KIND_ORDER else len(KIND_ORDER)
        return (row.model, kind, -(row.tflops_paper or 0.0), row.method)

    return sorted(rows, key=key)


# ----- deltas -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeltaSpec:
    """`A:B`: row A minus row B within each model; each side is a method kind (KIND_ORDER:
    vanilla / fastv / pdrop / random) or an exact method label."""

    minuend: str
    subtrahend: str

    @classmethod
    def parse(cls, text: str) -> "DeltaSpec":
        left, sep, right = text.partition(":")
        if not sep or not left.strip() or not right.strip():
            raise ValueError(f"--delta must look like A:B (e.g. pdrop:fastv), got {text!r}")
        return cls(left.strip(), right.strip())

    @staticmethod
    def _pick(rows: list[Row], wanted: str) -> Row | None:
        exact = [row for row in rows if row.method == wanted]
        by_kind = [row for row in rows if row.kind == wanted.lower()]
        matches = exact or by_kind
        return matches[0] if len(matches) == 1 else None

    def pair(self, rows: list[Row]) -> tuple[Row, Row] | None:
        """The two rows of one model's group, if each side names exactly one row."""
        a, b = self._pick(rows, self.minuend), self._pick(rows, self.subtrahend)
        return (a, b) if a and b and a is not b else None


def delta_cells(a: Row, b: Row, benchmarks: list[Benchmark]) -> list[str]:
    """Per benchmark a - b in percentage points (MME in percent of 2000, as the paper's Δ), then
    the average's difference when both averages cover the same benchmarks."""
    cells = []
    for benchmark in benchmarks:
        va, vb = a.value(benchmark.key), b.value(benchmark.key)
        cells.append(DASH if va is None or vb is None else f"{benchmark.percent(va) - benchmark.percent(vb):+.1f}")
    (avg_a, out_a), (avg_b, out_b) = a.average(benchmarks), b.average(benchmarks)
    same_cover = [x.key for x in out_a] == [x.key for x in out_b]
    cells.append(DASH if avg_a is None or avg_b is None or not same_cover else f"{avg_a - avg_b:+.1f}")
    return cells


# ----- markdown -----------------------------------------------------------------------------------
def format_tflops(value: float | None) -> str:
    return DASH if value is None else f"{value:.3g}"


@dataclass
class Notes:
    """Footnotes collected while rendering, printed under the table."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)


def score_cell(row: Row, benchmark: Benchmark, notes: Notes) -> str:
    values = row.values(benchmark.key)
    if not values:
        return DASH
    if len(values) == 1:
        return benchmark.format(values[0])
    files = "; ".join(f"{benchmark.format(s.value)} in {s.source}" for s in row.scores[benchmark.key])
    notes.add(f"‡ conflicting duplicate runs for {row.model} / {row.method} on {benchmark.label}: {files}")
    return " ≠ ".join(benchmark.format(v) for v in values) + " ‡"


def average_cell(row: Row, benchmarks: list[Benchmark], notes: Notes) -> str:
    average, left_out = row.average(benchmarks)
    if average is None:
        return DASH
    if not left_out:
        return f"{average:.1f}"
    notes.add(
        f"* {row.model} / {row.method}: average over {len(benchmarks) - len(left_out)} of {len(benchmarks)} "
        f"benchmarks (left out, missing or conflicting: {', '.join(b.label for b in left_out)})"
    )
    return f"{average:.1f}*"


def render(
    groups: list[list[Row]],
    benchmarks: list[Benchmark],
    title: str,
    delta: DeltaSpec | None = None,
    extra_notes: list[str] = (),
) -> str:
    """A GitHub markdown table; `groups` are the rows of one model each (a Δ row closes a group)."""
    notes = Notes()
    headers = ["Model", "Method", "TFLOPs (paper conv.)", "TFLOPs (measured)"] + [b.label for b in benchmarks] + ["Avg"]
    table = []
    for rows in groups:
        for row in rows:
            cells = [score_cell(row, b, notes) for b in benchmarks]
            table.append([row.model, row.method, format_tflops(row.tflops_paper), format_tflops(row.tflops_measured)]
                         + cells + [average_cell(row, benchmarks, notes)])
        pair = delta.pair([row for row in rows if not row.reference]) if delta else None
        if pair:
            a, b = pair
            table.append([rows[0].model, f"Δ {a.method} − {b.method}", "", ""] + delta_cells(a, b, benchmarks))
    lines = [f"## {title}", "", tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    footnotes = [f"- {line}" for line in [*notes.lines, *extra_notes]]
    legend = [
        "- Scores in percent; MME is the perception sum in points (max 2000) and counts as percent of 2000 in Avg and Δ.",
        f"- {DASH}: not evaluated; left out of the average.",
        "- TFLOPs: mean per sample, language model only; paper conv. counts image tokens only (the paper's "
        "column), measured counts every token each layer really saw.",
    ]
    return "\n".join(lines + legend + footnotes) + "\n"


def group_by_model(rows: list[Row]) -> list[list[Row]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.model, []).append(row)
    return list(groups.values())
