"""Reducers: the part of a method that turns scores into the next stage's tokens.

`SelectTop` keeps each sample's best-scored image tokens as they are (PyramidDrop, FastV, the random
control). A merging reducer also rewrites the kept slots' states, e.g. folding the dropped tokens into
them (VisionZip's contextual tokens, pooling); the staged prefill treats both alike: the selected
slots go on, with the states the reducer returns, in their original order. A reducer may also add
image tokens that were no slot before (SparseVLM's recycled tokens, `InsertedTokens`): they go right
after the sample's image tokens, numbered on from them (compact positions only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pdrop_eval.engine.scoring import PromptView, select_top_images


@dataclass(frozen=True)
class InsertedTokens:
    """New image tokens of each sample, in order, placed right after its last image slot (so after its
    last kept image token), with the positions that follow that token's; later tokens move up by them."""

    hidden: torch.Tensor  # (B, E, d)
    valid: torch.Tensor  # (B, E) bool: sample b adds the tokens where valid[b] (a prefix; E: the most any adds)


@dataclass(frozen=True)
class Reduction:
    selected: torch.Tensor  # (B, T_s) bool: the image slots that go on to the next stage
    hidden: torch.Tensor  # (B, T_s, d): every slot's state after the reduction (read for the kept slots)
    inserted: InsertedTokens | None = None  # image tokens added after the kept ones (counted in kept_counts)


class Reducer:
    """Chooses (and may rewrite) the image tokens that survive a boundary. A method whose reducer needs
    what its scorer saw gives both one shared object (see `MethodSpec.parts`)."""

    def attach(self, model) -> list:
        """Hooks it needs on the model, as handles with `remove()` (see `Scorer.attach`)."""
        return []

    def for_prompt(self, prompt: PromptView) -> Reducer:
        """The reducer for one prompt batch (this one, unless it needs per-prompt state)."""
        return self

    def reduce(self, *, hidden: torch.Tensor, scores: torch.Tensor, is_image: torch.Tensor, image_rank: torch.Tensor, keep: torch.Tensor) -> Reduction:
        """hidden (B, T_s, d) at the drop layer; scores (B, T_s) from the scorer; is_image (B, T_s) bool,
        the real image slots; image_rank (B, T_s) long, index in the sample's image block; keep (B,) long."""
        raise NotImplementedError


class SelectTop(Reducer):
    """Keep the `keep` best-scored image tokens of each sample unchanged (ties: the earlier slot)."""

    def reduce(self, *, hidden, scores, is_image, image_rank, keep) -> Reduction:
        return Reduction(selected=select_top_images(scores, is_image, keep), hidden=hidden)
