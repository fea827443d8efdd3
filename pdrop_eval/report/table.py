"""Rows of a report (one per checkpoint and drop setting), averages, deltas, markdown.

Runs of the same checkpoint (its full path or hub id) and drop config are merged into one row,
whichever framework they came from; the row shows the checkpoint by its shortest unique name. Two
different values for one benchmark in one row are a conflict: the cell shows both, the benchmark
leaves that row's average, and the notes name the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from pdrop_eval.engine.config import METHODS, DropConfig
from pdrop_eval.report.benchmarks import Benchmark
from pdrop_eval.report.documents import CONFIDENCE, RESAMPLES, SEED, DocumentResults, PairedDifference, PairingError, paired_difference
from pdrop_eval.report.runs import Flops, Run, Score, mean_flops, short_names

DASH = "-"
KIND_ORDER = tuple(spec.kind for spec in METHODS.values())  # the registry's order: vanilla, FastV, PDrop, ...


def method_kind(drop: DropConfig | None) -> str | None:
    return drop.spec.kind if drop else None


def method_label(drop: DropConfig) -> str:
    """Short, table-friendly description of a drop config (defaults left unsaid)."""
    return drop.label()


@dataclass
class Row:
    model: str  # the checkpoint's display name (unique within a report)
    method: str
    drop: DropConfig | None  # None when the run's drop setting is unknown
    scores: dict[str, list[Score]] = field(default_factory=dict)
    tflops_paper: float | None = None
    tflops_measured: float | None = None
    avg_image_tokens: float | None = None  # per sample, (1/L)·Σ_l n_l over the decoder layers
    sources: list[Path] = field(default_factory=list)
    reference: bool = False  # a paper row shown beside ours (--compare-paper): never in a delta
    checkpoint: str = ""  # the full checkpoint path or hub id the row stands for
    # Repeated runs of one setting whose statistics count the same documents: each run's own costs
    # (never pooled, which would count documents twice); the cost cells then show them all.
    repeated_costs: list[Flops] = field(default_factory=list)
    # benchmark key -> per-document results of the row's runs; None for the paper's rows (no documents)
    documents: dict[str, list[DocumentResults]] | None = None

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
        """Mean percent over the benchmarks with one value; also those left out (missing/conflict).
        Sub-metrics repeat their benchmark's documents and never count."""
        benchmarks = [b for b in benchmarks if b.part_of is None]
        present = [(b, self.value(b.key)) for b in benchmarks if self.value(b.key) is not None]
        left_out = [b for b in benchmarks if self.value(b.key) is None]
        if not present:
            return None, left_out
        return sum(b.percent(v) for b, v in present) / len(present), left_out


def run_documents(run: Run) -> set:
    """The (task, doc_id) pairs a run's statistics count."""
    return {(sample.task, sample.doc_id) for sample in run.stats.samples} if run.stats else set()


def set_costs(row: Row, runs: list[Run]) -> None:
    """The row's cost cells: the sample-weighted mean over its runs when they count different documents
    (another framework's run, other tasks); each run's own figures when two of them count the same
    document (repeated runs of one setting), since pooling would count those documents twice."""
    seen: set = set()
    repeated = False
    for run in runs:
        documents = run_documents(run)
        repeated = repeated or bool(seen & documents)
        seen |= documents
    if repeated:
        row.repeated_costs = [run.flops for run in runs if run.flops is not None]
        return
    mean = mean_flops(run.flops for run in runs)
    if mean:
        row.tflops_paper, row.tflops_measured, row.avg_image_tokens = mean.paper, mean.measured, mean.image_tokens


def row_key(run: Run) -> tuple:
    """What makes two runs one row: the checkpoint and the drop config, or, where the drop config is
    unknown, the framework model and the options that set it as recorded."""
    identity = ("checkpoint", run.checkpoint) if run.checkpoint else ("model", run.adapter)
    return (identity, run.drop) if run.drop else (identity, run.adapter, run.unknown_setting)


