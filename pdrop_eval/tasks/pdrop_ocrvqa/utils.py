"""OCR-VQA (book covers; Mishra et al. 2019), which lmms-eval lacks, from the HF dataset howard-hou/OCR-VQA.

Each dataset row is one cover with several questions; `ocrvqa_process_docs` makes one document per
question. Scored by exact match after lower-casing and stripping punctuation, as LLaVA evaluates it.
"""

import io
import re

import datasets
from PIL import Image


def ocrvqa_process_docs(dataset):
    # Keep images encoded while flattening: copying bytes is cheap, decoding every cover is not.
    dataset = dataset.cast_column("image", datasets.Image(decode=False))

    def one_row_per_question(batch):
        rows = {"image_id": [], "question": [], "answer": [], "image": []}
        for image_id, questions, answers, image in zip(batch["image_id"], batch["questions"], batch["answers"], batch["image"]):
            for question, answer in zip(questions, answers):
                rows["image_id"].append(image_id)
                rows["question"].append(question)
                rows["answer"].append(answer)
                rows["image"].append(image)
        return rows

    return dataset.map(one_row_per_question, batched=True, remove_columns=dataset.column_names)


def ocrvqa_doc_to_visual(doc):
    return [Image.open(io.BytesIO(doc["image"]["bytes"]))]


def ocrvqa_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def _normalize(text):
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def ocrvqa_process_results(doc, results):
    return {"exact_match": float(_normalize(results[0]) == _normalize(doc["answer"]))}
