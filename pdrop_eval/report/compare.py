"""Two runs compared document by document (`pdrop-eval compare`), as a markdown table."""

from __future__ import annotations

from tabulate import tabulate

from pdrop_eval.report.documents import PairedDifference, paired_difference
from pdrop_eval.report.runs import Run, find_runs
from pdrop_eval.report.table import method_label

SIGNIFICANCE = 0.05


def single_run(path: str) -> Run:
    """The one lmms-eval run at `path` that logged per-document results."""
    runs = find_runs([path])
    if len(runs) != 1:
        raise ValueError(f"{path} holds {len(runs)} runs ({', '.join(str(run.source) for run in runs)}); name one results file")
    (run,) = runs
    if not run.documents:
        raise ValueError(f"{run.source}: no per-document results (lmms-eval's <date>_samples_<task>.jsonl; run with --log_samples)")
    return run


def describe(run: Run) -> str:
    setting = method_label(run.drop) if run.drop else f"{run.adapter} {run.unknown_setting}".strip()
    return f"{run.checkpoint or run.adapter} / {setting} ({run.source})"


def paired_differences(a: Run, b: Run, resamples: int, seed: int, confidence: float) -> tuple[list[PairedDifference], list[str]]:
    """Per task both runs logged: A − B; also notes on the tasks only one of them ran."""
    common = sorted(a.documents.keys() & b.documents.keys())
    if not common:
        raise ValueError(f"the runs share no task with per-document results: A has {sorted(a.documents)}, B {sorted(b.documents)}")
    notes = [f"{task}: only in {name}; not compared" for name, run, other in (("A", a, b), ("B", b, a))
             for task in sorted(run.documents.keys() - other.documents.keys())]
    return [paired_difference(a.documents[task], b.documents[task], resamples, seed, confidence) for task in common], notes


def compare_runs(path_a: str, path_b: str, resamples: int, seed: int, confidence: float) -> str:
    a, b = single_run(path_a), single_run(path_b)
    differences, notes = paired_differences(a, b, resamples, seed, confidence)
    level = f"{confidence:.0%}"
    headers = ["task", "metric", "documents", "A", "B", "Δ A − B", f"{level} interval", "McNemar p (exact)", "only A / only B right",
               f"significant at {SIGNIFICANCE:.0%}"]
    body = []
    for d in differences:
        discordant = "-" if d.mcnemar_p is None else f"{d.only_a_right} / {d.only_b_right}"
        mcnemar = "-" if d.mcnemar_p is None else f"{d.mcnemar_p:.3g}"
        significant = d.significant if d.mcnemar_p is None else d.significant and d.mcnemar_p < SIGNIFICANCE
        body.append([d.task, d.metric, d.documents, f"{d.score_a:.1f}", f"{d.score_b:.1f}", f"{d.difference:+.1f}",
                     f"[{d.low:+.1f}, {d.high:+.1f}]", mcnemar, discordant, "yes" if significant else "no"])
    lines = [
        f"A: {describe(a)}",
        f"B: {describe(b)}",
        "",
        tabulate(body, headers=headers, tablefmt="github", disable_numparse=True),
        "",
        (f"- Scores in percent. Interval: paired bootstrap of the mean difference over the documents both runs answered "
         f"(scipy.stats.bootstrap, percentile method, {resamples} resamples, seed {seed})."),
        (f"- McNemar: exact binomial test of the documents only one run answered right (0/1 metrics only). Significant: "
         f"the interval excludes 0 and, where there is one, p < {SIGNIFICANCE}."),
        *[f"- {note}" for note in notes],
    ]
    return "\n".join(lines) + "\n"
