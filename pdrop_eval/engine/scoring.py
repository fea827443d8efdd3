"""Scorers: the part of a method that ranks image tokens at a boundary (SPEC section 2).

A `Scorer` is given a `PromptView` once per prompt batch (it may prepare per-prompt state there) and
a `StageView` at every boundary, and returns a score per slot; the staged prefill keeps the best
`kept_counts` image tokens (`select_top_images`). A method names its scorer in its spec; a caller may
pass any scorer to `apply_drop(model, config, scorer=...)` instead (benches, experiments).

Attention rows are recomputed from the layer's own input layernorm, q/k projections and the model
family's rotary embedding, because FlashAttention returns no weights. A few query rows against all key
rows: O(n·d) beyond the key projection, identical for eager, sdpa and flash_attention_2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PromptView:
    """The prompt batch, before any layer runs."""

    token_ids: torch.Tensor  # (B, T) long
    context: torch.Tensor  # (B, T) bool: the real tokens up to each sample's (last) query row
    is_image: torch.Tensor  # (B, T) bool


@dataclass(frozen=True)
class StageView:
    """One boundary, as a scorer sees it: the score layer's input over the current stage's slots."""

    boundary: int  # 0-based index of the boundary in the schedule
    language_model: nn.Module  # the decoder (its layers, final norm, rotary)
    layer: nn.Module | None  # the score layer (its input layernorm, q/k projections); None: before the language model
    hidden: torch.Tensor  # (B, T_s, d) that layer's input (the language model's input embeddings when layer is None)
    drop_hidden: torch.Tensor  # (B, T_s, d) the drop layer's input (`hidden` when the score layer is the drop layer)
    positions: torch.Tensor  # (B, T_s) the slots' position ids, or (B, T_s, 3) (t, h, w) M-RoPE ids
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # RoPE (cos, sin) of the slots' positions
    apply_rotary: Callable  # the model family's rotary: (states, cos, sin) -> rotated states
    key_mask: torch.Tensor  # (B, Q, T_s) bool: the keys each query row sees (valid and causal)
    query_slots: torch.Tensor  # (B, Q) long
    query_valid: torch.Tensor  # (B, Q) bool
    is_image: torch.Tensor  # (B, T_s) bool (real image slots)
    image_rank: torch.Tensor  # (B, T_s) long: index into the sample's image-token block (image slots)


class Scorer:
    """Ranks image tokens: higher scores are kept. Subclasses implement `scores`."""

    def attach(self, model) -> list:
        """Hooks it needs on the model (e.g. to read the vision tower), as handles with `remove()`;
        `apply_drop` registers them and its handle removes them. None by default."""
        return []

    def for_prompt(self, prompt: PromptView) -> Scorer:
        """The scorer for one prompt batch (this one, unless it needs per-prompt state)."""
        return self

    def scores(self, view: StageView) -> torch.Tensor:
        """(B, T_s) float: a score per slot; only image slots' scores are read."""
        raise NotImplementedError


