"""Reports from real framework outputs: lmms-eval (the demo's runs) and VLMEvalKit (run here), the
right numbers in the right cells, and bad inputs named in the error."""

import json
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

from conftest import hand_tflops
from pdrop_eval.cli import main
from pdrop_eval import DropConfig
from pdrop_eval.report import ReportInputError, build_report

# The metric each bundled task reports (tasks/pdrop_local/*.yaml), all fractions of 1.
LOCAL_TASK_METRICS = {
    "pdrop_local_mcq": "mcq_accuracy",
    "pdrop_local_vqa": "exact_match",
    "pdrop_local_yesno": "yesno_accuracy",
    "pdrop_local_mcq_ll": "acc",
}
METHOD_OF_FOLDER = {"vanilla": "vanilla", "pdrop-lambda0.5": "PDrop λ=0.5", "fastv": "FastV K=2 R=0.5"}
# (1/L)·Σ_l n_l by hand for N=64, 32 layers: PDrop 8/16/24 λ=0.5 keeps 32/16/8; FastV K=2 R=0.5 keeps 32.
HAND_AVG_IMAGE_TOKENS = {"vanilla": "64.0", "pdrop-lambda0.5": f"{(8 * 64 + 8 * 32 + 8 * 16 + 8 * 8) / 32:.1f}", "fastv": f"{(2 * 64 + 30 * 32) / 32:.1f}"}


def table(markdown: str) -> dict[tuple[str, str], dict[str, str]]:
    """(model, method) -> {column header: cell} of the first markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in line.strip("|").split("|")]  # noqa: E731
    headers = split(lines[0])
    return {(cells[0], cells[1]): dict(zip(headers, cells)) for cells in map(split, lines[2:])}


def lmms_cell(results: dict, task: str, metric: str) -> str:
    """A score cell as the report must print it from lmms-eval's results: percent, ± its stderr, and
    the documents scored of the task's (a --limit run scores fewer than the task has)."""
    values, counts = results["results"][task], results["n-samples"][task]
    return (f"{values[metric + ',none'] * 100:.1f} ±{values[metric + '_stderr,none'] * 100:.1f} "
            f"(n={counts['effective']}/{counts['original']})")


def run_files(demo_dir, folder):
    (results,) = (demo_dir / "runs" / folder).glob("*/*_results.json")
    (stats,) = results.parent.glob("*_pdrop_stats.json")
    return json.loads(results.read_text()), json.loads(stats.read_text())


def test_lmms_eval_runs_land_in_the_right_cells(demo_run):
    demo_dir, _ = demo_run
    cells = table(build_report([demo_dir / "runs"]).markdown)
    paper_flops = {}
    for folder, method in METHOD_OF_FOLDER.items():
        results, stats = run_files(demo_dir, folder)
        row = cells[("tiny-llava", method)]
        for task, metric in LOCAL_TASK_METRICS.items():
            assert row[task] == lmms_cell(results, task, metric), (method, task)
        samples = stats["samples"]
        assert len(samples) == 2 * len(LOCAL_TASK_METRICS)  # --limit 2 per task
        paper = sum(s["tflops_paper"] for s in samples) / len(samples)
        measured = sum(s["tflops_actual"] for s in samples) / len(samples)
        assert (row["TFLOPs (paper conv.)"], row["TFLOPs (measured)"]) == (f"{paper:.3g}", f"{measured:.3g}")
        average = sum(sum(s["image_tokens_per_layer"]) / len(s["image_tokens_per_layer"]) for s in samples) / len(samples)
        assert row["avg image tokens"] == f"{average:.1f}" == HAND_AVG_IMAGE_TOKENS[folder]
        paper_flops[folder] = paper
    # Independent check of the paper convention: the tiny LLaVA has 64 image tokens per image, 32 layers.
    dims = stats["model_dims"]
    assert paper_flops["vanilla"] == pytest.approx(hand_tflops([64] * 32, dims["hidden_size"], dims["intermediate_size"], dims["kv_size"]))
    assert paper_flops["pdrop-lambda0.5"] < paper_flops["fastv"] < paper_flops["vanilla"]


