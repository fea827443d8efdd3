"""The real `lmms-eval` console script (and `accelerate launch -m lmms_eval`) on the tiny checkpoints and
the offline tasks in pdrop_eval/tasks/pdrop_local. lmms-eval exits 0 even when an evaluation fails, so every check
reads the files it writes (or the error it prints), never the exit code."""

import dataclasses
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import hand_image_tokens_per_layer, hand_tflops
from pdrop_eval import flops, stats
from pdrop_eval import budget
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.package_data import TASKS_DIR
from pdrop_eval.report import build_report
from pdrop_eval.report.plot import plot_points

REPO = Path(__file__).resolve().parents[1]
TASKS = TASKS_DIR
LOCAL_TASK_DIR = TASKS / "pdrop_local"
CPU_STARTUP = REPO / "pdrop_eval" / "adapters" / "lmms" / "cpu_startup"
GENERATION_TASKS = {"pdrop_local_vqa": "vqa", "pdrop_local_yesno": "yesno", "pdrop_local_mcq": "mcq"}
PDROP_ARGS = "layer_list=8;16;24,lambda=0.5"
FASTV_ARGS = "fastv_k=2,fastv_r=0.5"
STATS_KEYS = {
    "schema", "framework", "model", "results_file", "model_args", "pretrained", "architecture", "drop", "model_dims",
    "world_size", "wall_time_s", "num_samples", "mean_image_tokens", "mean_tflops_paper", "mean_tflops_actual", "samples",
}


@pytest.fixture(scope="module")
def lmms_env(tmp_path_factory):
    """Offline, one thread per process (the tiny model runs faster so), the torchvision shim at start-up."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path_factory.mktemp("datasets_cache")),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(CPU_STARTUP), os.environ.get("PYTHONPATH")])),
    }


class Run:
    """One lmms-eval invocation and the files it left under its --output_path."""

    def __init__(self, env, output: Path, model: str, model_args: str, tasks: str, batch_size: int = 2,
                 processes: int = 1, include: Path = TASKS, extra: tuple = (), output_flag: str = "--output_path"):
        lmms_args = [
            "--model", model, "--model_args", model_args, "--tasks", tasks, "--include_path", str(include),
            "--batch_size", str(batch_size), "--device", "cpu", output_flag, str(output), "--log_samples", *extra,
        ]
        if processes == 1:
            command = ["lmms-eval", *lmms_args]
        else:
            command = [
                sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), "-m", "lmms_eval", *lmms_args,
            ]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)  # exit code says nothing
        self.output = output
        self.log = completed.stdout + completed.stderr

    def files(self, pattern: str) -> list[Path]:
        return sorted(self.output.glob(f"**/{pattern}"))

    def results_file(self) -> Path:
        found = self.files("*_results.json")
        assert len(found) == 1, f"expected one results file, found {found}\n{self.log[-4000:]}"
        return found[0]

    def results(self) -> dict:
        return json.loads(self.results_file().read_text())

    def samples(self, task: str) -> dict:
        (path,) = self.files(f"*_samples_{task}.jsonl")
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return {record["doc_id"]: record for record in records}

    def stats_file(self) -> Path:
        results = self.results_file()
        return results.with_name(results.name.removesuffix("_results.json") + "_pdrop_stats.json")

    def stats(self) -> dict:
        return json.loads(self.stats_file().read_text())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def expected_image_tokens(checkpoint, limit: int | None = None, **processor_options) -> dict:
    """N per (task, doc_id) of each task's first `limit` documents (None: all), counted by the
    checkpoint's own processor (loaded with `processor_options`) on the task images."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint, **processor_options)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    counts = {}
    for task, data in {**GENERATION_TASKS, "pdrop_local_mcq_ll": "mcq"}.items():
        for row in pd.read_parquet(LOCAL_TASK_DIR / "data" / f"{data}.parquet").head(limit).itertuples():
            encoded = processor(images=[Image.open(io.BytesIO(row.image))], text=[processor.image_token], return_tensors="pt")
            counts[task, row.id] = int((encoded.input_ids == image_token_id).sum())
    return counts


