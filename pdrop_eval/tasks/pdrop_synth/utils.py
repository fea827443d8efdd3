"""Prompts and scoring of the pdrop_synth task (data and generator: pdrop_eval.synth)."""

import io

from PIL import Image

from pdrop_eval.synth import exact_match


def doc_to_visual(doc):
    # Opened lazily: the model adapter decodes it, so a broken image fails there, naming the document.
    return [Image.open(io.BytesIO(doc["image"]))]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    # The question exactly as `pdrop-eval train` shows it to the model: no extra instruction.
    return doc["question"]


def process_results(doc, results):
    score = float(exact_match(results[0], doc["answer"]))
    return {
        "exact_match": score,
        "local_exact_match": score if doc["local"] else None,
        "global_exact_match": None if doc["local"] else score,
    }


def mean_of_scored(scores):
    """Mean over the documents the metric applies to (the others report None)."""
    scored = [score for score in scores if score is not None]
    return sum(scored) / len(scored) if scored else float("nan")