@pytest.fixture(scope="module")
def vlmeval_run(demo_run, tmp_path_factory):
    """pdrop-vlmeval (VLMEvalKit's run.py) with FastV on the demo's tiny checkpoint and a toy Y/N set."""
    from pdrop_eval.adapters.vlmeval_data import make_toy_datasets

    demo_dir, _ = demo_run
    root = tmp_path_factory.mktemp("vlmeval")
    make_toy_datasets(root / "lmu")
    env = {**os.environ, "LMUData": str(root / "lmu")}
    command = ["pdrop-vlmeval", "--model", "llava_fastv", "--data", "PDropToyYN", "--work-dir", str(root / "work"),
               "--judge", "exact_matching", "--model-args", f"pretrained={demo_dir.parent / 'tiny-llava'},max_new_tokens=4"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return root / "work"


def test_vlmeval_run_merges_with_the_lmms_eval_run_of_the_same_setting(demo_run, vlmeval_run):
    demo_dir, _ = demo_run
    model_dir = vlmeval_run / "llava_fastv"
    score = pd.read_csv(model_dir / "llava_fastv_PDropToyYN_score.csv")  # Y/N: percent already
    stats = json.loads(next(model_dir.glob("*pdrop_stats*.json")).read_text())
    cells = table(build_report([demo_dir / "runs", vlmeval_run]).markdown)
    fastv = cells[("tiny-llava", "FastV K=2 R=0.5")]
    assert fastv["PDropToyYN"] == f"{score['Overall'][0]:.1f}"
    lmms_results, lmms_stats = run_files(demo_dir, "fastv")
    assert fastv["pdrop_local_vqa"] == lmms_cell(lmms_results, "pdrop_local_vqa", "exact_match")
    samples = stats["samples"] + lmms_stats["samples"]  # one row: TFLOPs over both runs' samples
    assert fastv["TFLOPs (paper conv.)"] == f"{sum(s['tflops_paper'] for s in samples) / len(samples):.3g}"
    assert cells[("tiny-llava", "vanilla")]["PDropToyYN"] == "-"
    assert cells[("tiny-llava", "vanilla")]["Avg"].endswith("*")  # missing PDropToyYN, footnoted


def test_conflicting_duplicate_runs_are_reported(demo_run, tmp_path):
    demo_dir, _ = demo_run
    for copy in ("a", "b"):
        shutil.copytree(demo_dir / "runs" / "fastv", tmp_path / copy)
    (results_b,) = (tmp_path / "b").glob("*/*_results.json")
    data = json.loads(results_b.read_text())
    data["results"]["pdrop_local_vqa"]["exact_match,none"] = 0.5 + data["results"]["pdrop_local_vqa"]["exact_match,none"] / 4
    results_b.write_text(json.dumps(data))
    markdown = build_report([tmp_path]).markdown
    cell = table(markdown)[("tiny-llava", "FastV K=2 R=0.5")]["pdrop_local_vqa"]
    assert "≠" in cell and cell.endswith("‡")
    assert str(results_b) in markdown and "conflicting duplicate runs" in markdown


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # NaN / Infinity are written as Python writes them


def stats_of(results_path):
    return results_path.with_name(results_path.name.replace("_results.json", "_pdrop_stats.json"))


def copy_run(demo_dir, folder, destination):
    """A demo run's folder copied to `destination`; its (results file, statistics file)."""
    shutil.copytree(demo_dir / "runs" / folder, destination)
    (results,) = destination.glob("*/*_results.json")
    return results, stats_of(results)


def set_lambda(value):
    def change(data):
        holder = data["config"] if "config" in data else data
        holder["model_args"] = holder["model_args"].replace("lambda=0.5", f"lambda={value}")
    return change


def test_results_without_their_statistics_never_get_another_runs(demo_run, tmp_path):
    """A run killed after lmms-eval saved its results has no statistics file; another run's file in the
    same folder (another λ) must not be pinned on it, and its own row stays apart."""
    demo_dir, _ = demo_run
    results, _stats = copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / "runs")
    killed = results.with_name("29990101_000000_results.json")
    shutil.copy(results, killed)
    edit_json(killed, set_lambda(0.3))
    report = build_report([tmp_path / "runs"])
    cells = table(report.markdown)
    assert cells[("tiny-llava", "PDrop λ=0.5")]["TFLOPs (paper conv.)"] != "-"
    assert cells[("tiny-llava", "PDrop λ=0.3")]["TFLOPs (paper conv.)"] == "-"
    assert f"{killed}: no statistics file for this run" in report.markdown


def drop_ratio(value):
    """The statistics file of another λ, its samples' counts that λ's (so only the link to the results differs)."""
    def change(data):
        data["drop"].update(ratio=value)
        for sample in data["samples"]:
            sample["image_tokens_per_layer"] = DropConfig.pyramid(ratio=value).image_tokens_per_layer(sample["num_image_tokens"], 32)
    return change


@pytest.mark.parametrize("damage, target, message", [
    (drop_ratio(0.3), "stats", "records drop setting PyramidDrop(layers=[8, 16, 24], lambda=0.3"),
    (set_lambda(0.4), "stats", "records model_args"),
    (set_lambda(0.4), "results", "records model_args"),
    (lambda data: data.update(results_file="20000101_000000_results.json"), "stats", "belongs to llava_next_pdrop's results file '20000101_000000_results.json'"),
])
def test_statistics_that_disagree_with_their_results_are_refused(demo_run, tmp_path, damage, target, message):
    demo_dir, _ = demo_run
    results, stats = copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / "run")
    edit_json(stats if target == "stats" else results, damage)
    with pytest.raises(ReportInputError, match=re.escape(message)) as error:
        build_report([tmp_path / "run"])
    assert str(stats) in str(error.value)


