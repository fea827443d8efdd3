"""Staged decoder forward: the stock decoder layers, with image tokens dropped between stages.

Prefill runs layer by layer. At each boundary the batch is re-packed: every sample keeps its text
tokens and its best-ranked image tokens in their original order, left-padded to the longest
sample (ragged anyres batches), so each stage is an ordinary padded batch with one causal mask.
The per-stage layout (which slots are real, how many tokens were dropped before the stage) is kept
so that cached decoding attends each layer's pruned KV cache with the right mask and positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from pdrop_eval.engine.config import Boundary, DropConfig
from pdrop_eval.engine.scoring import ranking_for, select_top_images


@dataclass
class StageLayout:
    """The prefill as layers `first_layer`.. of one stage hold it in their KV cache."""

    first_layer: int
    valid: torch.Tensor  # (B, T_s) bool: slot holds a real prompt token (not padding/filler)
    shift: torch.Tensor  # (B,) long: prompt tokens dropped before this stage (compact positions)


@dataclass
class PrefillState:
    prefill_len: int  # T of the original prompt batch
    stages: list[StageLayout]


@dataclass
class PrefillResult:
    hidden: torch.Tensor  # (B, T, d) final-layer output scattered back to original positions
    state: PrefillState
    stats: list[dict]


def _stage_mask(lm: nn.Module, hidden: torch.Tensor, valid_2d: torch.Tensor, cache, layer_idx: int):
    """The attention mask of one stage, in whatever form the configured backend wants."""
    return create_causal_mask(
        config=lm.config,
        inputs_embeds=hidden,
        attention_mask=valid_2d,
        past_key_values=cache,
        position_ids=None,  # positions may be non-contiguous by design: never read them as packing
        layer_idx=layer_idx,
    )


def _run_layers(lm, layers, hidden, mask, position_embeddings, cache, use_cache, layer_kwargs):
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=None,  # RoPE comes through position_embeddings (flash-attn would read ids as packing)
            past_key_values=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **layer_kwargs,
        )
    return hidden


def staged_prefill(
    lm: nn.Module,
    config: DropConfig,
    boundaries: list[Boundary],
    hidden: torch.Tensor,
    valid: torch.Tensor,
    positions: torch.Tensor,
    is_image: torch.Tensor,
    query_index: torch.Tensor,
    cache,
    use_cache: bool,
    layer_kwargs: dict,
    *,
    token_ids: torch.Tensor,
) -> PrefillResult:
    """hidden (B, T, d) embeddings; valid, is_image (B, T) bool; positions (B, T) long RoPE positions;
    query_index (B,) long: the token whose attention ranks the image tokens; token_ids (B, T) long."""
    batch, seq_len, width = hidden.shape
    device = hidden.device
    num_layers = len(lm.layers)

    origin = torch.arange(seq_len, device=device).expand(batch, seq_len)  # slot -> original index
    image_rank = is_image.long().cumsum(1) - 1  # index into the sample's image-token block
    num_image = is_image.sum(1)
    keep_per_boundary = torch.tensor(
        [config.kept_counts(n) for n in num_image.tolist()], dtype=torch.long, device=device
    ).view(batch, len(boundaries))
    shift = torch.zeros(batch, dtype=torch.long, device=device)
    # Outputs by original index; row `seq_len` is a sink for filler slots.
    outputs = hidden.new_zeros(batch, seq_len + 1, width)

    image_counts = torch.zeros(batch, num_layers, dtype=torch.long)
    token_counts = torch.zeros(batch, num_layers, dtype=torch.long)
    kept_lists: list[list[list[int]]] = [[] for _ in range(batch)]

    stages = [StageLayout(0, valid, shift)]
    mask = _stage_mask(lm, hidden, valid, cache, 0)
    position_embeddings = lm.rotary_emb(hidden, positions)
    boundary_iter = iter(enumerate(boundaries))
    stage_index, boundary = next(boundary_iter, (None, None))
    context = valid & (origin <= query_index.unsqueeze(1))  # what the query token sees
    ranking = ranking_for(config, token_ids=token_ids, context=context, is_image=is_image)
    scores = None

    for layer_idx, layer in enumerate(lm.layers):
        if boundary is not None and boundary.score_layer == layer_idx:
            query_slot = (origin == query_index.unsqueeze(1)).long().argmax(1)
            key_mask = valid & (origin <= query_index.unsqueeze(1))
            scores = ranking.scores(
                layer=layer, hidden=hidden, position_embeddings=position_embeddings, key_mask=key_mask,
                query_slot=query_slot, image_rank=image_rank,
            )

        if boundary is not None and boundary.drop_layer == layer_idx:
            selected = select_top_images(scores, is_image & valid, keep_per_boundary[:, stage_index])
            keep = valid & (~is_image | selected)
            dropped = valid & ~keep
            for b in range(batch):
                kept_lists[b].append(sorted(image_rank[b][selected[b]].tolist()))

            outputs.scatter_(1, torch.where(valid, origin, seq_len).unsqueeze(-1).expand(-1, -1, width), hidden)
            if config.position_mode == "compact":
                positions = positions - dropped.long().cumsum(1)
            shift = shift + dropped.sum(1)

            # Re-pack: a stable sort puts dropped/filler slots first, kept ones last in original order.
            new_len = int(keep.sum(1).max())
            order = torch.sort(keep.long(), dim=1, stable=True).indices[:, keep.shape[1] - new_len :]
            valid = keep.gather(1, order)
            origin = origin.gather(1, order)
            positions = positions.gather(1, order)
            is_image = is_image.gather(1, order)
            image_rank = image_rank.gather(1, order)
            hidden = hidden.gather(1, order.unsqueeze(-1).expand(-1, -1, width)) * valid.unsqueeze(-1)

            stages.append(StageLayout(layer_idx, valid, shift))
            mask = _stage_mask(lm, hidden, valid, cache, layer_idx)
            position_embeddings = lm.rotary_emb(hidden, positions)
            stage_index, boundary = next(boundary_iter, (None, None))

        image_counts[:, layer_idx] = (is_image & valid).sum(1).cpu()
        token_counts[:, layer_idx] = valid.sum(1).cpu()
        hidden = _run_layers(lm, [layer], hidden, mask, position_embeddings, cache, use_cache, layer_kwargs)

    outputs.scatter_(1, torch.where(valid, origin, seq_len).unsqueeze(-1).expand(-1, -1, width), hidden)
    stats = [
        {
            "num_image_tokens": int(num_image[b]),
            "image_tokens_per_layer": image_counts[b].tolist(),
            "tokens_per_layer": token_counts[b].tolist(),
            "kept": kept_lists[b],
        }
        for b in range(batch)
    ]
    return PrefillResult(outputs[:, :seq_len], PrefillState(seq_len, stages), stats)


def staged_decode(
    lm: nn.Module,
    config: DropConfig,
    state: PrefillState,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    cache,
    layer_kwargs: dict,
) -> torch.Tensor:
    """New tokens (B, q, d) after a staged prefill: each stage attends its own pruned cache.

    attention_mask (B, past + q) is generate()'s 2D mask over the original sequence; positions
    (B, q) are original positions.
    """
    new_mask = attention_mask[:, state.prefill_len :].bool()  # decode tokens so far plus the new ones
    ends = [stage.first_layer for stage in state.stages[1:]] + [len(lm.layers)]
    for stage, end in zip(state.stages, ends):
        stage_mask_2d = torch.cat([stage.valid, new_mask], dim=1)
        mask = _stage_mask(lm, hidden, stage_mask_2d, cache, stage.first_layer)
        stage_positions = positions - stage.shift.unsqueeze(1) if config.position_mode == "compact" else positions
        position_embeddings = lm.rotary_emb(hidden, stage_positions)
        layers = lm.layers[stage.first_layer : end]
        hidden = _run_layers(lm, layers, hidden, mask, position_embeddings, cache, True, layer_kwargs)
    return hidden
