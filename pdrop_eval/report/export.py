"""A report in the format a paper or a spreadsheet takes: markdown, a LaTeX booktabs table, or one
record per (row, benchmark) as CSV or JSON.

LaTeX comes from tabulate's ``latex_booktabs`` (it escapes ``_``, ``%``, ``&``, braces and the rest);
added here are only the rules between model groups, bold for the best score per column where the
layout compares methods at one budget, and math for the few symbols pdflatex has no text glyph for.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tabulate import tabulate

from pdrop_eval.report.build import Report
from pdrop_eval.report.table import DeltaCell, Row, delta_cells

FORMATS = ("markdown", "latex", "csv", "json")
SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".tex": "latex", ".csv": "csv", ".json": "json"}
# Set around a bold cell's text before tabulate escapes it (letters only, so escaping leaves them alone).
BOLD_OPEN, BOLD_CLOSE = "PDROPEVALBOLDOPEN", "PDROPEVALBOLDCLOSE"
LATEX_SYMBOLS = {
    "λ": r"$\lambda$", "Δ": r"$\Delta$", "−": "$-$", "±": r"$\pm$", "≠": r"$\neq$", "‡": r"\ddag{}",
    "·": r"$\cdot$", "Σ": r"$\Sigma$", "↳": r"$\hookrightarrow$",
}
RECORD_FIELDS = [
    "row", "model", "method", "checkpoint", "benchmark", "label", "task", "score", "stderr", "n", "total", "conflicting_scores",
    "tflops_paper", "tflops_measured", "avg_image_tokens", "repeated_costs", "difference", "ci_low", "ci_high", "confidence",
    "mcnemar_p", "no_interval", "run_files",
]


def output_format(given: str | None, out: str | None) -> str:
    """--format, else the --out file's suffix, else markdown."""
    if given:
        return given
    if out:
        suffix = Path(out).suffix.lower()
        if suffix not in SUFFIXES:
            raise ValueError(f"--out {out}: cannot tell the format from {suffix or 'no suffix'!r} ({', '.join(SUFFIXES)}); pass --format")
        return SUFFIXES[suffix]
    return "markdown"


def render(report: Report, fmt: str) -> str:
    if fmt == "markdown":
        return report.markdown
    if fmt == "latex":
        return to_latex(report)
    if fmt == "csv":
        return to_csv(records(report))
    if fmt == "json":
        return json.dumps({"title": report.table.title, "records": records(report), "notes": report.table.notes}, indent=2, allow_nan=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def to_latex(report: Report) -> str:
    """A booktabs tabular for ``\\input``: one ``\\midrule`` between model groups, notes as comments."""
    table = report.table
    body = [
        [f"{BOLD_OPEN}{cell}{BOLD_CLOSE}" if (group, row, column) in table.bold else cell for column, cell in enumerate(cells)]
        for group, rows in enumerate(table.groups)
        for row, cells in enumerate(rows)
    ]
    lines = tabulate(body, headers=table.headers, tablefmt="latex_booktabs", disable_numparse=True).splitlines()
    first_row = lines.index(r"\midrule") + 1
    ends, count = [], 0
    for rows in table.groups[:-1]:
        count += len(rows)
        ends.append(first_row + count)
    for index in reversed(ends):
        lines.insert(index, r"\midrule")
    text = "\n".join(lines).replace(BOLD_OPEN, r"\textbf{").replace(BOLD_CLOSE, "}")
    for symbol, latex in LATEX_SYMBOLS.items():
        text = text.replace(symbol, latex)
    comments = [f"% {table.title}"] + [f"% {line}" for line in table.notes + report.sources]
    return "\n".join(comments) + "\n" + text + "\n"


def records(report: Report) -> list[dict]:
    """One record per (row, benchmark) with a score, and per Δ cell; numbers unrounded."""
    result = []
    for rows in report.groups:
        for row in rows:
            for benchmark in report.benchmarks:
                scores = row.scores.get(benchmark.key, [])
                if scores:
                    result.append(score_record(row, benchmark, scores))
        pair = report.delta.pair([row for row in rows if not row.reference])
        if isinstance(pair, tuple):
            a, b = pair
            for benchmark, cell in zip(report.benchmarks, delta_cells(a, b, report.benchmarks)):
                if cell.difference is not None:
                    result.append(delta_record(a, b, benchmark, cell))
    return result


def score_record(row: Row, benchmark, scores) -> dict:
    value = row.value(benchmark.key)
    single = scores[0] if value is not None else None
    return {
        "row": "reference" if row.reference else "run",
        "model": row.model, "method": row.method, "checkpoint": row.checkpoint,
        "benchmark": benchmark.key, "label": benchmark.label, "task": scores[0].task,
        "score": single.value if single else None,  # unrounded (Row.value rounds to tell conflicts apart)
        "stderr": single.stderr if single else None,
        "n": single.documents if single else None,
        "total": single.total if single else None,
        "conflicting_scores": None if single else [score.value for score in scores],
        "tflops_paper": row.tflops_paper, "tflops_measured": row.tflops_measured, "avg_image_tokens": row.avg_image_tokens,
        "repeated_costs": [[cost.paper, cost.measured, cost.image_tokens] for cost in row.repeated_costs] or None,
        "run_files": sorted({str(score.source) for score in scores}),
    }


def delta_record(a: Row, b: Row, benchmark, cell: DeltaCell) -> dict:
    paired = cell.paired
    return {
        "row": "delta", "model": a.model, "method": f"Δ {a.method} − {b.method}", "checkpoint": a.checkpoint,
        "benchmark": benchmark.key, "label": benchmark.label,
        "difference": cell.difference,
        "ci_low": paired.low if paired else None, "ci_high": paired.high if paired else None,
        "confidence": paired.confidence if paired else None, "mcnemar_p": paired.mcnemar_p if paired else None,
        "n": paired.documents if paired else None, "no_interval": cell.missing or None,
        "run_files": sorted({str(s.source) for row in (a, b) for s in row.scores.get(benchmark.key, [])}),
    }


def to_csv(rows: list[dict]) -> str:
    """The records as CSV; lists are joined with ';', missing values are empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in rows:
        writer.writerow({key: ";".join(map(str, value)) if isinstance(value, list) else value for key, value in record.items()})
    return out.getvalue()
