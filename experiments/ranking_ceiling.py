"""How much of a drop's loss on pdrop_synth is its ranking's fault: the drop run with its ranking told,
at the boundaries named by --told, which image tokens hold the answer.

Every test question's answer cells (the counted objects, for a counting question) are mapped to their
image tokens (`pdrop_eval.answer_overlap.document_answer_tokens`); at a told boundary those tokens rank
above every other image token and the rest keep the method's own attention order, so the kept counts,
the positions and everything else stay the drop's. With no boundary told this is the drop itself (the
same greedy answers as `lmms-eval --model llava_next_pdrop`); told at every boundary, the score is what a
ranking that never loses the answer's tokens reaches within the drop's token budget. A measurement script
(checkpoints/README.md, "What a ranking told the answer would score"), not part of the package.

Usage, from the repository root:
    python experiments/ranking_ceiling.py [--pretrained DIR] [--drop OPTIONS] [--told 1,2,3] [--limit N]
"""

import argparse
import io

import pandas as pd
import torch
from PIL import Image

from pdrop_eval.compat import ensure_torchvision_importable

ensure_torchvision_importable()
from pdrop_eval.answer_overlap import document_answer_tokens, stage_overlaps  # noqa: E402
from pdrop_eval.checkpoints import shipped_checkpoint  # noqa: E402
from pdrop_eval.engine import scoring  # noqa: E402
from pdrop_eval.engine.config import DropConfig  # noqa: E402
from pdrop_eval.synth import DEFAULT_FOLDER, exact_match  # noqa: E402
from pdrop_eval.wrapper import LlavaRunner, Query  # noqa: E402


class ToldScorer(scoring.AttentionScorer):
    """The attention scorer, with the current question's answer tokens first at the told boundaries."""

    def __init__(self, told: frozenset):
        self.told = told  # 1-based boundaries that are told
        self.answer = torch.zeros(0, dtype=torch.long)  # image-block indices of the question being answered

    def scores(self, view: scoring.StageView) -> torch.Tensor:
        scores = super().scores(view)  # head-averaged attention, each in [0, 1]
        if view.boundary + 1 in self.told:
            scores = scores + 2.0 * torch.isin(view.image_rank, self.answer.to(view.image_rank.device))
        return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", default=str(shipped_checkpoint("vanilla")))
    parser.add_argument("--drop", default="method=pyramid,layer_list=8;16;24,lambda=0.5", help="an attention-ranked drop (default: %(default)s)")
    parser.add_argument("--told", default="", help="1-based boundaries whose ranking is told the answer, e.g. 1,2,3 (default: none)")
    parser.add_argument("--data", default=str(DEFAULT_FOLDER / "test.parquet"))
    parser.add_argument("--limit", type=int, default=None, help="the first N questions only")
    args = parser.parse_args()

    drop = DropConfig.from_args(args.drop)
    if not isinstance(drop.parts()[0], scoring.AttentionScorer):
        raise SystemExit(f"--drop must be ranked by attention (PyramidDrop, FastV); {drop.describe()} is not")
    scorer = ToldScorer(frozenset(int(item) for item in args.told.split(",") if item))
    documents = pd.read_parquet(args.data).head(args.limit)
    runner = LlavaRunner.load(args.pretrained, drop=drop, scorer=scorer)
    correct = {True: 0, False: 0}  # by doc["local"]
    local_kept = []  # (answer tokens, image tokens, kept per stage) of each local question
    for done, doc in enumerate(documents.itertuples(index=False), start=1):
        image = Image.open(io.BytesIO(doc.image))
        query = Query.from_text(doc.question, [image], label=f"{args.data} doc {doc.id}")
        num_image_tokens = int((runner._encode([query], [runner.render(query)])["input_ids"] == runner.model.config.image_token_index).sum())
        answer = document_answer_tokens(runner.processor, doc.id, doc.width, doc.height, doc.boxes, num_image_tokens, args.data)
        scorer.answer = torch.tensor(sorted(answer))
        (generation,) = runner.generate_batch([query], max_new_tokens=8, stop=["\n"])  # the task's settings
        correct[bool(doc.local)] += exact_match(generation.text, doc.answer)
        if doc.local:
            local_kept.append((answer, num_image_tokens, generation.stats.kept))
        if done % 50 == 0 or done == len(documents):
            print(f"{done}/{len(documents)} questions", flush=True)
    counts = documents["local"].value_counts().to_dict()

    def share(local):
        return f"{100 * correct[local] / counts[local]:.1f}" if counts.get(local) else "-"

    print(f"{args.pretrained}, {drop.describe()}, told at boundaries {sorted(scorer.told) or 'none'}:")
    print(f"exact match: all {100 * sum(correct.values()) / len(documents):.1f}, local {share(True)}, whole image {share(False)}")
    for stage in stage_overlaps(local_kept) if local_kept else ():
        print(f"answer kept after boundary {stage.stage}: {100 * stage.answer_kept:.1f}% of local questions (chance {100 * stage.chance:.1f}%)")


if __name__ == "__main__":
    main()