def rows_from_runs(runs: list[Run]) -> list[Row]:
    """One row per (checkpoint, drop config); runs whose drop setting is unknown stay separate by
    their framework model name and the drop options they recorded."""
    names = short_names(run.checkpoint for run in runs)
    rows: dict[tuple, Row] = {}
    runs_of: dict[tuple, list[Run]] = {}
    for run in runs:
        key = row_key(run)
        if key not in rows:
            model = names.get(run.checkpoint, run.adapter)
            method = method_label(run.drop) if run.drop else run.adapter + (f" ({run.unknown_setting})" if run.unknown_setting else "")
            rows[key] = Row(model, method, run.drop, checkpoint=run.checkpoint, documents={})
            runs_of[key] = []
        row = rows[key]
        for score in run.scores:
            row.add(score)
            if score.benchmark.part_of is None and score.task in run.documents:
                row.documents.setdefault(score.benchmark.key, []).append(run.documents[score.task])
        row.sources.append(run.source)
        runs_of[key].append(run)
    for key, row in rows.items():
        set_costs(row, runs_of[key])
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

    def check(self, rows: list[Row]) -> None:
        """Refuse a side that is neither a method kind nor the label of any row: it could never match."""
        labels = sorted({row.method for row in rows if not row.reference})
        for side in (self.minuend, self.subtrahend):
            if side.lower() not in KIND_ORDER and side not in labels:
                raise ValueError(
                    f"--delta {self.minuend}:{self.subtrahend}: {side!r} is neither a method kind ({', '.join(KIND_ORDER)}) "
                    f"nor the method of a row ({'; '.join(labels) or 'no rows'})"
                )

    @staticmethod
    def _pick(rows: list[Row], wanted: str) -> list[Row]:
        exact = [row for row in rows if row.method == wanted]
        return exact or [row for row in rows if row.kind == wanted.lower()]

    def pair(self, rows: list[Row]) -> tuple[Row, Row] | str:
        """The two rows of one model's group, if each side names exactly one row; else why not."""
        found = [(side, self._pick(rows, side)) for side in (self.minuend, self.subtrahend)]
        for side, matches in found:
            if len(matches) > 1:
                return f"{side!r} matches {len(matches)} rows ({'; '.join(row.method for row in matches)}); name one by its method"
        missing = [side for side, matches in found if not matches]
        if missing:
            return f"no {' or '.join(map(repr, missing))} row"
        (_, (a,)), (_, (b,)) = found
        return (a, b) if a is not b else f"{self.minuend!r} and {self.subtrahend!r} are the same row"


@dataclass(frozen=True)
class DeltaCell:
    """One benchmark's A − B in percentage points, with its paired interval where there is one, or
    why there is none (`missing`; empty for the paper's own rows, which have no documents)."""

    difference: float | None
    paired: PairedDifference | None = None
    missing: str = ""

    def text(self) -> str:
        if self.difference is None:
            return DASH
        text = f"{self.difference:+.1f}"
        if self.paired:
            return f"{text} [{self.paired.low:+.1f}, {self.paired.high:+.1f}]"
        return f"{text} ({self.missing})" if self.missing else text


def delta_cell(a: Row, b: Row, benchmark: Benchmark) -> DeltaCell:
    va, vb = a.value(benchmark.key), b.value(benchmark.key)
    if va is None or vb is None:
        return DeltaCell(None)
    difference = benchmark.percent(va) - benchmark.percent(vb)
    if a.documents is None or b.documents is None or benchmark.part_of is not None:
        return DeltaCell(difference)
    docs_a, docs_b = a.documents.get(benchmark.key, []), b.documents.get(benchmark.key, [])
    if not docs_a or not docs_b:
        return DeltaCell(difference, missing="no per-document results")
    if len(docs_a) > 1 or len(docs_b) > 1:
        return DeltaCell(difference, missing="repeated runs")
    try:
        return DeltaCell(difference, paired=paired_difference(docs_a[0], docs_b[0]))
    except PairingError as error:
        return DeltaCell(difference, missing=error.reason)


