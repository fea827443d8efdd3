"""pdrop_eval/data/paper: the paper's own tables re-rendered, cross-checked against each other and the
FLOPs accountant; the CLI's overwrite rule."""

import re
from pathlib import Path

import pytest
import yaml

from pdrop_eval.cli import main
from pdrop_eval.flops import paper_tflops, resolve_dims
from pdrop_eval.package_data import TASKS_DIR
from pdrop_eval.report import render_paper_table
from pdrop_eval.report.benchmarks import LMMS_TASKS
from pdrop_eval.report.paper import PRESET_OF_MODEL, TABLES, load_table, model_name

TASKS = TASKS_DIR
ROUNDING = 0.05 + 1e-9  # the paper prints one decimal


def markdown_rows(markdown: str) -> list[list[str]]:
    """Cells of the table body of a GitHub markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def number(cell: str) -> float:
    return float(re.sub(r"[*‡]", "", cell))


def test_table5_rerendered_reproduces_averages_and_deltas():
    table = load_table(5)
    body = markdown_rows(render_paper_table(5))
    rows = [cells for cells in body if not cells[1].startswith("Δ")]
    assert len(rows) == len(table.rows)
    for row, cells in zip(table.rows, rows):  # Table 5 lists each model's rows together
        assert cells[0] == model_name(row) and cells[2] == f"{row.tflops:g}"
        assert number(cells[4]) == pytest.approx(sum(row.infer.image_tokens_per_layer(row.image_tokens, 32)) / 32, abs=0.05)
        assert [number(c) for c in cells[5:-1]] == [row.scores[b.key] for b in table.benchmarks]
        assert abs(number(cells[-1]) - row.average) <= ROUNDING, (row.id, cells[-1], row.average)
    deltas = [cells for cells in body if cells[1].startswith("Δ")]
    assert len(deltas) == len(table.deltas) == 2
    errata = {(e["model"], e["benchmark"]): e for e in table.errata}
    by_id = {row.id: row for row in table.rows}

    def average_of(row):
        return sum(b.percent(row.scores[b.key]) for b in table.benchmarks) / len(table.benchmarks)

    for printed, cells in zip(table.deltas, deltas):
        assert cells[0] == printed["model"]
        for benchmark, cell in zip(table.benchmarks, cells[5:-1]):
            erratum = errata.get((printed["model"], benchmark.key))
            a, b = (by_id[printed[side]] for side in ("minuend", "subtrahend"))
            exact = benchmark.percent(a.scores[benchmark.key]) - benchmark.percent(b.scores[benchmark.key])
            assert cell == f"{exact:+.1f}"
            expected = erratum["from_rows"] if erratum else printed["scores"][benchmark.key]
            assert abs(exact - expected) <= ROUNDING, (printed["model"], benchmark.key, exact, expected)
            if erratum:  # the printed value really is inconsistent with the printed rows
                assert abs(exact - erratum["reported"]) > ROUNDING
        exact_average = average_of(by_id[printed["minuend"]]) - average_of(by_id[printed["subtrahend"]])
        assert cells[-1] == f"{exact_average:+.1f}" and abs(exact_average - printed["average"]) <= ROUNDING


@pytest.mark.parametrize("number_", TABLES)
def test_every_printed_average_follows_from_the_row(number_):
    table = load_table(number_)
    for row in table.rows:
        percents = [b.percent(row.scores[b.key]) for b in table.benchmarks]
        assert abs(sum(percents) / len(percents) - row.average) <= ROUNDING, (number_, row.id)


@pytest.mark.parametrize("number_", TABLES)
def test_printed_tflops_match_the_flops_accountant(number_):
    for row in load_table(number_).rows:
        if row.tflops is None:
            continue
        dims = resolve_dims(PRESET_OF_MODEL[row.model], row.image_tokens)
        computed = paper_tflops(dims, row.infer)
        assert float(f"{computed:.3g}") == pytest.approx(row.tflops, abs=0.051), (number_, row.id, computed)


def test_the_same_setting_has_the_same_scores_in_every_table():
    seen = {}
    for number_ in TABLES:
        for row in load_table(number_).rows:
            key = (row.model, row.patches, row.train, row.infer)
            for benchmark, value in row.scores.items():
                assert seen.setdefault((key, benchmark), (number_, value))[1] == value, (key, benchmark, seen[(key, benchmark)], number_)


def test_cli_renders_the_paper_table_and_never_overwrites_without_force(tmp_path, capsys):
    out = tmp_path / "table5.md"
    assert main(["report", "--layout", "paper-table5", "--out", str(out)]) == 0
    first = out.read_text()
    assert first.startswith("## Paper Table 5") and first in capsys.readouterr().out
    out.write_text("keep me")
    assert main(["report", "--layout", "paper-table5", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(out) in error and "--force" in error
    assert out.read_text() == "keep me"
    assert main(["report", "--layout", "paper-table5", "--out", str(out), "--force"]) == 0
    assert out.read_text() == first


def test_leaderboard_needs_run_folders(capsys):
    assert main(["report"]) == 2
    assert "run folders" in capsys.readouterr().err


class _TaskYamlLoader(yaml.SafeLoader):
    """lmms-eval task YAMLs with their `!function module.name` tags read as plain strings."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _task_yaml(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_TaskYamlLoader)


def test_every_task_of_the_paper_groups_reaches_its_paper_column():
    """tasks/pdrop_paper: every task is scored, on the benchmark of its group's paper table; the
    project's own OCR-VQA task too, with the metric its YAML reports."""
    groups = {path.stem: _task_yaml(path)["task"] for path in (TASKS / "pdrop_paper").glob("*.yaml")}
    assert set(groups) == {"pdrop_paper", "pdrop_paper_llava15", "pdrop_paper_next"}
    assert set(groups["pdrop_paper_llava15"]) | set(groups["pdrop_paper_next"]) <= set(groups["pdrop_paper"])
    unmapped = [task for task in groups["pdrop_paper"] if task not in LMMS_TASKS]
    assert not unmapped, f"tasks the report cannot put in a paper column: {unmapped}"
    for group, table_number in (("pdrop_paper_llava15", 1), ("pdrop_paper_next", 2)):
        columns = {benchmark.key for benchmark in load_table(table_number).benchmarks}
        assert {LMMS_TASKS[task][0] for task in groups[group]} <= columns, group
    ocrvqa = _task_yaml(TASKS / "pdrop_ocrvqa" / "pdrop_ocrvqa.yaml")
    assert LMMS_TASKS[ocrvqa["task"]] == ("ocrvqa", ocrvqa["metric_list"][0]["metric"])
