"""An evaluated lmms-eval document read back from its output folder (for `pdrop-eval show --run`): the
question and answer from the samples file ``--log_samples`` wrote beside the results, and the
pictures, reloaded through the task exactly as the adapter loaded them (chat path: the task's
messages; simple path: its ``doc_to_visual``)."""

from __future__ import annotations

import json
from pathlib import Path

from pdrop_eval.show import EvaluatedDocument

RESULTS_SUFFIX = "_results.json"


def lmms_document(results_file: Path, task: str, doc_id: int) -> EvaluatedDocument:
    results_file = Path(results_file)
    if not results_file.is_file():
        raise FileNotFoundError(f"{results_file} is missing: the statistics file has no lmms-eval results beside it")
    samples_file = results_file.with_name(results_file.name.removesuffix(RESULTS_SUFFIX) + f"_samples_{task}.jsonl")
    if not samples_file.is_file():
        raise FileNotFoundError(f"{samples_file} is missing: evaluate with --log_samples to show documents of task {task!r}")
    logged = _logged_sample(samples_file, doc_id)
    config = json.loads(results_file.read_text()).get("config", {})
    include_path = (config.get("resolved_cli_args") or {}).get("include_path") or None
    chat = str(config.get("model_backend", "")).endswith("(chat)")
    answer = logged.get("filtered_resps", logged.get("resps", ""))
    images = _document_images(task, doc_id, include_path, chat)
    return EvaluatedDocument(images=images, question=str(logged.get("input", "")), answer=answer if isinstance(answer, str) else json.dumps(answer))


def _logged_sample(samples_file: Path, doc_id: int) -> dict:
    with samples_file.open(encoding="utf-8") as lines:
        for line in lines:
            sample = json.loads(line)
            if sample.get("doc_id") == doc_id:
                return sample
    raise ValueError(f"{samples_file} has no logged sample of doc {doc_id}")


def _document_images(task: str, doc_id: int, include_path: str | None, chat: bool) -> tuple:
    from lmms_eval.tasks import TaskManager, get_task_dict

    from pdrop_eval.adapters.lmms.models import as_image, query_from_messages
    from pdrop_eval.wrapper import load_image

    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or task not in manager.all_tasks:  # not a task of the run's own folder: index lmms-eval's too
        manager = TaskManager(include_path=include_path)
    task_object = get_task_dict([task], manager, "chat" if chat else "simple")[task]
    docs = task_object.eval_docs
    if not 0 <= doc_id < len(docs):
        raise ValueError(f"task {task!r} has {len(docs)} documents; doc {doc_id} is not one of them")
    doc = docs[doc_id]
    label = f"task {task!r} doc {doc_id}"
    if chat:
        return query_from_messages(task_object.doc_to_messages(doc), label, "pdrop-eval show").images
    return tuple(load_image(as_image(visual, label), label) for visual in task_object.doc_to_visual(doc) or [])
