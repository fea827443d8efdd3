"""The KV cache of a staged prefill: transformers' `DynamicCache` plus the layout of each stage.

Every decoder layer keeps its own key/value tensors, so the layers after a boundary hold fewer
tokens than those before it. Decoding needs to know, per stage, which cached slots are real and how
many prompt tokens were dropped before it (compact positions); that belongs to the cache, so it
lives here rather than in a table keyed by the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache


@dataclass
class StageLayout:
    """The prefill as layers `first_layer`.. of one stage hold it in their KV cache."""

    first_layer: int
    valid: torch.Tensor  # (B, T_s) bool: slot holds a real prompt token (not padding/filler)
    shift: torch.Tensor  # (B,) long: prompt tokens dropped before this stage (compact positions)
    image_tokens: torch.Tensor  # (B,) long: image tokens the stage's layers see (statistics)


@dataclass
class PrefillLayout:
    prefill_len: int  # T of the original prompt batch
    stages: list[StageLayout]


class StagedCache(DynamicCache):
    """A `DynamicCache` filled by a staged prefill; `layout` says what each stage's layers hold.

    The engine returns it in the model's output, where `generate()` (and any caller decoding by
    hand) takes the cache for the next step from."""

    layout: PrefillLayout | None = None

    def get_seq_length(self, *args, **kwargs) -> int:
        """Asked for no layer (as generate() and the engine ask): the sequence's logical length, the prompt
        before any drop plus the tokens decoded since, which a drop before layer 0 leaves no layer
        storing. Asked for a layer (as transformers' mask code asks): what that layer stores."""
        stored = super().get_seq_length(*args, **kwargs)
        if self.layout is None or args or kwargs:
            return stored
        first_stage = [stage for stage in self.layout.stages if stage.first_layer == 0][-1]  # the one layer 0 holds
        return stored - first_stage.valid.shape[1] + self.layout.prefill_len