def set_checkpoint(path):
    def change(data):
        holder = data["config"] if "config" in data else data
        old = holder["model_args"].split(",")[0].removeprefix("pretrained=")
        holder["model_args"] = holder["model_args"].replace(old, path)
        if "pretrained" in data:
            data["pretrained"] = path
    return change


def test_rows_are_keyed_by_the_full_checkpoint(demo_run, tmp_path):
    """Two checkpoints that share a folder name (two `final`s) are two rows, shown by unique names."""
    demo_dir, _ = demo_run
    for run in ("runA", "runB"):
        results, stats = copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / run)
        for path in (results, stats):
            edit_json(path, set_checkpoint(f"/ckpt/{run}/final"))
    cells = table(build_report([tmp_path]).markdown)
    rows = {model for model, method in cells if method == "PDrop λ=0.5"}
    assert rows == {"runA/final", "runB/final"}


def test_a_task_the_report_cannot_score_keeps_the_runs_statistics(demo_run, tmp_path):
    demo_dir, _ = demo_run
    results, stats = copy_run(demo_dir, "pdrop-lambda0.5", tmp_path / "run")
    edit_json(results, lambda data: data["results"].update(mmmu_val={"alias": "mmmu_val", "mmmu_acc,none": 0.3}))
    edit_json(stats, lambda data: data["samples"].append({**data["samples"][0], "task": "mmmu_val"}))
    report = build_report([tmp_path / "run"])
    row = table(report.markdown)[("tiny-llava", "PDrop λ=0.5")]
    samples = json.loads(stats.read_text())["samples"]
    assert row["TFLOPs (paper conv.)"] == f"{sum(s['tflops_paper'] for s in samples) / len(samples):.3g}"
    assert "task 'mmmu_val' reports no metric the report knows (mmmu_acc); not scored" in report.markdown


def corrupt(path):
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


def drop_config(path):
    data = json.loads(path.read_text())
    del data["config"]
    path.write_text(json.dumps(data))


def foreign(path):
    path.write_text(json.dumps([{"model": "x", "score": 1}]))


def wrong_stats_schema(path):
    stats = next(path.parent.glob("*_pdrop_stats.json"))
    stats.write_text(json.dumps({"schema": "someone-else/v9"}))
    return stats


def nan_score(path):
    edit_json(path, lambda data: data["results"]["pdrop_local_vqa"].update({"exact_match,none": float("nan")}))


def infinite_tflops(path):
    stats = stats_of(path)
    edit_json(stats, lambda data: data["samples"][1].update(tflops_paper=float("inf")))
    return stats


@pytest.mark.parametrize("damage, expected", [(corrupt, "corrupt JSON"), (drop_config, "missing 'config'"),
                                               (foreign, "holds a JSON list"), (wrong_stats_schema, "schema is"),
                                               (nan_score, "results.pdrop_local_vqa.exact_match,none is nan, not a finite number"),
                                               (infinite_tflops, "samples[1].tflops_paper should be a finite number, got inf")])
def test_bad_files_are_named_in_the_error(demo_run, tmp_path, capsys, damage, expected):
    demo_dir, _ = demo_run
    shutil.copytree(demo_dir / "runs" / "pdrop-lambda0.5", tmp_path / "run")
    (results,) = (tmp_path / "run").glob("*/*_results.json")
    named = damage(results) or results
    with pytest.raises(ReportInputError, match=re.escape(expected)) as error:
        build_report([tmp_path / "run"])
    assert str(named) in str(error.value)
    assert main(["report", str(tmp_path / "run")]) == 2
    assert str(named) in capsys.readouterr().err


def test_folder_without_results_is_an_error(tmp_path):
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(ReportInputError, match="no lmms-eval results"):
        build_report([tmp_path])


def test_report_plot_and_overwrite_rule(demo_run, tmp_path):
    demo_dir, _ = demo_run
    out, plot = tmp_path / "r.md", tmp_path / "r.png"
    assert main(["report", str(demo_dir / "runs"), "--out", str(out), "--plot", str(plot), "--layout", "paper-table5", "--compare-paper", "--paper-model", "LLaVA-1.5-7B"]) == 0
    markdown = out.read_text()
    assert plot.read_bytes().startswith(b"\x89PNG")
    rows = table(markdown)
    # paper-table5 columns (all dashes for the local tasks) and the paper's LLaVA-1.5-7B numbers under each row
    assert rows[("tiny-llava", "↳ paper LLaVA-1.5-7B, Table 5")]["MME"] in {"1475.6", "1500.8"}
    assert rows[("tiny-llava", "↳ paper LLaVA-1.5-7B, Table 1, 4, 5")]["TFLOPs (paper conv.)"] == "3.82"
    assert rows[("tiny-llava", "vanilla")]["MME"] == "-"
    plot.write_bytes(b"mine")
    assert main(["report", str(demo_dir / "runs"), "--plot", str(plot)]) == 2
    assert plot.read_bytes() == b"mine"
