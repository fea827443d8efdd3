"""Ranking image tokens by the attention the query token pays them (SPEC section 2).

The attention row is recomputed from the layer's own input layernorm, q/k projections and RoPE,
because FlashAttention returns no weights. One query row against all key rows: O(n·d) beyond the
key projection, identical for eager, sdpa and flash_attention_2.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half


@torch.no_grad()
def query_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    key_mask: torch.Tensor,
    query_slot: torch.Tensor,
) -> torch.Tensor:
    """Head-averaged softmax attention of each sample's query token over its sequence.

    hidden: (B, T, d) input of `layer`; position_embeddings: RoPE (cos, sin), each (B, T, head_dim);
    key_mask: (B, T) bool, the keys the query may see (valid and causal); query_slot: (B,) long.
    Returns (B, T) float32; masked keys get 0.
    """
    attn = layer.self_attn
    batch, seq_len, _ = hidden.shape
    rows = torch.arange(batch, device=hidden.device)

    normed = layer.input_layernorm(hidden)  # (B, T, d)
    query = attn.q_proj(normed[rows, query_slot]).view(batch, -1, attn.head_dim)  # (B, Hq, hd)
    keys = attn.k_proj(normed).view(batch, seq_len, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)

    cos, sin = position_embeddings
    cos_q, sin_q = cos[rows, query_slot].unsqueeze(1), sin[rows, query_slot].unsqueeze(1)  # (B, 1, hd)
    query = query * cos_q + rotate_half(query) * sin_q
    keys = keys * cos.unsqueeze(1) + rotate_half(keys) * sin.unsqueeze(1)

    # GQA: query head h reads key head h // groups; group the query heads instead of copying keys.
    num_kv_heads = keys.shape[1]
    query = query.view(batch, num_kv_heads, attn.num_key_value_groups, attn.head_dim)  # (B, Hkv, G, hd)
    logits = torch.einsum("bkgd,bktd->bkgt", query.float(), keys.float()) * attn.scaling  # (B, Hkv, G, T)
    logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=(1, 2))


def select_top_images(scores: torch.Tensor, is_image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, T) bool marking, per sample, the `keep[b]` best-scoring image slots.

    Ties go to the earlier slot (stable sort), so the choice is deterministic.
    """
    ranked = scores.masked_fill(~is_image, float("-inf"))
    order = ranked.argsort(dim=1, descending=True, stable=True)  # (B, T) slots, best first
    take = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0) < keep.unsqueeze(1)
    return torch.zeros_like(is_image).scatter(1, order, take)