def delta_cells(a: Row, b: Row, benchmarks: list[Benchmark]) -> list[DeltaCell]:
    """Per benchmark a - b in percentage points (MME in percent of 2000, as the paper's Δ), then
    the average's difference when both averages cover the same benchmarks."""
    cells = [delta_cell(a, b, benchmark) for benchmark in benchmarks]
    (avg_a, out_a), (avg_b, out_b) = a.average(benchmarks), b.average(benchmarks)
    same_cover = [x.key for x in out_a] == [x.key for x in out_b]
    cells.append(DeltaCell(None if avg_a is None or avg_b is None or not same_cover else avg_a - avg_b))
    return cells


# ----- cells --------------------------------------------------------------------------------------
def format_tflops(value: float | None) -> str:
    return DASH if value is None else f"{value:.3g}"


def format_tokens(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


@dataclass
class Notes:
    """Footnotes collected while rendering, printed under the table."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)


def score_text(score: Score) -> str:
    """The value, ± the framework's standard error, and the documents scored (of all the task's in a
    partial run), where the framework reports them."""
    text = score.benchmark.format(score.value)
    if score.stderr is not None:
        text += f" ±{score.benchmark.format(score.stderr)}"
    if score.partial:
        return text + f" (n={score.documents}/{score.total})"
    return text + (f" (n={score.documents})" if score.documents is not None else "")


def score_cell(row: Row, benchmark: Benchmark, notes: Notes) -> str:
    values = row.values(benchmark.key)
    if not values:
        return DASH
    scores = row.scores[benchmark.key]
    if len(values) == 1:
        if any(score.partial for score in scores):
            notes.add("n=a/b: a partial run (lmms-eval --limit) that scored a of the task's b documents")
        return score_text(scores[0])
    files = "; ".join(f"{benchmark.format(s.value)} in {s.source}" for s in scores)
    notes.add(f"‡ conflicting duplicate runs for {row.model} / {row.method} on {benchmark.label}: {files}")
    return " ≠ ".join(benchmark.format(v) for v in values) + " ‡"


def cost_cells(row: Row, notes: Notes) -> list[str]:
    """TFLOPs (paper conv.), TFLOPs (measured), avg image tokens; repeated runs' own figures side by side."""
    if not row.repeated_costs:
        return [format_tflops(row.tflops_paper), format_tflops(row.tflops_measured), format_tokens(row.avg_image_tokens)]
    notes.add(f"‡ {row.model} / {row.method}: repeated runs of this setting count the same documents; each run's "
              f"costs are shown, not pooled ({', '.join(map(str, row.sources))})")
    cells = []
    for name, form in (("paper", format_tflops), ("measured", format_tflops), ("image_tokens", format_tokens)):
        texts = list(dict.fromkeys(form(getattr(cost, name)) for cost in row.repeated_costs))
        cells.append(texts[0] if len(texts) == 1 else " ≠ ".join(texts) + " ‡")
    return cells


def average_cell(row: Row, benchmarks: list[Benchmark], notes: Notes) -> str:
    average, left_out = row.average(benchmarks)
    if average is None:
        return DASH
    if not left_out:
        return f"{average:.1f}"
    counted = len([b for b in benchmarks if b.part_of is None])
    notes.add(
        f"* {row.model} / {row.method}: average over {counted - len(left_out)} of {counted} "
        f"benchmarks (left out, missing or conflicting: {', '.join(b.label for b in left_out)})"
    )
    return f"{average:.1f}*"


# ----- the table, in every format ----------------------------------------------------------------
COST_HEADERS = ["TFLOPs (paper conv.)", "TFLOPs (measured)", "avg image tokens"]
FIRST_SCORE_COLUMN = 2 + len(COST_HEADERS)
LEGEND = [
    "Scores in percent; MME is the perception sum in points (max 2000) and counts as percent of 2000 in Avg and Δ.",
    "±: the framework's standard error of the score (lmms-eval's _stderr); n: documents scored.",
    f"{DASH}: not evaluated; left out of the average.",
    ("TFLOPs: mean per sample, language model only; paper conv. counts image tokens only (the paper's "
     "column), measured counts every token each layer really saw."),
    ("avg image tokens: mean per sample of the image tokens each decoder layer sees, averaged over all L "
     "layers, (1/L)·Σ_l n_l (the FLOPs-consistent retained-token convention; FastV-style tables quote the "
     "tokens kept after the drop layer instead)."),
]
DELTA_LEGEND = (
    "Δ [a, b]: the {confidence:.0%} paired-bootstrap interval of the difference ({resamples} resamples of the documents both "
    "runs answered, seed {seed}; `pdrop-eval compare` adds McNemar's exact test)."
)


