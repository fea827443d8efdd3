"""Ranking image tokens by the attention the query tokens pay them (SPEC section 2).

The attention rows are recomputed from the layer's own input layernorm, q/k projections and RoPE,
because FlashAttention returns no weights. A few query rows against all key rows: O(n·d) beyond the
key projection, identical for eager, sdpa and flash_attention_2.
"""

from __future__ import annotations

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
