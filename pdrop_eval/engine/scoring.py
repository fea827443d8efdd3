"""Ranking image tokens: by the attention the query tokens pay them (SPEC section 2), or at random.

The attention rows are recomputed from the layer's own input layernorm, q/k projections and RoPE,
because FlashAttention returns no weights. A few query rows against all key rows: O(n·d) beyond the
key projection, identical for eager, sdpa and flash_attention_2.

`RANKINGS` maps a method's `ranking` (see `pdrop_eval.engine.config.METHODS`) to its ranking; the
staged prefill builds one per prompt with `ranking_for` and asks it for scores at each boundary.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half


@torch.no_grad()  # ranking carries no gradient (the official code scores a detached copy)
def query_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    key_mask: torch.Tensor,
    query_slots: torch.Tensor,
    query_valid: torch.Tensor,
) -> torch.Tensor:
    """Softmax attention of each sample's query rows over its sequence, averaged over heads, then
    over the sample's valid query rows.

    hidden: (B, T, d) input of `layer`; position_embeddings: RoPE (cos, sin), each (B, T, head_dim);
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
    query = query * cos_q + rotate_half(query) * sin_q
    keys = keys * cos.unsqueeze(1) + rotate_half(keys) * sin.unsqueeze(1)

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


class AttentionRanking:
    """PyramidDrop, FastV: the head-averaged attention of the query rows at the boundary's score layer."""

    @classmethod
    def for_prompt(cls, config, *, token_ids: torch.Tensor, context: torch.Tensor, is_image: torch.Tensor) -> AttentionRanking:
        return cls()

    def scores(self, *, layer, hidden, position_embeddings, key_mask, query_slots, query_valid, image_rank) -> torch.Tensor:
        return query_attention(layer, hidden, position_embeddings, key_mask, query_slots, query_valid)


class RandomRanking:
    """The random control: each sample's image tokens in a uniformly random order, seeded by the
    config's seed and the sample's own context tokens, so a sample keeps the same tokens alone or in
    any batch, on any device. The order is fixed for the whole prefill, so the stages are nested."""

    def __init__(self, priority: torch.Tensor):
        self.priority = priority  # (B, N_max): higher is kept longer, by index in the sample's image block

    @classmethod
    def for_prompt(cls, config, *, token_ids: torch.Tensor, context: torch.Tensor, is_image: torch.Tensor) -> RandomRanking:
        """token_ids, context, is_image: (B, T) of the prompt; context marks the real tokens up to the
        (last) query row (a scored continuation must not change the draw)."""
        num_image = is_image.sum(1).tolist()
        priority = torch.zeros(len(num_image), max(num_image, default=0))
        for row, (ids, mask, count) in enumerate(zip(token_ids, context, num_image)):
            generator = torch.Generator().manual_seed(_sample_seed(config.seed, ids[mask]))
            order = torch.randperm(count, generator=generator)  # image-block indices, first kept longest
            priority[row, order] = torch.arange(count, 0, -1, dtype=priority.dtype)
        return cls(priority.to(token_ids.device))

    def scores(self, *, layer, hidden, position_embeddings, key_mask, query_slots, query_valid, image_rank) -> torch.Tensor:
        """(B, T_s) priority of each slot's image token; text slots get a value `select_top_images` ignores."""
        if self.priority.shape[1] == 0:
            return torch.zeros(image_rank.shape, device=image_rank.device)
        return self.priority.gather(1, image_rank.clamp(0, self.priority.shape[1] - 1))


def _sample_seed(seed: int, token_ids: torch.Tensor) -> int:
    """A 63-bit generator seed from `seed` and a sample's token ids (little-endian int64 bytes)."""
    digest = hashlib.blake2b(token_ids.to(torch.int64).cpu().numpy().astype("<i8").tobytes(), digest_size=8, key=str(seed).encode())
    return int.from_bytes(digest.digest(), "little") >> 1


RANKINGS = {"attention": AttentionRanking, "random": RandomRanking}


def ranking_for(config, *, token_ids: torch.Tensor, context: torch.Tensor, is_image: torch.Tensor):
    """The ranking of `config`'s method for one prompt batch (see `AttentionRanking.for_prompt`)."""
    return RANKINGS[config.spec.ranking].for_prompt(config, token_ids=token_ids, context=context, is_image=is_image)
