"""Tables a paper can use (issue 30): LaTeX, CSV and JSON from the demo's real lmms-eval runs, and paired
comparisons of two runs on the same documents. Runs of many documents are the demo's real files with
their per-document log extended (a copy of a real line per document)."""

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from test_report_runs import LOCAL_TASK_METRICS, copy_run, edit_json, table

from pdrop_eval.cli import main
from pdrop_eval.report import build_report
from pdrop_eval.report.documents import PairingError, paired_difference
from pdrop_eval.report.export import records, render
from pdrop_eval.report.table import format_tflops, format_tokens

DOCUMENTS = 300


def log_documents(results, task: str, correct, doc_ids=None) -> None:
    """Replace the run's per-document log of `task` by one line per document, `correct[i]` its 0/1
    exact_match, and the task's score in the results file by their mean."""
    samples = results.with_name(results.name.replace("_results.json", f"_samples_{task}.jsonl"))
    template = json.loads(samples.read_text().splitlines()[0])
    doc_ids = range(len(correct)) if doc_ids is None else doc_ids
    lines = [json.dumps({**template, "doc_id": doc_id, "exact_match": float(value)}) for doc_id, value in zip(doc_ids, correct)]
    samples.write_text("\n".join(lines) + "\n")
    edit_json(results, lambda data: data["results"][task].update({"exact_match,none": float(np.mean(correct))}))


@pytest.fixture
def two_settings(demo_run, tmp_path):
    """PDrop and FastV runs whose pdrop_local_vqa logs hold DOCUMENTS documents: FastV right on about
    half, PDrop right on 10% more (45 documents only PDrop answers right, 15 only FastV)."""
    demo_dir, _ = demo_run
    rng = np.random.default_rng(7)
    fastv = rng.random(DOCUMENTS) < 0.5
    pdrop = fastv.copy()
    flip = rng.choice(np.flatnonzero(~fastv), size=45, replace=False)
    pdrop[flip] = True
    back = rng.choice(np.flatnonzero(fastv), size=15, replace=False)
    pdrop[back] = False
    paths = {}
    for folder, correct in (("pdrop-lambda0.5", pdrop), ("fastv", fastv)):
        results, _stats = copy_run(demo_dir, folder, tmp_path / folder)
        log_documents(results, "pdrop_local_vqa", correct.astype(float))
        paths[folder] = results
    return paths, pdrop.astype(float), fastv.astype(float)


def documents_of(results, task="pdrop_local_vqa"):
    (run,) = build_report([results]).runs
    return run.documents[task]


def test_a_run_against_itself_differs_by_exactly_zero(two_settings):
    paths, _pdrop, _fastv = two_settings
    docs = documents_of(paths["pdrop-lambda0.5"])
    same = paired_difference(docs, docs)
    assert (same.difference, same.low, same.high, same.mcnemar_p) == (0.0, 0.0, 0.0, 1.0)


def test_the_paired_bootstrap_is_seeded_and_matches_a_plain_one(two_settings):
    paths, pdrop, fastv = two_settings
    a, b = documents_of(paths["pdrop-lambda0.5"]), documents_of(paths["fastv"])
    first, again, other = paired_difference(a, b), paired_difference(a, b), paired_difference(a, b, seed=1)
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)
    assert first.difference == pytest.approx(100 * (pdrop.mean() - fastv.mean()))
    # Plain percentile bootstrap: resample documents (pairs kept together), take the 2.5% and 97.5% points.
    rng = np.random.default_rng(123)
    picks = rng.integers(0, DOCUMENTS, size=(20_000, DOCUMENTS))
    means = 100 * (pdrop[picks].mean(axis=1) - fastv[picks].mean(axis=1))
    low, high = np.percentile(means, [2.5, 97.5])
    assert first.low == pytest.approx(low, abs=0.7) and first.high == pytest.approx(high, abs=0.7)
    # McNemar's exact test by hand: two-sided binomial tail of the discordant pairs at p = 1/2.
    only_a, only_b = int(np.sum((pdrop == 1) & (fastv == 0))), int(np.sum((pdrop == 0) & (fastv == 1)))
    n, k = only_a + only_b, min(only_a, only_b)
    by_hand = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert (first.only_a_right, first.only_b_right) == (only_a, only_b)
    assert first.mcnemar_p == pytest.approx(by_hand, rel=1e-9)


