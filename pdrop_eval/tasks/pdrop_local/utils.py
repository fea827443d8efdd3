"""Prompts and scoring of the offline pdrop_local tasks (data: `python -m pdrop_eval.local_tasks`)."""

import io
import re

from PIL import Image

OPTION_LETTERS = ("A", "B", "C", "D")


def doc_to_visual(doc):
    # Opened lazily: the model adapter decodes it, so a broken image fails there, naming the document.
    return [Image.open(io.BytesIO(doc["image"]))]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def mcq_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    options = "\n".join(f"{letter}. {doc[letter]}" for letter in OPTION_LETTERS)
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}\n{options}{kwargs.get('post_prompt', '')}"


def _normalize(text):
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def vqa_process_results(doc, results):
    return {"exact_match": float(_normalize(results[0]) == _normalize(doc["answer"]))}


def yesno_process_results(doc, results):
    words = _normalize(results[0]).split()
    answer = words[0] if words and words[0] in ("yes", "no") else "other"
    return {"yesno_accuracy": float(answer == doc["answer"]), "yes_ratio": float(answer == "yes")}


def mcq_process_results(doc, results):
    match = re.match(r"\s*\(?([A-D])\b", results[0])
    return {"mcq_accuracy": float(match is not None and match.group(1) == doc["answer"])}
