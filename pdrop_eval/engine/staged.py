"""Staged decoder forward: the stock decoder layers, with image tokens dropped between stages.

Prefill runs stage by stage. At each boundary the batch is re-packed: every sample keeps its text
tokens and its best-ranked image tokens in their original order, left-padded to the longest
sample (ragged anyres batches), so each stage is an ordinary padded batch with one causal mask.
The per-stage layout (which slots are real, how many tokens were dropped before the stage) is kept
so that cached decoding attends each layer's pruned KV cache with the right mask and positions.
Its steps carry torch-profiler labels (`pdrop::stage_inputs`, `pdrop::run_layers`, `pdrop::score`),
so a profile shows where the time goes without patching anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.profiler import record_function
from transformers.masking_utils import create_causal_mask

from pdrop_eval.engine.cache import PrefillLayout, StageLayout
from pdrop_eval.engine.config import Boundary, DropConfig
from pdrop_eval.engine.hf_binding import cache_parameter
from pdrop_eval.engine.reducers import InsertedTokens, Reducer
from pdrop_eval.engine.scoring import PromptView, Scorer, StageView
from pdrop_eval.engine.stats import SampleDropStats, sample_stats


@dataclass(frozen=True)
class Slots:
    """The tokens of one stage's padded batch, one entry per slot; re-packed together at a boundary."""

    hidden: torch.Tensor  # (B, T_s, d) the input of the next decoder layer
    valid: torch.Tensor  # (B, T_s) bool: slot holds a real prompt token (not padding/filler)
    origin: torch.Tensor  # (B, T_s) long: the token's index in the original sequence
    positions: torch.Tensor  # (B, T_s) long RoPE positions, or (B, T_s, 3) (t, h, w) M-RoPE ids
    is_image: torch.Tensor  # (B, T_s) bool
    image_rank: torch.Tensor  # (B, T_s) long: index into the sample's image-token block (image slots; -1: an inserted token)

    @classmethod
    def from_prompt(cls, *, hidden: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, is_image: torch.Tensor) -> Slots:
        batch, seq_len, _ = hidden.shape
        return cls(
            hidden=hidden,
            valid=valid,
            origin=torch.arange(seq_len, device=hidden.device).expand(batch, seq_len),
            positions=positions,
            is_image=is_image,
            image_rank=is_image.long().cumsum(1) - 1,
        )

    def keep_only(self, keep: torch.Tensor, new_len: int, *, sequence_order: torch.Tensor | None = None) -> Slots:
        """The slots marked in `keep` (B, T_s), in their order, left-padded to `new_len`: the longest
        sample's kept count, which the caller knows without reading `keep` back from the device.
        sequence_order (B, T_s) long: where each slot goes in the sequence, if not where it is."""
        # A stable sort puts dropped and filler slots first, kept ones last in their original order.
        key = keep.long() if sequence_order is None else torch.where(keep, sequence_order, -1)
        order = torch.sort(key, dim=1, stable=True).indices[:, keep.shape[1] - new_len :]
        valid = keep.gather(1, order)
        hidden = _gather_slots(self.hidden, order)
        # Filler slots would hold copies of dropped tokens. The mask hides them from every real token,
        # but only through a zero attention weight, and 0 * inf is NaN: they must hold finite values
        # whatever was dropped. Zeros are that, and make the padding independent of the drop.
        hidden = hidden * valid.unsqueeze(-1)
        return Slots(
            hidden=hidden,
            valid=valid,
            origin=self.origin.gather(1, order),
            positions=_gather_slots(self.positions, order),
            is_image=self.is_image.gather(1, order),
            image_rank=self.image_rank.gather(1, order),
        )


