"""The real `lmms-eval` console script (and `accelerate launch -m lmms_eval`) on the tiny checkpoints and
the offline tasks in tasks/pdrop_local. lmms-eval exits 0 even when an evaluation fails, so every check
reads the files it writes (or the error it prints), never the exit code."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pdrop_eval import flops, stats
from pdrop_eval.engine.config import DropConfig

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
LOCAL_TASK_DIR = TASKS / "pdrop_local"
CPU_STARTUP = REPO / "pdrop_eval" / "adapters" / "lmms" / "cpu_startup"
GENERATION_TASKS = {"pdrop_local_vqa": "vqa", "pdrop_local_yesno": "yesno", "pdrop_local_mcq": "mcq"}
PDROP_ARGS = "layer_list=8;16;24,lambda=0.5"
FASTV_ARGS = "fastv_k=2,fastv_r=0.5"
STATS_KEYS = {
    "schema", "framework", "model", "pretrained", "architecture", "drop", "model_dims", "world_size", "wall_time_s",
    "num_samples", "mean_image_tokens", "mean_tflops_paper", "mean_tflops_actual", "samples",
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
                 processes: int = 1, include: Path = TASKS, extra: tuple = ()):
        lmms_args = [
            "--model", model, "--model_args", model_args, "--tasks", tasks, "--include_path", str(include),
            "--batch_size", str(batch_size), "--device", "cpu", "--output_path", str(output), "--log_samples", *extra,
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
        return results.with_name(results.name.removesuffix("_results.json") + stats.FILE_SUFFIX)

    def stats(self) -> dict:
        return json.loads(self.stats_file().read_text())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def expected_image_tokens(checkpoint) -> dict:
    """N per (task, doc_id), counted by the checkpoint's own processor on the task images."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    counts = {}
    for task, data in {**GENERATION_TASKS, "pdrop_local_mcq_ll": "mcq"}.items():
        for row in pd.read_parquet(LOCAL_TASK_DIR / "data" / f"{data}.parquet").itertuples():
            encoded = processor(images=[Image.open(io.BytesIO(row.image))], text=["<image>"], return_tensors="pt")
            counts[task, row.id] = int((encoded.input_ids == image_token_id).sum())
    return counts


def check_stats_follow_config(run: Run, checkpoint, config: DropConfig, tasks) -> dict:
    run_stats = run.stats()
    assert set(run_stats) == STATS_KEYS
    expected_n = {key: n for key, n in expected_image_tokens(checkpoint).items() if key[0] in tasks}
    assert {(s["task"], s["doc_id"]) for s in run_stats["samples"]} == set(expected_n)
    dims = run_stats["model_dims"]
    size = (dims["hidden_size"], dims["intermediate_size"], dims["num_layers"])
    for sample in run_stats["samples"]:
        n = expected_n[sample["task"], sample["doc_id"]]
        assert sample["num_image_tokens"] == n
        assert sample["image_tokens_per_layer"] == config.image_tokens_per_layer(n, dims["num_layers"])
        assert sample["tflops_paper"] == pytest.approx(flops.tflops(*size, sample["image_tokens_per_layer"]))
        assert sample["tflops_actual"] > sample["tflops_paper"]  # text tokens count too
    assert run_stats["num_samples"] == len(expected_n)
    assert run_stats["mean_image_tokens"] == pytest.approx(sum(expected_n.values()) / len(expected_n))
    assert run_stats["drop"] == config.to_dict()
    assert run_stats["wall_time_s"] > 0
    return run_stats


# ----- PyramidDrop, chat request path, LLaVA-NeXT -----------------------------------------------------
@pytest.fixture(scope="module")
def pdrop_run(lmms_env, tiny_llava_next, tmp_path_factory):
    return Run(lmms_env, tmp_path_factory.mktemp("pdrop_run"), "llava_next_pdrop",
               f"pretrained={tiny_llava_next},dtype=float32,max_new_tokens=4,{PDROP_ARGS}", "pdrop_local", batch_size=4)


def test_pdrop_run_writes_results_samples_and_stats(pdrop_run, tiny_llava_next):
    results = pdrop_run.results()
    assert results["config"]["model"] == "llava_next_pdrop"
    assert results["config"]["model_backend"].endswith("(chat)")
    for task in GENERATION_TASKS:
        assert task in results["results"]
        assert sorted(pdrop_run.samples(task)) == list(range(6))
    run_stats = check_stats_follow_config(pdrop_run, tiny_llava_next, DropConfig.from_args(PDROP_ARGS, method="pyramid"), GENERATION_TASKS)
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


# ----- FastV, simple request path (loglikelihood task), LLaVA-1.5; one and two processes ---------------
FASTV_TASKS = "pdrop_local,pdrop_local_mcq_ll"
ALL_TASKS = [*GENERATION_TASKS, "pdrop_local_mcq_ll"]


@pytest.fixture(scope="module")
def fastv_args(tiny_llava):
    return f"pretrained={tiny_llava},dtype=float32,max_new_tokens=4,{FASTV_ARGS}"


@pytest.fixture(scope="module")
def fastv_run(lmms_env, fastv_args, tmp_path_factory):
    return Run(lmms_env, tmp_path_factory.mktemp("fastv_run"), "llava_fastv", fastv_args, FASTV_TASKS, extra=("--force_simple",))


@pytest.fixture(scope="module")
def fastv_two_process_run(lmms_env, fastv_args, tmp_path_factory):
    return Run(lmms_env, tmp_path_factory.mktemp("fastv_2proc"), "llava_fastv", fastv_args, FASTV_TASKS, processes=2,
               extra=("--force_simple",))


def test_fastv_run_answers_and_scores_multiple_choice(fastv_run, tiny_llava):
    results = fastv_run.results()
    assert results["config"]["model_backend"].endswith("(simple)")
    assert "acc,none" in results["results"]["pdrop_local_mcq_ll"]
    for doc in fastv_run.samples("pdrop_local_mcq_ll").values():
        assert len(doc["filtered_resps"]) == 4  # one (loss, is_greedy) per option
        # lmms-eval's verdict is the most likely option (lowest loss, compared as numbers)
        losses = [float(loss) for loss, _is_greedy in doc["filtered_resps"]]
        most_likely = "ABCD"[losses.index(min(losses))]
        assert doc["acc"] == float(most_likely == doc["target"])
    run_stats = check_stats_follow_config(fastv_run, tiny_llava, DropConfig.from_args(FASTV_ARGS, method="fastv"), ALL_TASKS)
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
