"""Does a drop keep the tokens that hold the answer? Measured on an evaluated `pdrop_synth` run.

Every `pdrop_synth` row records the pixel boxes of the cells that decide its answer. For a run
evaluated with ``save_kept=true``, each local question's answer cell is mapped to its high-resolution
image token (`pdrop_eval.token_map`, the one place that knows the layout) and looked up in the tokens
kept after each stage. Chance is what keeping the same number of image tokens uniformly at random
would give: kept / all image tokens of the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.token_map import TokenRegion

TASK = "pdrop_synth"
SPATIAL_KINDS = ("patch", "grid")  # the full-resolution tokens of LLaVA-1.5 / LLaVA-NeXT


@dataclass(frozen=True)
class StageOverlap:
    stage: int  # 1-based
    questions: int  # local questions with kept tokens recorded
    answer_kept: float  # share of them whose answer cell's token survived this stage
    chance: float  # mean of kept / image tokens: the same share under a uniform draw


def answer_tokens(regions: Sequence[TokenRegion], boxes: Sequence[Sequence[float]]) -> set[int]:
    """Indices of the full-resolution image tokens whose cell centre lies inside one of `boxes`."""
    found = set()
    for index, region in enumerate(regions):
        if region.kind not in SPATIAL_KINDS or region.box is None:
            continue
        x = (region.box[0] + region.box[2]) / 2
        y = (region.box[1] + region.box[3]) / 2
        if any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in boxes):
            found.add(index)
    return found


def stage_overlaps(samples: Sequence[tuple[set[int], int, Sequence[Sequence[int]]]]) -> list[StageOverlap]:
    """Per stage, from (answer token indices, image tokens, kept indices per stage) of each question."""
    if not samples:
        raise ValueError("no local question with recorded kept tokens")
    stages = {len(kept) for _, _, kept in samples}
    if len(stages) != 1:
        raise ValueError(f"samples disagree on the number of drop stages: {sorted(stages)}")
    overlaps = []
    for stage in range(stages.pop()):
        hits = [bool(answer & set(kept[stage])) for answer, _, kept in samples]
        chance = [len(kept[stage]) / total for _, total, kept in samples]
        overlaps.append(StageOverlap(stage + 1, len(samples), sum(hits) / len(hits), sum(chance) / len(chance)))
    return overlaps


def measure_run(run_dir: str | Path, data: str | Path) -> tuple[str, list[StageOverlap]]:
    """(drop description, per-stage overlaps) of the one pdrop_synth run with kept tokens under `run_dir`,
    its documents read from `data` (the test split it evaluated)."""
    import pandas as pd

    from pdrop_eval.compat import ensure_torchvision_importable
    from pdrop_eval.stats import FILE_SUFFIX, read_run_stats
    from pdrop_eval.token_map import image_token_regions

    ensure_torchvision_importable()
    from transformers import AutoProcessor

    runs = [read_run_stats(path) for path in sorted(Path(run_dir).rglob(f"*{FILE_SUFFIX}"))]
    runs = [run for run in runs if any(sample.task == TASK and sample.stats.kept is not None for sample in run.samples)]
    if len(runs) != 1:
        raise ValueError(f"expected one {TASK} run evaluated with save_kept=true under {run_dir}, found {len(runs)}")
    (run,) = runs
    if run.architecture != "llava_next":
        raise ValueError(f"{TASK} is laid out for LLaVA-NeXT; the run under {run_dir} is {run.architecture}")
    documents = pd.read_parquet(data).set_index("id")
    processor = AutoProcessor.from_pretrained(run.pretrained)
    samples = []
    for sample in run.samples:
        if sample.task != TASK or sample.stats.kept is None:
            continue
        doc = documents.loc[int(sample.doc_id)]
        if not doc["local"]:
            continue
        regions = image_token_regions(processor, [(int(doc["width"]), int(doc["height"]))])
        if len(regions) != sample.stats.num_image_tokens:
            raise ValueError(f"doc {sample.doc_id}: the run had {sample.stats.num_image_tokens} image tokens, {data} maps to {len(regions)}")
        answer = answer_tokens(regions, [list(box) for box in doc["boxes"]])
        if not answer:
            raise ValueError(f"doc {sample.doc_id}: no image token lies in the answer boxes {doc['boxes']}")
        samples.append((answer, sample.stats.num_image_tokens, sample.stats.kept))
    return run.drop.describe(), stage_overlaps(samples)