def _gather_slots(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """values (B, T, ...) at the slots `order` (B, T') along dim 1, whatever follows per slot."""
    index = order.view(*order.shape, *[1] * (values.ndim - 2)).expand(-1, -1, *values.shape[2:])
    return values.gather(1, index)


def rotary_embeddings(lm: nn.Module, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's RoPE (cos, sin), each (B, T, head_dim), at `positions`: (B, T), or (B, T, 3) M-RoPE
    ids, which the rotary embedding takes axis first (3, B, T) and composes into one (cos, sin)."""
    return lm.rotary_emb(hidden, positions if positions.ndim == 2 else positions.permute(2, 0, 1))


@dataclass(frozen=True)
class QueryRows:
    """The tokens whose attention ranks the image tokens, by original index, per sample."""

    index: torch.Tensor  # (B, Q) long
    valid: torch.Tensor  # (B, Q) bool; a sample without any valid row is not dropped


def _stage_layout(slots: Slots, *, first_layer: int, shift: torch.Tensor) -> StageLayout:
    return StageLayout(first_layer=first_layer, valid=slots.valid, shift=shift, image_tokens=(slots.is_image & slots.valid).sum(1))


@dataclass
class PrefillResult:
    hidden: torch.Tensor  # (B, T, d) final-layer output scattered back to original positions
    layout: PrefillLayout
    stats: list[SampleDropStats]


@dataclass(frozen=True)
class _StageInputs:
    """What every layer of one stage is given besides the hidden states."""

    mask: object  # whatever form the attention backend wants (tensor, BlockMask or None)
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # RoPE (cos, sin), each (B, T_s, head_dim)


def _stage_inputs(lm: nn.Module, *, hidden: torch.Tensor, valid_2d: torch.Tensor | None, positions: torch.Tensor, cache, first_layer: int) -> _StageInputs:
    """valid_2d None: the caller knows every slot is real. Transformers reads a given 2D mask back from
    the device to see whether it may skip it; without one there is nothing to read."""
    with record_function("pdrop::stage_inputs"):
        mask = create_causal_mask(
            config=lm.config,
            inputs_embeds=hidden,
            attention_mask=valid_2d,
            **{cache_parameter(create_causal_mask): cache},
            position_ids=None,  # positions may be non-contiguous by design: never read them as packing
            # The layers of a stage hold a shorter KV cache than the layers before it; the mask must be
            # sized against this stage's own cache, not the first layer's (transformers' default).
            layer_idx=first_layer,
        )
        return _StageInputs(mask=mask, position_embeddings=rotary_embeddings(lm, hidden, positions))


def _run_layers(lm: nn.Module, layers: range, hidden: torch.Tensor, *, inputs: _StageInputs, cache, use_cache: bool, layer_kwargs: dict) -> torch.Tensor:
    with record_function("pdrop::run_layers"):
        for layer_idx in layers:
            layer = lm.layers[layer_idx]
            hidden = layer(
                hidden,  # positional: the gradient-checkpointing wrapper needs it so
                attention_mask=inputs.mask,
                position_ids=None,  # RoPE comes through position_embeddings (flash-attn would read ids as packing)
                **{cache_parameter(type(layer).forward): cache},
                use_cache=use_cache,
                position_embeddings=inputs.position_embeddings,
                **layer_kwargs,
            )
        return hidden


def _query_context(slots: Slots, queries: QueryRows) -> torch.Tensor:
    """(B, T) bool: the real tokens up to each sample's last query row (what the query rows see)."""
    last_query = torch.where(queries.valid, queries.index, -1).amax(1, keepdim=True)  # (B, 1)
    return slots.valid & (slots.origin <= last_query)


def _stage_view(
    boundary: int, lm: nn.Module, layer: nn.Module | None, slots: Slots, drop_hidden: torch.Tensor, queries: QueryRows, position_embeddings, apply_rotary
) -> StageView:
    """What a scorer sees at `boundary`: `layer`'s input (`slots.hidden`) and the drop layer's input over
    the current slots, and the query rows."""
    query_slots = (slots.origin.unsqueeze(1) == queries.index.unsqueeze(2)).long().argmax(2)  # (B, Q)
    key_mask = slots.valid.unsqueeze(1) & (slots.origin.unsqueeze(1) <= queries.index.unsqueeze(2))  # (B, Q, T_s)
    return StageView(
        boundary=boundary,
        language_model=lm,
        layer=layer,
        hidden=slots.hidden,
        drop_hidden=drop_hidden,
        positions=slots.positions,
        position_embeddings=position_embeddings,
        apply_rotary=apply_rotary,
        key_mask=key_mask,
        query_slots=query_slots,
        query_valid=queries.valid,
        is_image=slots.is_image & slots.valid,
        image_rank=slots.image_rank,
    )


def _kept_counts(config: DropConfig, slots: Slots, *, ranked: torch.Tensor, num_stages: int) -> tuple[torch.Tensor, list[list[int]]]:
    """(B, S) image tokens kept after each boundary (a sample without query rows keeps them all), and for
    each stage after a boundary the real tokens of every sample (text is never dropped). Read from the
    device once, before any layer: every later stage's length is then known on the host, and no
    boundary waits for the layers queued before it."""
    num_image = slots.is_image.sum(1)
    layout = torch.stack([num_image, (slots.valid & ~slots.is_image).sum(1), ranked.long()], dim=1).tolist()  # (B, 3)
    counts = [config.kept_counts(images) if has_queries else [images] * num_stages for images, _, has_queries in layout]
    stage_tokens = [[text + kept[stage] for (_, text, _), kept in zip(layout, counts)] for stage in range(num_stages)]
    return torch.tensor(counts, dtype=torch.long, device=num_image.device), stage_tokens


def _store_outputs(outputs: torch.Tensor, slots: Slots) -> torch.Tensor:
    """Write each real slot's hidden state at its original index; filler slots and inserted tokens (no
    original index) go to the last (sink) row."""
    own = slots.valid & ~(slots.is_image & (slots.image_rank < 0))
    index = torch.where(own, slots.origin, outputs.shape[1] - 1)
    return outputs.scatter(1, index.unsqueeze(-1).expand_as(slots.hidden), slots.hidden)


def _kept_image_mask(slots: Slots, selected: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, seq_len) bool: the selected image tokens by their index in the sample's image block."""
    index = torch.where(selected & (slots.image_rank >= 0), slots.image_rank, seq_len)  # inserted tokens are none of them
    kept = torch.zeros(selected.shape[0], seq_len + 1, dtype=torch.bool, device=selected.device)
    return kept.scatter(1, index, True)[:, :seq_len]


def _drop(slots: Slots, *, selected: torch.Tensor, inserted: InsertedTokens | None, position_mode: str, new_len: int) -> tuple[Slots, torch.Tensor]:
    """Keep the text and the `selected` image slots, and add the `inserted` tokens after them (`new_len`:
    the most tokens any sample has then). Returns the next stage's slots and (B,) the number of tokens
    it holds fewer (dropped less inserted)."""
    keep = slots.valid & (~slots.is_image | selected)
    dropped = slots.valid & ~keep
    positions = slots.positions
    if position_mode == "compact":
        # Each kept token moves up by the tokens dropped before it: the kept sequence is numbered
        # contiguously, as if the dropped tokens had never been there (the PyramidDrop reference).
        positions = positions - dropped.long().cumsum(1)
    slots, removed, sequence_order = replace(slots, positions=positions), dropped.sum(1), None
    if inserted is not None:
        if position_mode != "compact":
            raise ValueError(f"inserted tokens are numbered on from the kept image tokens, which needs compact positions, not {position_mode!r}")
        slots, keep, sequence_order = _insert_after_images(slots, keep, inserted)
        removed = removed - inserted.valid.sum(1)
    return slots.keep_only(keep, new_len, sequence_order=sequence_order), removed


def _insert_after_images(slots: Slots, keep: torch.Tensor, inserted: InsertedTokens) -> tuple[Slots, torch.Tensor, torch.Tensor]:
    """`slots` followed by the `inserted` tokens, with their `keep` and where each goes in the sequence:
    right after the sample's last image slot, numbered on from its (compact) position; the slots after
    it move up by the sample's inserted count. An inserted token takes that slot's origin (what causal
    masks compare) and image rank -1 (it is none of the original image tokens)."""
    batch, seq_len = keep.shape
    rows, slot_index = torch.arange(batch, device=keep.device), torch.arange(seq_len, device=keep.device)
    anchor = torch.where(slots.is_image, slot_index, 0).amax(1)  # (B,) the sample's last image slot
    number = inserted.valid.long().cumsum(1)  # (B, E): the j-th inserted token is numbered anchor + j + 1
    moved = (slot_index > anchor.unsqueeze(1)).long() * inserted.valid.sum(1, keepdim=True)  # (B, T)

    def per_slot(offset: torch.Tensor) -> torch.Tensor:  # an offset for every position id of a slot (RoPE axes)
        return offset.view(*offset.shape, *[1] * (slots.positions.ndim - 2))

    joined = Slots(
        hidden=torch.cat([slots.hidden, inserted.hidden.to(slots.hidden.dtype)], 1),
        valid=torch.cat([slots.valid, inserted.valid], 1),
        origin=torch.cat([slots.origin, slots.origin[rows, anchor].unsqueeze(1).expand_as(number)], 1),
        positions=torch.cat([slots.positions + per_slot(moved), slots.positions[rows, anchor].unsqueeze(1) + per_slot(number)], 1),
        is_image=torch.cat([slots.is_image, torch.ones_like(inserted.valid)], 1),
        image_rank=torch.cat([slots.image_rank, torch.full_like(number, -1)], 1),
    )
    sequence_order = torch.cat([2 * slot_index.expand(batch, -1), (2 * anchor + 1).unsqueeze(1).expand_as(number)], 1)
    return joined, torch.cat([keep, inserted.valid], 1), sequence_order


def staged_prefill(
    lm: nn.Module,
    *,
    config: DropConfig,
    boundaries: list[Boundary],
    slots: Slots,
    queries: QueryRows,
    cache,
    use_cache: bool,
    layer_kwargs: dict,
    token_ids: torch.Tensor,
    scorer: Scorer,
    reducer: Reducer,
    apply_rotary,
) -> PrefillResult:
    """Run the prompt `slots` through all decoder layers, dropping image tokens at each boundary.

    token_ids (B, T) long: the prompt's ids (the random control seeds each sample's draw with them);
    scorer ranks the image tokens at each boundary and reducer keeps (or merges) them; apply_rotary:
    the model family's rotary."""
    batch, seq_len, width = slots.hidden.shape
    num_layers = len(lm.layers)
    kept_counts, stage_tokens = _kept_counts(config, slots, ranked=queries.valid.any(1), num_stages=len(boundaries))
    # Outputs by original index; row `seq_len` is a sink for filler slots.
    outputs = slots.hidden.new_zeros(batch, seq_len + 1, width)
    stages = [_stage_layout(slots, first_layer=0, shift=torch.zeros(batch, dtype=torch.long, device=slots.valid.device))]
    kept = []  # per boundary (B, seq_len) bool, by index in the image block

    inputs = _stage_inputs(lm, hidden=slots.hidden, valid_2d=slots.valid, positions=slots.positions, cache=cache, first_layer=0)
    run = {"cache": cache, "use_cache": use_cache, "layer_kwargs": layer_kwargs}
    prompt = PromptView(token_ids=token_ids, context=_query_context(slots, queries), is_image=slots.is_image)
    scorer, reducer = scorer.for_prompt(prompt), reducer.for_prompt(prompt)
    next_layer = 0
    for stage_index, boundary in enumerate(boundaries):
        score_at = boundary.drop_layer if boundary.score_layer is None else boundary.score_layer
        score_input = _run_layers(lm, range(next_layer, score_at), slots.hidden, inputs=inputs, **run)
        hidden = _run_layers(lm, range(score_at, boundary.drop_layer), score_input, inputs=inputs, **run)
        layer = None if boundary.score_layer is None else lm.layers[boundary.score_layer]
        view = _stage_view(stage_index, lm, layer, replace(slots, hidden=score_input), hidden, queries, inputs.position_embeddings, apply_rotary)
        with record_function("pdrop::score"):
            scores = scorer.scores(view)
        reduction = reducer.reduce(
            hidden=hidden, scores=scores, is_image=slots.is_image & slots.valid, image_rank=slots.image_rank, keep=kept_counts[:, stage_index]
        )
        slots, selected = replace(slots, hidden=reduction.hidden), reduction.selected
        kept.append(_kept_image_mask(slots, selected, seq_len))

        # A dropped token skips the remaining layers, so its output (the language model returns a
        # state per input position) is its hidden state at the drop layer; kept tokens are written
        # again later. No text position reads it: only image tokens are dropped.
        outputs = _store_outputs(outputs, slots)
        tokens = stage_tokens[stage_index]
        slots, dropped = _drop(slots, selected=selected, inserted=reduction.inserted, position_mode=config.position_mode, new_len=max(tokens))

        stages.append(_stage_layout(slots, first_layer=boundary.drop_layer, shift=stages[-1].shift + dropped))
        inputs = _stage_inputs(
            lm,
            hidden=slots.hidden,
            valid_2d=slots.valid if min(tokens) < max(tokens) else None,  # no padding: nothing to read back
            positions=slots.positions,
            cache=cache,
            first_layer=boundary.drop_layer,
        )
        next_layer = boundary.drop_layer

    hidden = _run_layers(lm, range(next_layer, num_layers), slots.hidden, inputs=inputs, **run)
    outputs = _store_outputs(outputs, replace(slots, hidden=hidden))
    stats = sample_stats(
        num_layers=num_layers,
        stage_first_layers=[stage.first_layer for stage in stages],
        image_tokens=torch.stack([stage.image_tokens for stage in stages], 1),
        tokens=torch.stack([stage.valid.sum(1) for stage in stages], 1),
        kept=torch.stack(kept, 1) if kept else torch.zeros(batch, 0, seq_len, dtype=torch.bool),
    )
    return PrefillResult(outputs[:, :seq_len], PrefillLayout(seq_len, stages), stats)


def staged_decode(
    lm: nn.Module,
    *,
    config: DropConfig,
    layout: PrefillLayout,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    cache,
    layer_kwargs: dict,
) -> torch.Tensor:
    """New tokens (B, q, d) after a staged prefill: each stage attends its own pruned cache.

    attention_mask (B, past + q) is generate()'s 2D mask over the original sequence; positions
    (B, q), or (B, q, 3) M-RoPE ids, are original positions.
    """
    new_mask = attention_mask[:, layout.prefill_len :].bool()  # decode tokens so far plus the new ones
    ends = [stage.first_layer for stage in layout.stages[1:]] + [len(lm.layers)]
    # Every stage's mask and RoPE first, then the layers: building a mask may read the GPU back (transformers
    # checks whether it can skip it), and between stages that read would stall the queued layers. A stage's
    # inputs depend on its own layers' cache only, which the earlier stages do not touch.
    stages = [(stage, end) for stage, end in zip(layout.stages, ends) if end > stage.first_layer]  # a stage without layers (a drop before layer 0) needs no mask
    stage_inputs = [
        _stage_inputs(
            lm,
            hidden=hidden,
            valid_2d=torch.cat([stage.valid, new_mask], dim=1),
            positions=positions - stage.shift.unsqueeze(1) if config.position_mode == "compact" else positions,
            cache=cache,
            first_layer=stage.first_layer,
        )
        for stage, _ in stages
    ]
    for (stage, end), inputs in zip(stages, stage_inputs):
        hidden = _run_layers(lm, range(stage.first_layer, end), hidden, inputs=inputs, cache=cache, use_cache=True, layer_kwargs=layer_kwargs)
    return hidden
