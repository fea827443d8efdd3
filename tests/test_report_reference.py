"""Other papers' published rows (pdrop_eval/data/reference): every shipped file validates, a run lands
beside the row of its method and kept tokens under --compare-paper, and a bad file is refused by name."""

import json
import shutil

import pytest

from pdrop_eval.report import ReportInputError, build_report
from pdrop_eval.report.reference import REFERENCE_DIR, load_reference, load_references

# A stand-in table for the test, not a paper's numbers: the matching is checked on fixed data rather than
# on the shipped files (pdrop_eval/data/reference), whose rows follow what could be read.
SOURCE = {"paper": "test stand-in", "arxiv": "0000.00000", "table": "Table 1"}
FIXTURE = {
    "schema": "pdrop-eval/reference-table/v1",
    "paper": "test stand-in", "arxiv": "0000.00000", "table": "Table 1", "read_from": "tests/test_report_reference.py",
    "model": "LLaVA-1.5-7B",
    "benchmarks": ["gqa", "mme"],
    "rows": [
        {"id": "visionzip-64", "label": "VisionZip", "image_tokens": 64,
         "infer": {"method": "visionzip", "dominant": 54, "contextual": 10}, "scores": {"gqa": 11.1, "mme": 1111.0}, "source": SOURCE},
        {"id": "visionzip-128", "label": "VisionZip", "image_tokens": 128,
         "infer": {"method": "visionzip", "dominant": 108, "contextual": 20}, "scores": {"gqa": 22.2}, "source": SOURCE},
        {"id": "sparsevlm-64", "label": "SparseVLM", "image_tokens": 64, "infer": None, "scores": {"gqa": 33.3}, "source": SOURCE},
    ],
}


def write_reference(folder, data=FIXTURE):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "standin.json"
    path.write_text(json.dumps(data))
    return path


def test_every_shipped_reference_file_validates():
    tables = load_references()
    assert {table.path.name for table in tables} == {path.name for path in REFERENCE_DIR.glob("*.json")}
    assert len(tables) == 3
    for table in tables:
        assert table.model == "LLaVA-1.5-7B" and table.read_from.startswith("https://")


def fake_visionzip_run(folder, dominant, contextual):
    """An lmms-eval results file of llava_visionzip on LLaVA-1.5-7B (no statistics file: a note says so)."""
    folder.mkdir(parents=True)
    (folder / "20260101_000000_results.json").write_text(json.dumps({
        "results": {"gqa": {"exact_match,none": 0.5, "exact_match_stderr,none": 0.01}},
        "config": {"model": "llava_visionzip",
                   "model_args": f"pretrained=llava-hf/llava-1.5-7b-hf,dominant={dominant},contextual={contextual}"},
        "n-samples": {"gqa": {"original": 10, "effective": 10}},
    }))


def test_a_visionzip_run_at_64_tokens_lands_beside_the_published_64_token_row(tmp_path):
    reference_dir = tmp_path / "reference"
    write_reference(reference_dir)
    fake_visionzip_run(tmp_path / "runs" / "vz64", 54, 10)
    markdown = build_report([tmp_path / "runs"], compare_paper=True, reference_dir=reference_dir).markdown
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    ours = next(i for i, line in enumerate(lines) if "VisionZip 54+10" in line and "↳" not in line)
    published = lines[ours + 1]
    cells = [cell.strip() for cell in published.strip("|").split("|")]
    assert cells[1] == "↳ VisionZip 64, arXiv 0000.00000 Table 1" and "11.1" in cells and "64.0" in cells  # GQA; image tokens
    assert "VisionZip 128" not in markdown and "SparseVLM" not in markdown  # other counts; infer null: never matched
    assert "no paper numbers for" not in markdown


def test_a_run_without_published_numbers_gets_the_note(tmp_path):
    reference_dir = tmp_path / "reference"
    write_reference(reference_dir)
    fake_visionzip_run(tmp_path / "runs" / "vz192", 162, 30)
    markdown = build_report([tmp_path / "runs"], compare_paper=True, reference_dir=reference_dir).markdown
    assert "↳ VisionZip" not in markdown and "no paper numbers for" in markdown


def planted(change):
    data = json.loads(json.dumps(FIXTURE))
    change(data)
    return data


@pytest.mark.parametrize("change, message", [
    (lambda d: d["benchmarks"].append("gqa_typo"), "unknown benchmark keys ['gqa_typo']"),
    (lambda d: d["rows"][0]["scores"].update(textvqa=50.0), "score keys ['textvqa'] are not among the file's benchmarks"),
    (lambda d: d["rows"][0]["infer"].update(ratio=0.5), "row 'visionzip-64': bad drop config"),
    (lambda d: d["rows"][0]["source"].pop("table"), "row 'visionzip-64': its source lacks ['table']"),
    (lambda d: d["rows"][1].pop("source"), "missing 'source'"),
    (lambda d: d["rows"][0]["source"].update(arxiv="1111.11111"), "source arXiv 1111.11111 is not the file's 0000.00000"),
    (lambda d: d["rows"][0]["scores"].update(gqa="11.1"), "scores ['gqa'] are not numbers"),
    (lambda d: d.update(model="LLaVA-1.5-13B"), "model 'LLaVA-1.5-13B' is not one of"),
    (lambda d: d.update(schema="pdrop-eval/paper-table/v1"), "schema is 'pdrop-eval/paper-table/v1'"),
])
def test_a_planted_mistake_is_refused_naming_the_file(tmp_path, change, message):
    path = write_reference(tmp_path, planted(change))
    with pytest.raises(ReportInputError, match=None) as error:
        load_reference(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_a_shipped_file_with_a_planted_wrong_key_fails(tmp_path):
    """The shipped files go through the same check: a copy with a wrong benchmark key is refused."""
    copy = tmp_path / "reference"
    shutil.copytree(REFERENCE_DIR, copy)
    target = copy / "visionzip_2412.04467.json"
    data = json.loads(target.read_text())
    data["benchmarks"][0] = "GQA"
    target.write_text(json.dumps(data))
    with pytest.raises(ReportInputError, match="unknown benchmark keys \\['GQA'\\]"):
        load_references(copy)


def test_a_missing_reference_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no reference tables folder at"):
        load_references(tmp_path / "absent")