@torch.no_grad()  # ranking carries no gradient (the official code scores a detached copy)
def query_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    apply_rotary: Callable,
    key_mask: torch.Tensor,
    query_slots: torch.Tensor,
    query_valid: torch.Tensor,
) -> torch.Tensor:
    """Softmax attention of each sample's query rows over its sequence, averaged over heads, then
    over the sample's valid query rows.

    hidden: (B, T, d) input of `layer`; position_embeddings: RoPE (cos, sin), each (B, T, head_dim);
    apply_rotary: the model family's rotary, (states, cos, sin) -> states;
    query_slots: (B, Q) long; query_valid: (B, Q) bool; key_mask: (B, Q, T) bool, the keys each
    query row may see (valid and causal). Returns (B, T) float32; masked keys get 0, and a sample
    without valid rows gets 0 everywhere.
    """
    attn = layer.self_attn
    batch, seq_len, _ = hidden.shape
    num_queries = query_slots.shape[1]
    rows = torch.arange(batch, device=hidden.device).unsqueeze(1)  # (B, 1)

    normed = layer.input_layernorm(hidden)  # (B, T, d)
    query = attn.q_proj(normed[rows, query_slots]).view(batch, num_queries, -1, attn.head_dim)  # (B, Q, Hq, hd)
    keys = attn.k_proj(normed).view(batch, seq_len, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)

    cos, sin = position_embeddings
    cos_q, sin_q = cos[rows, query_slots].unsqueeze(2), sin[rows, query_slots].unsqueeze(2)  # (B, Q, 1, hd)
    query = apply_rotary(query, cos_q, sin_q)
    keys = apply_rotary(keys, cos.unsqueeze(1), sin.unsqueeze(1))

    # GQA: query head h reads key head h // groups; group the query heads instead of copying keys.
    num_kv_heads = keys.shape[1]
    query = query.view(batch, num_queries, num_kv_heads, attn.num_key_value_groups, attn.head_dim)  # (B, Q, Hkv, G, hd)
    logits = torch.einsum("bqkgd,bktd->bqkgt", query.float(), keys.float()) * attn.scaling  # (B, Q, Hkv, G, T)
    logits = logits.masked_fill(~key_mask[:, :, None, None, :], float("-inf"))
    per_row = logits.softmax(dim=-1).mean(dim=(2, 3))  # (B, Q, T)
    per_row = per_row.masked_fill(~query_valid.unsqueeze(2), 0.0)  # padding rows (their softmax may be NaN)
    return per_row.sum(1) / query_valid.sum(1, keepdim=True).clamp(min=1)


def select_top_images(scores: torch.Tensor, is_image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, T) bool marking, per sample, the `keep[b]` best-scoring image slots.

    Ties go to the earlier slot (stable sort), so the choice is deterministic.
    """
    ranked = scores.masked_fill(~is_image, float("-inf"))
    order = ranked.argsort(dim=1, descending=True, stable=True)  # (B, T) slots, best first
    take = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0) < keep.unsqueeze(1)
    return torch.zeros_like(is_image).scatter(1, order, take)


class AttentionScorer(Scorer):
    """PyramidDrop, FastV: the head-averaged attention of the query rows at the boundary's score layer."""

    def scores(self, view: StageView) -> torch.Tensor:
        return query_attention(
            view.layer, view.hidden, view.position_embeddings, view.apply_rotary, view.key_mask, view.query_slots, view.query_valid
        )


@dataclass(frozen=True)
class RandomScorer(Scorer):
    """The random control: each sample's image tokens in a uniformly random order, seeded by `seed` and
    the sample's own context tokens, so a sample keeps the same tokens alone or in any batch, on any
    device. The order is fixed for the whole prefill, so the stages are nested."""

    seed: int = 0

    def for_prompt(self, prompt: PromptView) -> Scorer:
        num_image = prompt.is_image.sum(1).tolist()
        priority = torch.zeros(len(num_image), max(num_image, default=0))
        for row, (ids, mask, count) in enumerate(zip(prompt.token_ids, prompt.context, num_image)):
            generator = torch.Generator().manual_seed(_sample_seed(self.seed, ids[mask]))
            order = torch.randperm(count, generator=generator)  # image-block indices, first kept longest
            priority[row, order] = torch.arange(count, 0, -1, dtype=priority.dtype)
        return _FixedPriority(priority.to(prompt.token_ids.device))


@dataclass(frozen=True)
class _FixedPriority(Scorer):
    priority: torch.Tensor  # (B, N_max): higher is kept longer, by index in the sample's image block

    def scores(self, view: StageView) -> torch.Tensor:
        """(B, T_s) priority of each slot's image token; text slots get a value `select_top_images` ignores."""
        if self.priority.shape[1] == 0:
            return torch.zeros(view.image_rank.shape, device=view.image_rank.device)
        return self.priority.gather(1, view.image_rank.clamp(0, self.priority.shape[1] - 1))


def _sample_seed(seed: int, token_ids: torch.Tensor) -> int:
    """A 63-bit generator seed from `seed` and a sample's token ids (little-endian int64 bytes)."""
    digest = hashlib.blake2b(token_ids.to(torch.int64).cpu().numpy().astype("<i8").tobytes(), digest_size=8, key=str(seed).encode())
    return int.from_bytes(digest.digest(), "little") >> 1
