"""The per-run statistics file that both framework adapters write and `pdrop-eval report` reads.

One JSON object per evaluation run, in a file whose name ends in ``_pdrop_stats.json``, placed in the
folder of the framework's own result files (lmms-eval: ``<date>_pdrop_stats.json`` beside
``<date>_results.json``). Schema ``pdrop-eval/stats/v1``::

    {
      "schema": "pdrop-eval/stats/v1",
      "framework": "lmms-eval" | "vlmeval",
      "model": "llava_next_pdrop",            # the name the framework ran
      "pretrained": "llava-hf/llava-v1.6-vicuna-7b-hf",
      "architecture": "llava" | "llava_next",
      "drop": {...},                           # DropConfig.to_dict()
      "model_dims": {"hidden_size": 4096, "intermediate_size": 11008, "num_layers": 32},
      "world_size": 1,                         # processes the documents were split across
      "wall_time_s": 12.3,                     # seconds spent answering requests (slowest process)
      "num_samples": 10,
      "mean_image_tokens": 64.0,               # mean N before any drop
      "mean_tflops_paper": 0.1,                # mean of the samples' tflops_paper
      "mean_tflops_actual": 0.2,               # mean of the samples' tflops_actual
      "samples": [{"task": "...", "doc_id": 0, "num_image_tokens": 64,
                   "image_tokens_per_layer": [64, ...], "tokens_per_layer": [80, ...],
                   "tflops_paper": 0.1, "tflops_actual": 0.2,
                   "kept": [[0, 3, ...], ...]}]     # only with save_kept=true: per stage boundary, the
    }                                               # kept indices into the sample's image-token block

Per sample: ``image_tokens_per_layer`` and ``tokens_per_layer`` have one entry per decoder layer (the
image tokens left, and all valid tokens text included, during prefill); ``tflops_paper`` is
``flops.tflops(d, m, L, image_tokens_per_layer)`` and ``tflops_actual`` the same over
``tokens_per_layer``. Samples are sorted by task then doc_id; a document the framework asks about more
than once (one request per answer option) appears once. Means are null when there are no samples.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA = "pdrop-eval/stats/v1"
FILE_SUFFIX = "_pdrop_stats.json"


def sample_record(task: str, doc_id: int, stats: dict, kept=None) -> dict:
    """One entry of ``samples``: where it came from plus a `SampleStats.to_dict()`, and the kept
    image-token indices per stage (`SampleStats.kept`) when the run stores them (``save_kept``)."""
    return {"task": task, "doc_id": doc_id, **stats, **({} if kept is None else {"kept": [list(stage) for stage in kept]})}


def build_run_stats(
    *,
    framework: str,
    model: str,
    pretrained: str,
    architecture: str,
    drop: dict,
    model_dims: dict,
    world_size: int,
    wall_time_s: float,
    samples: list[dict],
) -> dict:
    """The whole file's content; `samples` are `sample_record` dicts (sorted and deduplicated here)."""
    unique = {(sample["task"], sample["doc_id"]): sample for sample in reversed(samples)}  # first one wins
    ordered = [unique[key] for key in sorted(unique)]
    return {
        "schema": SCHEMA,
        "framework": framework,
        "model": model,
        "pretrained": pretrained,
        "architecture": architecture,
        "drop": drop,
        "model_dims": model_dims,
        "world_size": world_size,
        "wall_time_s": wall_time_s,
        "num_samples": len(ordered),
        "mean_image_tokens": _mean(ordered, "num_image_tokens"),
        "mean_tflops_paper": _mean(ordered, "tflops_paper"),
        "mean_tflops_actual": _mean(ordered, "tflops_actual"),
        "samples": ordered,
    }


def gather_from_all_processes(value) -> list:
    """`value` from every process of the default torch.distributed group, in rank order (a collective:
    every process must call it); just ``[value]`` when no group of several processes is running."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def write_run_stats(path: str | Path, run_stats: dict) -> Path:
    path = Path(path)
    if not path.name.endswith(FILE_SUFFIX):
        raise ValueError(f"a statistics file name must end in {FILE_SUFFIX!r}, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_stats, indent=2) + "\n")
    return path


def _mean(samples: list[dict], key: str) -> float | None:
    return sum(sample[key] for sample in samples) / len(samples) if samples else None