def test_runs_on_different_documents_are_refused(two_settings, capsys):
    paths, pdrop, _fastv = two_settings
    log_documents(paths["fastv"], "pdrop_local_vqa", pdrop, doc_ids=range(1000, 1000 + DOCUMENTS))
    with pytest.raises(PairingError, match=f"did not answer the same documents \\({DOCUMENTS} only in .*, {DOCUMENTS} only in .*, 0 in both\\)"):
        paired_difference(documents_of(paths["pdrop-lambda0.5"]), documents_of(paths["fastv"]))
    assert main(["compare", str(paths["pdrop-lambda0.5"]), str(paths["fastv"])]) == 2
    assert "did not answer the same documents" in capsys.readouterr().err


def test_a_metric_that_is_not_a_per_document_mean_is_refused(two_settings):
    paths, _pdrop, _fastv = two_settings

    def own_aggregation(data):
        data["configs"]["pdrop_local_vqa"]["metric_list"][0]["aggregation"] = "<function mean_of_scored at 0x7f00>"

    edit_json(paths["fastv"], own_aggregation)
    with pytest.raises(PairingError, match="aggregates exact_match with mean_of_scored, not a per-document mean"):
        paired_difference(documents_of(paths["pdrop-lambda0.5"]), documents_of(paths["fastv"]))
    cells = table(build_report([paths["pdrop-lambda0.5"], paths["fastv"]]).markdown)
    assert cells[("tiny-llava", "Δ PDrop λ=0.5 − FastV K=2 R=0.5")]["pdrop_local_vqa"] == "+10.0 (not a per-document mean)"


