"""A local VQA TSV that `pdrop-vlmeval` can score. VLMEvalKit takes a TSV it does not know, without
option columns, as its custom VQA set, whose `evaluate` raises NotImplementedError; `ExactMatchVQA`
scores it by exact match instead, after lower-casing and dropping punctuation (pdrop_synth's own rule,
`pdrop_eval.synth.exact_match`), overall and per `category`, in percent."""

from __future__ import annotations

import pandas as pd
from vlmeval.dataset.image_base import ImageBaseDataset
from vlmeval.smp import dump, get_intermediate_file_path, load

from pdrop_eval.synth import exact_match


class ExactMatchVQA(ImageBaseDataset):
    TYPE = "VQA"
    DATASET_URL: dict[str, str] = {}  # name -> '': read <LMUData>/<name>.tsv, no download or MD5 check (`register`)

    @classmethod
    def register(cls, name: str) -> None:
        from vlmeval.dataset import DATASET_CLASSES

        cls.DATASET_URL[name] = ""
        if cls not in DATASET_CLASSES:  # the list build_dataset searches; ours first, as no other class has these names
            DATASET_CLASSES.insert(0, cls)

    def evaluate(self, eval_file, **judge_kwargs):
        return exact_match_scores(eval_file)


def exact_match_scores(eval_file: str) -> pd.DataFrame:
    """One row: `Overall` and one column per category, the percentage of exact matches; written beside the
    predictions as `<name>_acc.csv`, where VLMEvalKit's VQA scorers write theirs (the report reads it)."""
    data = load(eval_file)
    matched = pd.Series([exact_match(str(prediction), str(answer)) for prediction, answer in zip(data["prediction"], data["answer"])])
    scores = {"Overall": 100.0 * matched.mean()}
    if "category" in data:
        scores |= {str(category): 100.0 * group.mean() for category, group in matched.groupby(data["category"].astype(str).values)}
    result = pd.DataFrame([scores])
    dump(result, get_intermediate_file_path(eval_file, "_acc", "csv"))
    return result