def check_stats_follow_config(run: Run, checkpoint, method: str, tasks) -> dict:
    """The statistics file names this run's results file and model_args, and holds one sample per
    document with the image tokens the processor makes and the hand-computed drop schedule and FLOPs."""
    run_stats = run.stats()
    assert set(run_stats) == STATS_KEYS
    assert run_stats["results_file"] == run.results_file().name
    assert run_stats["model_args"] == run.results()["config"]["model_args"]
    expected_n = {key: n for key, n in expected_image_tokens(checkpoint).items() if key[0] in tasks}
    assert {(s["task"], s["doc_id"]) for s in run_stats["samples"]} == set(expected_n)
    dims = run_stats["model_dims"]
    for sample in run_stats["samples"]:
        n = expected_n[sample["task"], sample["doc_id"]]
        per_layer = hand_image_tokens_per_layer(method, n)
        assert sample["num_image_tokens"] == n
        assert sample["image_tokens_per_layer"] == list(per_layer)
        assert sample["tflops_paper"] == pytest.approx(hand_tflops(per_layer, dims["hidden_size"], dims["intermediate_size"], dims["kv_size"]))
        assert sample["tflops_actual"] > sample["tflops_paper"]  # text tokens count too
    assert run_stats["num_samples"] == len(expected_n)
    assert run_stats["mean_image_tokens"] == pytest.approx(sum(expected_n.values()) / len(expected_n))
    assert run_stats["drop"]["method"] == method
    assert run_stats["wall_time_s"] > 0
    return run_stats


# ----- PyramidDrop, chat request path, LLaVA-NeXT -----------------------------------------------------
@pytest.fixture(scope="module")
def pdrop_run(lmms_env, tiny_llava_next, tmp_path_factory):
    # "--output": lmms-eval's argparse takes the abbreviation for --output_path; statistics must follow.
    return Run(lmms_env, tmp_path_factory.mktemp("pdrop_run"), "llava_next_pdrop",
               f"pretrained={tiny_llava_next},dtype=float32,max_new_tokens=4,{PDROP_ARGS}", "pdrop_local", batch_size=4,
               output_flag="--output")


@pytest.mark.newest_transformers  # the one lmms-eval run on the newest transformers release (.ci/run)
def test_pdrop_run_writes_results_samples_and_stats(pdrop_run, tiny_llava_next):
    results = pdrop_run.results()
    assert results["config"]["model"] == "llava_next_pdrop"
    assert results["config"]["model_backend"].endswith("(chat)")
    for task in GENERATION_TASKS:
        assert task in results["results"]
        assert sorted(pdrop_run.samples(task)) == list(range(6))
    run_stats = check_stats_follow_config(pdrop_run, tiny_llava_next, "pyramid", GENERATION_TASKS)
    assert run_stats["drop"] == DropConfig.from_args(PDROP_ARGS, method="pyramid").to_dict()
    assert (run_stats["model"], run_stats["architecture"], run_stats["world_size"]) == ("llava_next_pdrop", "llava_next", 1)
    assert len({s["num_image_tokens"] for s in run_stats["samples"]}) == 3  # anyres: one N per aspect ratio


# ----- the random control, chat request path, LLaVA-NeXT -------------------------------------------------
def test_random_drop_run_keeps_the_schedules_counts(lmms_env, tiny_llava_next, tmp_path):
    run = Run(lmms_env, tmp_path / "out", "llava_random_drop",
              f"pretrained={tiny_llava_next},dtype=float32,max_new_tokens=2,drop_preset=pdrop-0.5,seed=3",
              "pdrop_local_yesno", batch_size=4, extra=("--limit", "3"))
    results = run.results()
    assert results["config"]["model"] == "llava_random_drop"
    assert sorted(run.samples("pdrop_local_yesno")) == [0, 1, 2]
    run_stats = run.stats()
    control = DropConfig.random(DropConfig.pyramid(), seed=3)
    assert run_stats["drop"] == control.to_dict()
    dims = run_stats["model_dims"]
    for sample in run_stats["samples"]:
        assert sample["image_tokens_per_layer"] == control.image_tokens_per_layer(sample["num_image_tokens"], dims["num_layers"])
    # the report and the plot show it as its own method
    from pdrop_eval.report import build_report
    from pdrop_eval.report.plot import plot_points, write_plot

    report = build_report([run.output])
    assert [(row.method, row.kind) for row in report.rows] == [("Random (PDrop λ=0.5, seed 3)", "random")]
    assert {kind for series in plot_points(report.runs).values() for _checkpoint, kind in series} == {"random"}
    assert write_plot(report.runs, tmp_path / "plot.png").stat().st_size > 0


# ----- FastV, simple request path (loglikelihood task), LLaVA-1.5; one and two processes ---------------
FASTV_TASKS = "pdrop_local,pdrop_local_mcq_ll"
ALL_TASKS = [*GENERATION_TASKS, "pdrop_local_mcq_ll"]


@pytest.fixture(scope="module")
def fastv_args(tiny_llava):
    return f"pretrained={tiny_llava},dtype=float32,max_new_tokens=4,{FASTV_ARGS}"


