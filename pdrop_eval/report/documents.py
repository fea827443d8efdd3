"""Per-document results of a run, and paired comparisons of two runs on the same documents.

lmms-eval writes each document's metric values to ``<date>_samples_<task>.jsonl`` beside the results
when run with ``--log_samples``. Because every setting of a study answers the same documents, two runs
can be compared document by document: the difference of their scores with a paired-bootstrap interval
(``scipy.stats.bootstrap``, documents resampled jointly, percentile method, `RESAMPLES` resamples from
a seeded generator) and, where every document scores 0 or 1, McNemar's exact test (the exact binomial
test of the discordant pairs, ``scipy.stats.binomtest``).

Only a metric lmms-eval aggregates as a per-document mean is resampled here: the mean of a resample is
then exactly what lmms-eval would report for it. A metric with its own aggregation (MME's perception
sum, POPE's F1, a task's ``!function``) is refused with its name, never treated as a mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.report.files import ReportInputError
from pdrop_eval.stats import LMMS_RESULTS_SUFFIX

RESAMPLES = 10_000  # bootstrap resamples (scipy's default too)
SEED = 0
CONFIDENCE = 0.95


class PairingError(ValueError):
    """Two runs' results that cannot be compared document by document; the message says why, `reason`
    in a few words (for a table cell)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def lmms_samples_path(results_file: Path, task: str) -> Path:
    """``<date>_samples_<task>.jsonl`` beside lmms-eval's ``<date>_results.json``."""
    return results_file.with_name(results_file.name.removesuffix(LMMS_RESULTS_SUFFIX) + f"_samples_{task}.jsonl")


@dataclass(frozen=True)
class DocumentResults:
    """Where one task's per-document values of one run are, and how lmms-eval aggregated them."""

    task: str
    metric: str
    aggregation: str  # "mean", or the name of the task's own aggregation
    factor: float  # to the printed scale (percent)
    samples_file: Path

    def values(self) -> dict:
        """doc_id -> the document's metric value on the printed scale; a missing or non-numeric value is
        an error naming the file and the document."""
        values = {}
        with self.samples_file.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    sample = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ReportInputError(f"{self.samples_file}: line {number} is not JSON ({error})") from None
                doc_id, value = sample.get("doc_id"), sample.get(self.metric)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ReportInputError(f"{self.samples_file}: doc_id {doc_id!r} has {self.metric} = {value!r}, not a finite number")
                if doc_id in values:
                    raise ReportInputError(f"{self.samples_file}: doc_id {doc_id!r} is logged twice")
                values[doc_id] = value * self.factor
        return values


@dataclass(frozen=True)
class PairedDifference:
    """Run A minus run B on one task's documents, in the printed scale's points."""

    task: str
    metric: str
    documents: int
    score_a: float
    score_b: float
    difference: float
    low: float  # the paired-bootstrap interval of `difference`
    high: float
    confidence: float
    mcnemar_p: float | None  # None: not a 0/1 metric
    only_a_right: int | None  # McNemar's discordant pairs
    only_b_right: int | None

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (at its confidence)."""
        return self.low > 0 or self.high < 0


def paired_values(a: DocumentResults, b: DocumentResults) -> tuple[list, list, list]:
    """(doc_ids, A's values, B's values) on the documents both answered; refuses another metric or
    aggregation, a metric that is not a per-document mean, and document sets that differ."""
    if (a.task, a.metric) != (b.task, b.metric):
        raise PairingError(f"{a.task} {a.metric} and {b.task} {b.metric} are not the same benchmark metric", "other metrics")
    for side in (a, b):
        if side.aggregation != "mean":
            raise PairingError(
                f"{side.task}: lmms-eval aggregates {side.metric} with {side.aggregation}, not a per-document mean; "
                "no paired interval is computed for it (its documents' values do not average to the score)",
                "not a per-document mean",
            )
    values_a, values_b = a.values(), b.values()
    only_a, only_b = values_a.keys() - values_b.keys(), values_b.keys() - values_a.keys()
    if only_a or only_b:
        raise PairingError(
            f"{a.task}: the runs did not answer the same documents ({len(only_a)} only in {a.samples_file}, "
            f"{len(only_b)} only in {b.samples_file}, {len(values_a.keys() & values_b.keys())} in both); a paired comparison needs the same ones",
            "different documents",
        )
    if not values_a:
        raise PairingError(f"{a.task}: no documents logged in {a.samples_file}", "no documents")
    doc_ids = sorted(values_a, key=str)
    return doc_ids, [values_a[d] for d in doc_ids], [values_b[d] for d in doc_ids]


def paired_difference(
    a: DocumentResults, b: DocumentResults, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> PairedDifference:
    """A − B on their common documents with its paired-bootstrap interval and, for 0/1 metrics,
    McNemar's exact p-value. Raises PairingError where the runs cannot be paired."""
    import numpy as np
    from scipy import stats as scipy_stats

    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples} and {confidence}")
    _doc_ids, values_a, values_b = paired_values(a, b)
    score_a, score_b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    difference = float(score_a.mean() - score_b.mean())
    if np.all(score_a - score_b == score_a[0] - score_b[0]):
        low = high = difference  # every resample gives the same difference (e.g. a run against itself)
    else:
        result = scipy_stats.bootstrap(
            (score_a, score_b), mean_difference, paired=True, vectorized=True, n_resamples=resamples,
            confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    p_value = only_a = only_b = None
    scale = a.factor
    if set(np.unique(np.concatenate([score_a, score_b])) / scale) <= {0.0, 1.0}:
        only_a = int(np.sum((score_a > 0) & (score_b == 0)))
        only_b = int(np.sum((score_a == 0) & (score_b > 0)))
        p_value = 1.0 if only_a + only_b == 0 else float(scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return PairedDifference(a.task, a.metric, len(score_a), float(score_a.mean()), float(score_b.mean()), difference, low, high,
                            confidence, p_value, only_a, only_b)


def mean_difference(a, b, axis=-1):
    """The statistic bootstrapped: mean of A minus mean of B (numpy arrays, along `axis`)."""
    return a.mean(axis=axis) - b.mean(axis=axis)
