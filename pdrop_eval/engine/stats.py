"""Per-sample drop statistics of the last prefill (`DropHandle.last_stats`).

Importing this module loads no torch: readers of the record need only the dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SampleDropStats:
    """What one sample's prefill ran on.

    num_image_tokens: N, the sample's image tokens before any drop.
    image_tokens_per_layer, tokens_per_layer: one count per decoder layer (the latter counts text too).
    kept: one sorted tuple per stage boundary, indices into the sample's original image-token block.
    """

    num_image_tokens: int
    image_tokens_per_layer: tuple[int, ...]
    tokens_per_layer: tuple[int, ...]
    kept: tuple[tuple[int, ...], ...]


def sample_stats(
    *,
    num_layers: int,
    stage_first_layers: list[int],
    image_tokens: torch.Tensor,
    tokens: torch.Tensor,
    kept: torch.Tensor,
) -> list[SampleDropStats]:
    """One record per sample; the counts reach the host at the end, not per layer.

    stage_first_layers: the first decoder layer of each stage (S stages, the first one 0);
    image_tokens, tokens: (B, S) long, what every layer of a stage sees;
    kept: (B, S - 1, N_max) bool, per boundary the kept image tokens by their index in the image block.
    """
    batch = image_tokens.shape[0]
    lengths = [end - start for start, end in zip(stage_first_layers, [*stage_first_layers[1:], num_layers])]
    repeats = image_tokens.new_tensor(lengths)
    num_image = image_tokens[:, 0].tolist()  # the first stage's: N, even where a drop before layer 0 leaves it no layer
    image_counts = image_tokens.repeat_interleave(repeats, dim=1).tolist()  # (B, L)
    token_counts = tokens.repeat_interleave(repeats, dim=1).tolist()
    kept = kept.cpu()
    return [
        SampleDropStats(
            num_image_tokens=num_image[b],
            image_tokens_per_layer=tuple(image_counts[b]),
            tokens_per_layer=tuple(token_counts[b]),
            kept=tuple(tuple(stage.nonzero().flatten().tolist()) for stage in kept[b]),
        )
        for b in range(batch)
    ]