def _task_utils():
    spec = importlib.util.spec_from_file_location("pdrop_local_utils", LOCAL_TASK_DIR / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    return utils


@pytest.fixture(scope="module")
def most_likely_tasks(tiny_llava, tmp_path_factory):
    """The local tasks with each multiple-choice answer set to the option FastV's tiny LLaVA finds most
    likely, computed here with the wrapper (not through lmms-eval or the adapter): lmms-eval's accuracy
    on pdrop_local_mcq_ll must then be 1 for every document."""
    from pdrop_eval.wrapper import LlavaRunner, Query

    tasks = tmp_path_factory.mktemp("tasks") / "tasks"
    shutil.copytree(TASKS, tasks)
    data_path = tasks / "pdrop_local" / "data" / "mcq.parquet"
    data = pd.read_parquet(data_path)
    post_prompt = "\nAnswer with the option's letter from the given choices directly."  # pdrop_local_mcq_ll.yaml
    utils = _task_utils()
    runner = LlavaRunner.load(str(tiny_llava), drop=DropConfig.from_args(FASTV_ARGS, method="fastv"), dtype="float32")
    answers = []
    for doc in data.to_dict("records"):
        query = Query.from_text(utils.mcq_doc_to_text(doc, {"post_prompt": post_prompt}), [Image.open(io.BytesIO(doc["image"]))])
        logprobs = [score.logprob for score in runner.loglikelihood([query] * 4, [f" {letter}" for letter in "ABCD"])]
        best, second = sorted(logprobs, reverse=True)[:2]
        assert best - second > 1e-3, "no clear most likely option; the check below would be fragile"
        answers.append("ABCD"[logprobs.index(best)])
    runner.close()
    data["answer"] = answers
    data.to_parquet(data_path, index=False)
    return tasks


@pytest.fixture(scope="module")
def fastv_run(lmms_env, fastv_args, most_likely_tasks, tmp_path_factory):
    return Run(lmms_env, tmp_path_factory.mktemp("fastv_run"), "llava_fastv", fastv_args, FASTV_TASKS,
               include=most_likely_tasks, extra=("--force_simple",))


@pytest.fixture(scope="module")
def fastv_two_process_run(lmms_env, fastv_args, most_likely_tasks, tmp_path_factory):
    return Run(lmms_env, tmp_path_factory.mktemp("fastv_2proc"), "llava_fastv", fastv_args, FASTV_TASKS, processes=2,
               include=most_likely_tasks, extra=("--force_simple",))


def test_fastv_run_answers_and_scores_multiple_choice(fastv_run, tiny_llava):
    results = fastv_run.results()
    assert results["config"]["model_backend"].endswith("(simple)")
    docs = fastv_run.samples("pdrop_local_mcq_ll")
    assert len(docs) == 6 and all(len(doc["filtered_resps"]) == 4 for doc in docs.values())  # one per option
    # Every answer is the model's most likely option by construction: lmms-eval's own verdict must agree.
    assert {doc_id: doc["acc"] for doc_id, doc in docs.items()} == dict.fromkeys(docs, 1.0)
    assert results["results"]["pdrop_local_mcq_ll"]["acc,none"] == 1.0
    run_stats = check_stats_follow_config(fastv_run, tiny_llava, "fastv", ALL_TASKS)
    assert run_stats["architecture"] == "llava"


def test_two_processes_give_the_same_answers_and_metrics(fastv_run, fastv_two_process_run):
    one, two = fastv_run, fastv_two_process_run
    for task in ALL_TASKS:
        answers_one = {doc_id: record["filtered_resps"] for doc_id, record in one.samples(task).items()}
        answers_two = {doc_id: record["filtered_resps"] for doc_id, record in two.samples(task).items()}
        assert answers_two == answers_one, task
        metrics_one = {key: value for key, value in one.results()["results"][task].items() if "stderr" not in key}
        metrics_two = {key: value for key, value in two.results()["results"][task].items() if "stderr" not in key}
        assert metrics_two == metrics_one
    stats_one, stats_two = one.stats(), two.stats()
    assert (stats_one["world_size"], stats_two["world_size"]) == (1, 2)
    assert stats_two["samples"] == stats_one["samples"]


# ----- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model_args, message",
    [
        ("pretrianed={ckpt},dtype=float32", "unknown option(s) ['pretrianed']"),
        ("pretrained={missing},dtype=float32", "checkpoint folder {missing} does not exist"),
    ],
    ids=["misspelt_arg", "missing_checkpoint"],
)
def test_bad_model_args_end_with_a_clear_error(model_args, message, lmms_env, tiny_llava, tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    run = Run(lmms_env, tmp_path / "out", "llava_next_pdrop", model_args.format(ckpt=tiny_llava, missing=missing), "pdrop_local_vqa")
    assert message.format(missing=missing) in run.log
    assert not run.files("*_results.json")


def test_a_run_failing_while_scoring_writes_no_statistics_beside_another_runs_results(lmms_env, pdrop_run, tiny_llava_next, tmp_path):
    """Two runs of one model into one --output_path: the second fails while scoring, after the first saved
    its results (simulated by a copy of a finished run's results file, dated later than the failing run's
    start). The failing run must not write its statistics beside the other run's results."""
    tasks = tmp_path / "tasks"
    shutil.copytree(LOCAL_TASK_DIR, tasks)
    (tasks / "scoring_fails.py").write_text("def process_results(doc, results):\n    raise RuntimeError('scoring fails on purpose')\n")
    (tasks / "pdrop_local_scoring_fails.yaml").write_text(
        "task: pdrop_local_scoring_fails\ninclude: _default_template_yaml\ndataset_kwargs:\n  data_files:\n    test: data/vqa.parquet\n"
        "process_results: !function scoring_fails.process_results\nmetric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    finished = pdrop_run.results_file()
    other_results = tmp_path / "out" / finished.parent.name / finished.name
    other_results.parent.mkdir(parents=True)
    shutil.copy(finished, other_results)
    later = time.time() + 3600
    os.utime(other_results, (later, later))
    run = Run(lmms_env, tmp_path / "out", "llava_next_pdrop", f"pretrained={tiny_llava_next},dtype=float32,max_new_tokens=2,lambda=0.3",
              "pdrop_local_scoring_fails", include=tasks, extra=("--limit", "2"))
    assert "scoring fails on purpose" in run.log
    assert run.files("*_results.json") == [other_results]
    assert not run.files("*_pdrop_stats.json"), run.log[-3000:]


def test_corrupt_image_ends_with_an_error_naming_the_document(lmms_env, tiny_llava, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(LOCAL_TASK_DIR, tasks)
    data = pd.read_parquet(tasks / "data" / "vqa.parquet")
    data.loc[3, "image"] = b"\x89PNG this is not an image"
    data.to_parquet(tasks / "data" / "vqa.parquet", index=False)
    run = Run(lmms_env, tmp_path / "out", "llava_fastv", f"pretrained={tiny_llava},dtype=float32,max_new_tokens=2",
              "pdrop_local_vqa", include=tasks)
    assert "task 'pdrop_local_vqa' doc 3: reading the document failed: UnidentifiedImageError" in run.log
    assert not run.files("*_results.json")
    assert not run.files(f"*{stats.FILE_SUFFIX}")


# ----- budgets: solved schedules hold in the statistics of real runs -----------------------------------
def test_share_of_n_budget_holds_for_every_image_size_in_a_real_run(lmms_env, tiny_llava_next, tmp_path):
    """LLaVA-NeXT, budget=22% of N on average per layer: three image sizes (N = 136, 200, 208), so three
    schedules in one run; each sample within one token per layer of its share."""
    dims = flops.dims_from_config(tiny_llava_next)
    config = budget.for_budget("22%", "fastv", model=dims)
    run = Run(lmms_env, tmp_path, "llava_fastv", f"pretrained={tiny_llava_next},dtype=float32,max_new_tokens=2,budget=22%",
              "pdrop_local_vqa", batch_size=3, extra=("--limit", "3"))
    run_stats = run.stats()
    assert run_stats["drop"] == config.to_dict()
    samples = run_stats["samples"]
    assert sorted(sample["num_image_tokens"] for sample in samples) == [136, 200, 208]
    for sample in samples:
        n, counts = sample["num_image_tokens"], sample["image_tokens_per_layer"]
        assert abs(sum(counts) / len(counts) - 0.22 * n) < 1
        assert counts == list(budget.Schedule.of(config, dataclasses.replace(dims, image_tokens=n)).image_tokens_per_layer)


def test_tflops_budget_holds_in_a_real_run(lmms_env, tiny_llava, tmp_path):
    """LLaVA-1.5 (N = 64): PyramidDrop given the TFLOPs of FastV K=2 R=0.5 (the paper's equal-FLOPs
    comparison) as budget=...,budget_convention=tflops."""
    target = flops.paper_tflops(flops.dims_from_config(tiny_llava), DropConfig.fastv())
    run = Run(lmms_env, tmp_path, "llava_next_pdrop",
              f"pretrained={tiny_llava},dtype=float32,max_new_tokens=2,budget={target!r},budget_convention=tflops",
              "pdrop_local_vqa", batch_size=2, extra=("--limit", "2"))
    run_stats = run.stats()
    samples = run_stats["samples"]
    assert len(samples) == 2
    for sample in samples:
        assert sample["num_image_tokens"] == 64
        assert abs(sample["tflops_paper"] - target) / target < 0.01
    # The report takes the solved setting from the statistics file (the model_args hold only the budget),
    # with the samples' average image tokens per layer in its column and on the plot's token axis.
    report = build_report([tmp_path])
    (row,) = report.rows
    average = sum(sum(s["image_tokens_per_layer"]) / 32 for s in samples) / len(samples)
    assert row.drop == DropConfig.from_dict(run_stats["drop"]) and row.avg_image_tokens == pytest.approx(average)
    assert f"| {average:.1f} " in report.markdown and "(1/L)·Σ_l n_l" in report.markdown
    (series,) = plot_points(report.runs, x="tokens")["pdrop_local_vqa"].values()
    assert [x for x, _score in series] == [pytest.approx(average)]


# ----- Qwen2.5-VL and LLaVA-OneVision: their own models, one run each ------------------------------------
QWEN_ARGS = "min_pixels=256,max_pixels=16384"  # the tiny model's own pixel range


def check_family_run(run: Run, model: str, architecture: str, method: str, expected_n: dict) -> None:
    """The run's statistics: its model, family and method, one sample per document with the processor's N
    (`expected_n`) and the hand-computed schedule."""
    results = run.results()
    assert results["config"]["model"] == model, run.log[-3000:]
    run_stats = run.stats()
    assert (run_stats["model"], run_stats["architecture"], run_stats["drop"]["method"]) == (model, architecture, method)
    assert run_stats["model_args"] == results["config"]["model_args"]
    assert {(s["task"], s["doc_id"]): s["num_image_tokens"] for s in run_stats["samples"]} == expected_n
    assert len(set(expected_n.values())) > 1  # N follows each picture's shape
    for sample in run_stats["samples"]:
        assert sample["image_tokens_per_layer"] == list(hand_image_tokens_per_layer(method, sample["num_image_tokens"]))


def test_qwen2_5_vl_pdrop_generates_and_scores_likelihoods_with_statistics(lmms_env, tiny_qwen2_5_vl, tmp_path):
    """Simple path (--force_simple): generation and log-likelihood multiple choice, 3-D positions."""
    run = Run(lmms_env, tmp_path, "qwen2_5_vl_pdrop", f"pretrained={tiny_qwen2_5_vl},dtype=float32,max_new_tokens=2,{QWEN_ARGS},{PDROP_ARGS}",
              "pdrop_local_vqa,pdrop_local_mcq_ll", extra=("--force_simple", "--limit", "2"))
    expected_n = expected_image_tokens(tiny_qwen2_5_vl, 2, size={"shortest_edge": 256, "longest_edge": 16384})
    tasks = ("pdrop_local_vqa", "pdrop_local_mcq_ll")
    check_family_run(run, "qwen2_5_vl_pdrop", "qwen2_5_vl", "pyramid", {key: n for key, n in expected_n.items() if key[0] in tasks})
    assert "acc,none" in run.results()["results"]["pdrop_local_mcq_ll"]
    # the model keeps the original 3-D ids unless told otherwise, and the report reads that setting back
    assert run.stats()["drop"] == DropConfig.from_args(f"{PDROP_ARGS},position_mode=original", method="pyramid").to_dict()
    (row, *_) = build_report([tmp_path]).rows
    assert row.drop == DropConfig.from_dict(run.stats()["drop"])
    assert all(len(doc["filtered_resps"]) == 4 for doc in run.samples("pdrop_local_mcq_ll").values())  # one score per option


def test_llava_onevision_fastv_answers_through_the_chat_path_with_statistics(lmms_env, tiny_llava_onevision, tmp_path):
    run = Run(lmms_env, tmp_path, "llava_onevision_fastv", f"pretrained={tiny_llava_onevision},dtype=float32,max_new_tokens=2,{FASTV_ARGS}",
              "pdrop_local_yesno", extra=("--limit", "3"))
    assert run.results()["config"]["model_backend"].endswith("(chat)")
    expected_n = expected_image_tokens(tiny_llava_onevision, 3)
    check_family_run(run, "llava_onevision_fastv", "llava_onevision", "fastv", {key: n for key, n in expected_n.items() if key[0] == "pdrop_local_yesno"})