def test_compare_prints_the_interval_and_mcnemar(two_settings, capsys):
    paths, pdrop, fastv = two_settings
    expected = paired_difference(documents_of(paths["pdrop-lambda0.5"]), documents_of(paths["fastv"]))
    assert main(["compare", str(paths["pdrop-lambda0.5"].parent.parent), str(paths["fastv"])]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("| pdrop_local_vqa"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells == ["pdrop_local_vqa", "exact_match", str(DOCUMENTS), f"{100 * pdrop.mean():.1f}", f"{100 * fastv.mean():.1f}", "+10.0",
                     f"[{expected.low:+.1f}, {expected.high:+.1f}]", f"{expected.mcnemar_p:.3g}",
                     f"{expected.only_a_right} / {expected.only_b_right}", "yes"]
    assert "10000 resamples, seed 0" in out


def test_delta_rows_carry_the_interval_or_say_why_not(two_settings):
    paths, _pdrop, _fastv = two_settings
    expected = paired_difference(documents_of(paths["pdrop-lambda0.5"]), documents_of(paths["fastv"]))
    for samples in paths["fastv"].parent.glob("*_samples_pdrop_local_mcq.jsonl"):
        samples.unlink()  # as if that task ran without --log_samples
    report = build_report([paths["pdrop-lambda0.5"], paths["fastv"]])
    delta = table(report.markdown)[("tiny-llava", "Δ PDrop λ=0.5 − FastV K=2 R=0.5")]
    assert delta["pdrop_local_vqa"] == f"+10.0 [{expected.low:+.1f}, {expected.high:+.1f}]"
    assert delta["pdrop_local_mcq"] == "+0.0 (no per-document results)"
    assert "paired-bootstrap interval" in report.markdown


def test_csv_and_json_hold_the_markdowns_numbers(two_settings, tmp_path):
    paths, _pdrop, _fastv = two_settings
    report = build_report([paths["pdrop-lambda0.5"], paths["fastv"]])
    cells = table(report.markdown)
    assert main(["report", str(paths["pdrop-lambda0.5"]), str(paths["fastv"]), "--out", str(tmp_path / "t.csv")]) == 0
    assert main(["report", str(paths["pdrop-lambda0.5"]), str(paths["fastv"]), "--out", str(tmp_path / "t.json")]) == 0
    from_csv = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    from_json = json.loads((tmp_path / "t.json").read_text())["records"]
    assert len(from_csv) == len(from_json) == len(records(report))
    runs = [r for r in from_json if r["row"] == "run"]
    assert len(runs) == 2 * 5  # two rows x (4 tasks + yes_ratio)
    for record, row in zip(from_json, from_csv):
        if record["row"] == "delta":
            cell = cells[(record["model"], record["method"])][record["label"]]
            assert cell.startswith(f"{record['difference']:+.1f}")
            if record["ci_low"] is not None:
                assert cell.endswith(f"[{record['ci_low']:+.1f}, {record['ci_high']:+.1f}]")
            continue
        cell = cells[(record["model"], record["method"])]
        score = f"{record['score']:.1f} ±{record['stderr']:.1f} (n={record['n']}/{record['total']})"
        assert cell[record["label"]] == score
        assert (cell["TFLOPs (paper conv.)"], cell["TFLOPs (measured)"], cell["avg image tokens"]) == (
            format_tflops(record["tflops_paper"]), format_tflops(record["tflops_measured"]), format_tokens(record["avg_image_tokens"]))
        assert float(row["score"]) == record["score"] and float(row["tflops_paper"]) == record["tflops_paper"]  # exact round trip
        (source,) = record["run_files"]
        reported = json.loads(Path(source).read_text())["results"][record["task"]]
        if record["label"] == record["task"]:  # the task's score, in percent
            assert record["score"] == 100 * reported[LOCAL_TASK_METRICS[record["task"]] + ",none"]
        else:  # yes_ratio, a metric without a known scale: as lmms-eval reports it
            assert record["label"] == "pdrop_local_yesno yes_ratio (as reported)" and record["score"] == reported["yes_ratio,none"]
        assert row["run_files"] == str(paths[record["method"] == "FastV K=2 R=0.5" and "fastv" or "pdrop-lambda0.5"])


def test_latex_is_a_booktabs_table_with_escaped_names(demo_run, tmp_path):
    """Two models (the demo's checkpoint, and a copy of its PDrop run under another checkpoint name with
    an underscore and a budget whose options hold `%`): one \\midrule between the groups."""
    demo_dir, _ = demo_run
    results, stats = copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / "other")
    edit_json(results, lambda data: data["config"].update(model_args="pretrained=/ckpt/my_model,budget=34.8%"))
    stats.unlink()
    assert main(["report", str(demo_dir / "runs"), str(tmp_path / "other"), "--out", str(tmp_path / "t.tex")]) == 0
    latex = (tmp_path / "t.tex").read_text()
    body = "\n".join(line for line in latex.splitlines() if not line.startswith("%"))
    assert body.startswith("\\begin{tabular}") and body.rstrip().endswith("\\end{tabular}")
    assert body.count("{") == body.count("}")
    assert not re.search(r"(?<!\\)[_%#]", body)  # every underscore, percent and hash sign escaped
    assert "my\\_model" in body and "budget=34.8\\%" in body and "PDrop $\\lambda$=0.5" in body
    rules = body.splitlines()
    assert rules.count("\\toprule") == rules.count("\\bottomrule") == 1
    assert rules.count("\\midrule") == 1 + 1  # under the header, and between the two models


def test_paper_layouts_set_the_best_score_in_bold():
    report = build_report([], layout="paper-table5")
    latex = render(report, "latex")
    first_group = latex.split("\\midrule")[1]
    # LLaVA-NeXT-7B, MME: vanilla 1534.1 beats FastV 1482.0 and PDrop 1533.0.
    assert "\\textbf{1534.1}" in first_group and "\\textbf{1533.0}" not in first_group


def test_format_is_taken_from_the_out_suffix_or_refused(demo_run, tmp_path, capsys):
    demo_dir, _ = demo_run
    assert main(["report", str(demo_dir / "runs"), "--out", str(tmp_path / "t.txt")]) == 2
    assert "cannot tell the format from '.txt'" in capsys.readouterr().err and not (tmp_path / "t.txt").exists()
    assert main(["report", str(demo_dir / "runs"), "--out", str(tmp_path / "t.txt"), "--format", "json"]) == 0
    assert json.loads((tmp_path / "t.txt").read_text())["records"]
    assert main(["report", str(demo_dir / "runs"), "--out", str(tmp_path / "t.tex")]) == 0
    assert (tmp_path / "t.tex").read_text().splitlines()[-1] == "\\end{tabular}"
