"""DART's picks at its boundary (the rule and its sources: `pdrop_eval.engine.methods.dart`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdrop_eval.engine.methods.dart import DartParams, picks_per_pivot
from pdrop_eval.engine.scoring import Scorer, StageView


class DartScorer(Scorer):
    """1 for the image tokens DART keeps, 0 for the others: `SelectTop` then keeps exactly them."""

    def __init__(self, params: DartParams):
        self.params = params

    @torch.no_grad()
    def scores(self, view: StageView) -> torch.Tensor:
        layer, batch, seq_len = view.layer, view.hidden.shape[0], view.hidden.shape[1]
        attention = layer.self_attn
        sees = view.key_mask.any(1)  # (B, T): the sample's real tokens up to its query row
        # RoPE keeps a key's L2 norm but not its L1 norm, so the pivots depend on the positions' offset: rotate
        # at each sample's own positions (the official code runs one sample from position 0), whatever
        # numbering a padded batch came with (a plain forward numbers the left padding too). M-RoPE ids
        # (get_rope_index) already count each sample's own tokens from 0, and only they rotate as the model does.
        if view.positions.ndim == 3:
            cos, sin = view.position_embeddings
        else:
            cos, sin = view.language_model.rotary_emb(view.hidden, (sees.long().cumsum(1) - 1).clamp(min=0))
        keys = attention.k_proj(layer.input_layernorm(view.hidden)).view(batch, seq_len, -1, attention.head_dim).transpose(1, 2)
        keys = view.apply_rotary(keys, cos.unsqueeze(1), sin.unsqueeze(1))  # (B, H_kv, T, head_dim)
        key_l1 = keys.float().abs().sum(dim=(1, 3))  # (B, T)
        similarity_states = view.language_model.norm(view.drop_hidden).float()  # layer K-1's output, final norm
        picked = torch.zeros(batch, seq_len, device=view.hidden.device)
        for sample in range(batch):
            slots = sees[sample].nonzero().squeeze(1)  # the sample's own sequence: index i is slot slots[i]
            own = self._own_picks(sample, view.is_image[sample, slots], key_l1[sample, slots], similarity_states[sample, slots])
            picked[sample, slots[own]] = 1.0
        return picked

    def _own_picks(self, sample: int, is_image: torch.Tensor, key_l1: torch.Tensor, states: torch.Tensor) -> list[int]:
        """The kept image tokens of one sample, by index in its own sequence (no padding)."""
        params = self.params
        image_at = is_image.nonzero().squeeze(1).tolist()
        if not image_at:
            return []
        start, count = image_at[0], len(image_at)
        if image_at[-1] != start + count - 1:
            raise ValueError(f"DART takes one contiguous block of image tokens per sample (as the official code does); sample {sample} has several")
        after = len(is_image) - (start + count)
        if after < params.dart_pivot_text:
            raise ValueError(
                f"DART takes {params.dart_pivot_text} text pivots (dart_pivot_text) from the tokens after the image, "
                f"but sample {sample} has only {after} tokens after its image tokens"
            )
        take = picks_per_pivot(params, count)
        image_pivots = (_largest(key_l1[start : start + count], params.dart_pivot_image) + start).tolist()
        text_pivots = (_largest(key_l1[start + count :], params.dart_pivot_text) + start + count).tolist()
        kept = set(image_pivots)
        left = [index for index in range(start, start + count) if index not in kept]
        # The official loop walks `list(set(image_pivots + text_pivots))`: the same set gives the same order.
        for pivot in list(set(image_pivots + text_pivots)):
            dissimilarity = -F.cosine_similarity(states[pivot].unsqueeze(0), states[left], dim=-1)
            taken = {left[i] for i in _largest(dissimilarity, take).tolist()}
            kept |= taken
            left = [index for index in left if index not in taken]
        return sorted(kept)


def _largest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest values, largest first (the official `topk`), ties to the earlier one."""
    return values.argsort(descending=True, stable=True)[:count]