@dataclass
class Table:
    """A rendered report table: cell texts grouped by model (a Δ row closes a group), the cells to set
    in bold, and the notes to print under it."""

    title: str
    headers: list[str]
    groups: list[list[list[str]]]
    bold: set[tuple[int, int, int]]  # (group, row, column)
    notes: list[str]


def best_cells(rows: list[Row], benchmarks: list[Benchmark]) -> set[tuple[int, int]]:
    """(row, column) of the best score per benchmark among one group's own rows (ties all bold)."""
    best = set()
    for column, benchmark in enumerate(benchmarks, FIRST_SCORE_COLUMN):
        values = {index: row.value(benchmark.key) for index, row in enumerate(rows) if not row.reference}
        values = {index: value for index, value in values.items() if value is not None}
        if len(values) > 1:
            top = max(values.values())
            best |= {(index, column) for index, value in values.items() if value == top}
    return best


def build_table(
    groups: list[list[Row]],
    benchmarks: list[Benchmark],
    title: str,
    delta: DeltaSpec | None = None,
    extra_notes: list[str] = (),
    bold_best: bool = False,
) -> Table:
    """`groups` are the rows of one model each. `bold_best`: mark each group's best score per column (a
    layout that compares methods at one budget)."""
    notes = Notes()
    headers = ["Model", "Method", *COST_HEADERS] + [b.label for b in benchmarks] + ["Avg"]
    cell_groups, bold, intervals = [], set(), False
    for group_index, rows in enumerate(groups):
        cells = []
        for row in rows:
            scores = [score_cell(row, b, notes) for b in benchmarks]
            cells.append([row.model, row.method, *cost_cells(row, notes), *scores, average_cell(row, benchmarks, notes)])
        if bold_best:
            bold |= {(group_index, index, column) for index, column in best_cells(rows, benchmarks)}
        pair = delta.pair([row for row in rows if not row.reference]) if delta else None
        if isinstance(pair, tuple):
            a, b = pair
            deltas = delta_cells(a, b, benchmarks)
            intervals = intervals or any(cell.paired for cell in deltas)
            cells.append([rows[0].model, f"Δ {a.method} − {b.method}", "", "", ""] + [cell.text() for cell in deltas])
        elif pair:
            notes.add(f"no Δ row for {rows[0].model} (--delta {delta.minuend}:{delta.subtrahend}): {pair}")
        cell_groups.append(cells)
    legend = LEGEND + ([DELTA_LEGEND.format(confidence=CONFIDENCE, resamples=RESAMPLES, seed=SEED)] if intervals else [])
    return Table(title, headers, cell_groups, bold, legend + notes.lines + list(extra_notes))


def render(
    groups: list[list[Row]],
    benchmarks: list[Benchmark],
    title: str,
    delta: DeltaSpec | None = None,
    extra_notes: list[str] = (),
) -> str:
    """A GitHub markdown table; `groups` are the rows of one model each (a Δ row closes a group)."""
    return to_markdown(build_table(groups, benchmarks, title, delta, extra_notes))


def to_markdown(table: Table) -> str:
    body = [cells for group in table.groups for cells in group]
    lines = [f"## {table.title}", "", tabulate(body, headers=table.headers, tablefmt="github", disable_numparse=True), ""]
    return "\n".join(lines + [f"- {line}" for line in table.notes]) + "\n"


def group_by_model(rows: list[Row]) -> list[list[Row]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.model, []).append(row)
    return list(groups.values())
