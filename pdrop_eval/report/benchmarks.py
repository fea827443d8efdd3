"""Benchmarks on the paper's scales, and where each framework keeps their scores.

Every score is kept on the scale the paper prints: percent, except MME, which is the perception
sum in points (at most 2000). Averages and deltas use MME in percent of its maximum, which is how
the paper's Avg and Δ columns come out (Table 5: 1533.0 - 1482.0 points prints as +2.5).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    key: str
    label: str  # the paper's column header
    max_points: float = 100.0  # the top of the printed scale
    part_of: str | None = None  # a sub-metric's benchmark key (its own column, never in the average)

    def percent(self, value: float) -> float:
        """`value` (printed scale) as percent of the maximum, for averages and deltas."""
        return value * 100.0 / self.max_points

    def format(self, value: float) -> str:
        return f"{value:.1f}"


# The paper's benchmarks, in the column order the leaderboard uses.
KNOWN = {
    benchmark.key: benchmark
    for benchmark in (
        Benchmark("mme", "MME", max_points=2000.0),
        Benchmark("mmbench_en", "MMB"),
        Benchmark("mmbench_cn", "MMBCN"),
        Benchmark("seed_image", "SEEDI"),
        Benchmark("mmstar", "MMStar"),
        Benchmark("pope", "POPE"),
        Benchmark("scienceqa_img", "SQAI"),
        Benchmark("gqa", "GQA"),
        Benchmark("textvqa", "TextVQA"),
        Benchmark("chartqa", "ChartQA"),
        Benchmark("docvqa", "DocVQA"),
        Benchmark("infovqa", "InfoVQA"),
        Benchmark("ocrvqa", "OCRVQA"),
        Benchmark("vqav2", "VQAv2"),
        Benchmark("vizwiz", "VizWiz"),
    )
}


def order(benchmarks) -> list[Benchmark]:
    """The paper's benchmarks first in their usual order, then the others by name; a sub-metric right
    after its benchmark."""
    unique = {b.key: b for b in benchmarks}
    mains = [b for b in unique.values() if b.part_of is None]
    known = [KNOWN[key] for key in KNOWN if key in unique]
    ordered = known + sorted((b for b in mains if b.key not in KNOWN), key=lambda b: b.key)
    subs = sorted((b for b in unique.values() if b.part_of is not None), key=lambda b: b.key)
    return [column for main in ordered for column in [main, *(b for b in subs if b.part_of == main.key)]] + [
        b for b in subs if b.part_of not in {main.key for main in ordered}
    ]


# ----- lmms-eval: task -> (benchmark, metric); metric -> factor to the printed scale ------------
LMMS_TASKS = {
    "mme": ("mme", "mme_perception_score"),
    "mmbench_en_dev": ("mmbench_en", "gpt_eval_score"),
    "mmbench_cn_dev": ("mmbench_cn", "gpt_eval_score"),
    "seedbench": ("seed_image", "seed_image"),
    "mmstar": ("mmstar", "average"),
    "pope": ("pope", "pope_f1_score"),  # LLaVA's POPE number is the F1 score
    "scienceqa_img": ("scienceqa_img", "exact_match"),
    "gqa": ("gqa", "exact_match"),
    "textvqa_val": ("textvqa", "exact_match"),
    "chartqa": ("chartqa", "relaxed_overall"),
    "docvqa_val": ("docvqa", "anls"),
    "infovqa_val": ("infovqa", "anls"),
    "vqav2_val": ("vqav2", "exact_match"),
    "vizwiz_vqa_val": ("vizwiz", "exact_match"),
    "pdrop_ocrvqa": ("ocrvqa", "exact_match"),  # tasks/pdrop_ocrvqa (lmms-eval has no OCR-VQA task)
}

# Factor from lmms-eval's aggregate to the printed scale (read from the task utils of 0.7.3:
# MME sums category scores in points, MMBench's gpt_eval_score is already percent, the rest are
# fractions). For a task we do not know, the first metric of this list that it reports is used.
LMMS_METRIC_FACTORS = {
    "mme_perception_score": 1.0,
    "pope_f1_score": 100.0,
    "anls": 100.0,
    "relaxed_overall": 100.0,
    "exact_match": 100.0,
    "gpt_eval_score": 1.0,
    "seed_image": 100.0,
    "average": 100.0,
    "accuracy": 100.0,
    "acc": 100.0,
    "mcq_accuracy": 100.0,  # the bundled local tasks (tasks/pdrop_local)
    "yesno_accuracy": 100.0,
}


def lmms_metric_factor(metric: str) -> float | None:
    """The factor to the printed scale of a metric: a known one's, or that of the known metric its name
    ends in (``local_exact_match`` is an ``exact_match``); None for a metric the report does not know."""
    if metric in LMMS_METRIC_FACTORS:
        return LMMS_METRIC_FACTORS[metric]
    endings = [known for known in LMMS_METRIC_FACTORS if metric.endswith("_" + known)]
    return LMMS_METRIC_FACTORS[max(endings, key=len)] if endings else None


def lmms_sub_metric(benchmark: Benchmark, metric: str) -> tuple[Benchmark, float]:
    """The column of a further metric an lmms-eval task reports beside the one scored, and its factor
    to the printed scale: percent where the metric is known, else as lmms-eval reports it, said in the
    column's name."""
    factor = lmms_metric_factor(metric)
    label = f"{benchmark.label} {metric}" + ("" if factor is not None else " (as reported)")
    return Benchmark(f"{benchmark.key}/{metric}", label, part_of=benchmark.key), 1.0 if factor is None else factor


def lmms_task_metric(task: str, reported_metrics) -> tuple[Benchmark, str] | None:
    """The benchmark an lmms-eval task scores and the metric to read, or None if none is usable.

    A task we do not know (a local or custom one) is its own benchmark, named after the task.
    """
    if task in LMMS_TASKS:
        key, metric = LMMS_TASKS[task]
        return (KNOWN[key], metric) if metric in reported_metrics else None
    for metric in LMMS_METRIC_FACTORS:
        if metric in reported_metrics:
            max_points = KNOWN["mme"].max_points if metric == "mme_perception_score" else 100.0
            return Benchmark(task, task, max_points), metric
    return None


# ----- VLMEvalKit: dataset name -> benchmark -----------------------------------------------------
VLMEVAL_DATASETS = {
    "MME": "mme",
    "MMBench_DEV_EN": "mmbench_en",
    "MMBench_DEV_CN": "mmbench_cn",
    "SEEDBench_IMG": "seed_image",
    "MMStar": "mmstar",
    "POPE": "pope",
    "ScienceQA_TEST": "scienceqa_img",
    "GQA_TestDev_Balanced": "gqa",
    "TextVQA_VAL": "textvqa",
    "ChartQA_TEST": "chartqa",
    "DocVQA_VAL": "docvqa",
    "InfoVQA_VAL": "infovqa",
    "OCRVQA_TEST": "ocrvqa",
}


def vlmeval_benchmark(dataset: str, max_points: float = 100.0) -> Benchmark:
    """The paper benchmark of an official dataset; a custom dataset is its own benchmark."""
    if dataset in VLMEVAL_DATASETS:
        return KNOWN[VLMEVAL_DATASETS[dataset]]
    return Benchmark(dataset, dataset, max_points)
