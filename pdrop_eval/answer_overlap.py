"""Does a drop keep the tokens that hold the answer? Measured on an evaluated `pdrop_synth` run.

Every `pdrop_synth` row records the pixel boxes of the cells that decide its answer. For a run
evaluated with ``save_kept=true``, each local question's answer cell is mapped to its high-resolution
image token (`pdrop_eval.token_map`, the one place that knows the layout) and looked up in the tokens
kept after each stage. Chance is what keeping the same number of image tokens uniformly at random
would give: kept / all image tokens of the sample.

`rank_layers` asks the question before any drop: on the unmodified model, at every decoder layer,
does the answer cell's token rank among the best-scored image tokens by the score a PyramidDrop
boundary placed at that layer would use (the engine's own `query_attention`, last prompt token)?
It shows at which layers a model's ranking can find the answer, i.e. where boundaries can go.
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


@dataclass(frozen=True)
class LayerRanking:
    layer: int  # 0-based decoder layer whose input and attention weights score the image tokens
    questions: int
    in_top: dict[float, float]  # fraction f of the image tokens -> share of questions whose answer ranks in the best f


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


def document_answer_tokens(processor, doc_id, width: int, height: int, boxes, num_image_tokens: int, data) -> set[int]:
    """The answer tokens of one pdrop_synth document of `data`, after checking that its token map has the
    `num_image_tokens` the model saw and that some token lies in the answer boxes."""
    from pdrop_eval.token_map import image_token_regions

    regions = image_token_regions(processor, [(int(width), int(height))])
    if len(regions) != num_image_tokens:
        raise ValueError(f"doc {doc_id}: the model saw {num_image_tokens} image tokens, {data} maps to {len(regions)}")
    answer = answer_tokens(regions, [list(box) for box in boxes])
    if not answer:
        raise ValueError(f"doc {doc_id}: no image token lies in the answer boxes {list(boxes)}")
    return answer


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


def _local_questions(data: str | Path, limit: int | None):
    import pandas as pd

    documents = pd.read_parquet(data)
    documents = documents[documents["local"]]
    if limit is not None:
        documents = documents.head(limit)
    if documents.empty:
        raise ValueError(f"{data} holds no local question")
    return documents


def rank_layers(pretrained: str | Path, data: str | Path, fractions=(0.5, 0.25, 0.125), limit: int | None = None, progress=None) -> list[LayerRanking]:
    """Per decoder layer of the unmodified `pretrained` (LLaVA-NeXT), the share of `data`'s local
    questions (the first `limit`) whose answer cell's token is among the best `fraction` of the image
    tokens, ranked by the head-averaged attention of the last prompt token at that layer (SPEC 2)."""
    import io

    import torch
    from PIL import Image

    from pdrop_eval.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from pdrop_eval.engine.scoring import query_attention
    from pdrop_eval.models import family_of_model
    from pdrop_eval.wrapper import LlavaRunner, Query

    documents = _local_questions(data, limit)
    runner = LlavaRunner.load(str(pretrained))
    if runner.architecture != "llava_next":
        raise ValueError(f"{TASK} is laid out for LLaVA-NeXT; {pretrained} is {runner.architecture}")
    family = family_of_model(runner.model)
    language_model = family.language_model(runner.model)
    image_token_ids = torch.tensor(family.image_token_ids(runner.model.config))
    hits = torch.zeros(len(language_model.layers), len(fractions))
    for done, doc in enumerate(documents.itertuples(index=False), start=1):
        query = Query.from_text(doc.question, [Image.open(io.BytesIO(doc.image))], label=f"{data} doc {doc.id}")
        inputs = runner._encode([query], [runner.render(query)])
        with torch.no_grad():
            hidden_states = runner.model(**inputs, output_hidden_states=True, use_cache=False).hidden_states  # layer l's input at l
        image_slots = torch.isin(inputs["input_ids"][0], image_token_ids).nonzero().flatten()  # (N,)
        answer = document_answer_tokens(runner.processor, doc.id, doc.width, doc.height, doc.boxes, len(image_slots), data)
        seq_len = inputs["input_ids"].shape[1]
        # One sample without padding: the last prompt token is the query row and sees every key.
        query_inputs = {
            "position_embeddings": language_model.rotary_emb(hidden_states[0], torch.arange(seq_len).unsqueeze(0)),
            "apply_rotary": family.apply_rotary,
            "key_mask": torch.ones(1, 1, seq_len, dtype=torch.bool),
            "query_slots": torch.tensor([[seq_len - 1]]),
            "query_valid": torch.ones(1, 1, dtype=torch.bool),
        }
        for layer_idx, layer in enumerate(language_model.layers):
            scores = query_attention(layer, hidden_states[layer_idx], **query_inputs)[0, image_slots]  # (N,)
            order = scores.argsort(descending=True, stable=True).tolist()  # ties to the earlier token, as the drop
            best = min(order.index(token) for token in answer)
            for column, fraction in enumerate(fractions):
                hits[layer_idx, column] += best < int(len(image_slots) * fraction)
        if progress:
            progress(done, len(documents))
    return [
        LayerRanking(layer, len(documents), {fraction: hits[layer, column].item() / len(documents) for column, fraction in enumerate(fractions)})
        for layer in range(hits.shape[0])
    ]


def measure_run(run_dir: str | Path, data: str | Path) -> tuple[str, list[StageOverlap]]:
    """(drop description, per-stage overlaps) of the one pdrop_synth run with kept tokens under `run_dir`,
    its documents read from `data` (the test split it evaluated)."""
    import pandas as pd

    from pdrop_eval.compat import ensure_torchvision_importable
    from pdrop_eval.stats import FILE_SUFFIX, read_run_stats

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
        answer = document_answer_tokens(processor, sample.doc_id, doc["width"], doc["height"], doc["boxes"], sample.stats.num_image_tokens, data)
        samples.append((answer, sample.stats.num_image_tokens, sample.stats.kept))
    return run.drop.describe(), stage_overlaps(samples)
