"""SparseVLM's scorer and reducer (the rule and its sources: `pdrop_eval.engine.methods.sparsevlm`).

Both share one `_Prefill`: the scorer chooses the raters at the first boundary (from layer 0's input,
which a hook on layer 0 keeps) and ranks the image tokens by the raters' attention at every boundary;
the reducer keeps the top ones and recycles the best pruned ones into merged tokens, which the staged
prefill inserts after the kept image tokens.
"""

from __future__ import annotations

import math

import torch

from pdrop_eval.engine.methods.sparsevlm import SparseVLMParams, stage_split
from pdrop_eval.engine.reducers import InsertedTokens, Reducer, Reduction
from pdrop_eval.engine.scoring import PromptView, Scorer, StageView, query_attention, select_top_images
from pdrop_eval.engine.vision_side import NEXT_FAMILY, SUPPORTED_FAMILY, check_family

METHOD = "SparseVLM"


class _Prefill:
    """What the scorer found that the reducer needs, for the prefill running now."""

    def __init__(self):
        self.layer0_input = None  # (B, T, d): the language model's input, kept by the hook on layer 0
        self.raters = None  # per sample: the raters, by index among the tokens after its image block
        self.boundary = None  # the boundary the scorer ranked last


def sparsevlm_parts(params: SparseVLMParams) -> tuple[Scorer, Reducer]:
    prefill = _Prefill()
    return RaterScorer(prefill), RecyclingReducer(params, prefill)


def _image_block_and_text(view: StageView) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) bool each: every sample's image slots (one contiguous block, as the official code assumes)
    and its real tokens after that block."""
    seen = view.key_mask.any(1)  # the sample's real tokens (up to its last query row: its last token)
    slot = torch.arange(seen.shape[1], device=seen.device).expand_as(seen)
    image = view.is_image
    first = torch.where(image, slot, seen.shape[1]).amin(1, keepdim=True)
    last = torch.where(image, slot, -1).amax(1, keepdim=True)
    broken = (image.sum(1, keepdim=True) != (last - first + 1).clamp(min=0)).squeeze(1)
    if broken.any():
        raise ValueError(f"{METHOD} takes one contiguous block of image tokens per sample (as the official code does); samples {broken.nonzero().flatten().tolist()} have several")
    return image, seen & (slot > last)


class RaterScorer(Scorer):
    """The raters' head-averaged attention to each slot at the boundary's score layer."""

    def __init__(self, prefill: _Prefill):
        self.prefill = prefill

    def attach(self, model) -> list:
        # LLaVA-NeXT: its one block per image (base tile, grid, newline tokens) is ranked whole, as every method here ranks it
        language_model = check_family(model, METHOD, supported=(SUPPORTED_FAMILY, NEXT_FAMILY)).language_model(model)

        def keep_input(module, args):
            self.prefill.layer0_input = args[0]

        return [language_model.layers[0].register_forward_pre_hook(keep_input)]

    def for_prompt(self, prompt: PromptView) -> Scorer:
        self.prefill.raters, self.prefill.boundary = None, None
        return self

    @torch.no_grad()
    def scores(self, view: StageView) -> torch.Tensor:
        image, text = _image_block_and_text(view)
        if view.boundary == 0:
            self.prefill.raters = self._choose_raters(image, text)
            self.prefill.layer0_input = None  # not held beyond its use
        self.prefill.boundary = view.boundary
        # The raters' slots now: text is never dropped, so the j-th token after the image block is still the j-th.
        batch, seq_len = text.shape
        width = max(len(raters) for raters in self.prefill.raters)
        query_slots = torch.zeros(batch, width, dtype=torch.long, device=text.device)
        query_valid = torch.zeros(batch, width, dtype=torch.bool, device=text.device)
        for sample, raters in enumerate(self.prefill.raters):
            slot_of_rank = text[sample].nonzero().squeeze(1)
            query_slots[sample, : len(raters)] = slot_of_rank[raters]
            query_valid[sample, : len(raters)] = True
        slot = torch.arange(seq_len, device=text.device)
        key_mask = view.key_mask.any(1).unsqueeze(1) & (slot <= query_slots.unsqueeze(2))  # causal, real tokens
        return query_attention(view.layer, view.hidden, view.position_embeddings, view.apply_rotary, key_mask, query_slots, query_valid)

    def _choose_raters(self, image: torch.Tensor, text: torch.Tensor) -> list[torch.Tensor]:
        """Per sample, the tokens after the image block whose relevance to the image (softmax over those
        tokens of the image-text dot products, mean over the image tokens) is above their mean."""
        states = self.prefill.layer0_input
        if states is None or states.shape[:2] != image.shape:
            raise ValueError(f"{METHOD} rates with the language model's input, which its hook on layer 0 did not see for this prompt")
        raters = []
        for sample in range(image.shape[0]):
            image_states, text_states = states[sample, image[sample]].float(), states[sample, text[sample]].float()
            relevance = (image_states @ text_states.T).softmax(dim=1).mean(dim=0)  # (text tokens,)
            chosen = (relevance > relevance.mean()).nonzero().squeeze(1)
            if image_states.shape[0] and not len(chosen):
                raise ValueError(
                    f"{METHOD}: sample {sample} has no text token after its image rated above the mean relevance "
                    f"({text_states.shape[0]} tokens after the image), so no rater ranks its image tokens"
                )
            raters.append(chosen)
        return raters


class RecyclingReducer(Reducer):
    """Keeps each sample's top image tokens and inserts the merged groups of the best pruned ones."""

    def __init__(self, params: SparseVLMParams, prefill: _Prefill):
        self.params, self.prefill = params, prefill

    @torch.no_grad()
    def reduce(self, *, hidden, scores, is_image, image_rank, keep) -> Reduction:
        if self.prefill.boundary is None:
            raise ValueError(f"{METHOD}'s reducer needs its own scorer (it recycles by the raters' scores)")
        top = self.params.schedule[self.prefill.boundary]
        splits = [stage_split(top, image_tokens) for image_tokens in is_image.sum(1).tolist()]
        for sample, ((kept, _, groups), expected) in enumerate(zip(splits, keep.tolist())):
            if kept + groups != expected:
                raise ValueError(f"{METHOD}: sample {sample} would keep {kept} + {groups} image tokens, its schedule says {expected}")
        selected = select_top_images(scores, is_image, torch.tensor([kept for kept, _, _ in splits], device=scores.device))
        pruned = is_image & ~selected
        width = max(groups for _, _, groups in splits)
        merged = hidden.new_zeros(hidden.shape[0], width, hidden.shape[-1])
        valid = torch.zeros(hidden.shape[0], width, dtype=torch.bool, device=hidden.device)
        for sample, (_, recycled, groups) in enumerate(splits):
            if not groups:
                continue
            slots = pruned[sample].nonzero().squeeze(1)  # in sequence order, as the official pruned list
            best = scores[sample, slots].float().argsort(descending=True, stable=True)[:recycled]  # the official topk order
            merged[sample, :groups] = merge_clusters(hidden[sample, slots[best]], groups)
            valid[sample, :groups] = True
        return Reduction(selected=selected, hidden=hidden, inserted=InsertedTokens(hidden=merged, valid=valid))


def merge_clusters(tokens: torch.Tensor, groups: int) -> torch.Tensor:
    """(groups, d): `tokens` (n, d) clustered by density peaks (DPC-kNN) and averaged, in the order of
    the centres' scores (the official `cluster_and_merge`, on one sample, in float32). A tie in density
    goes to the earlier token (the official code breaks ties with random noise)."""
    states = tokens.float()
    count = states.shape[0]
    distance = torch.cdist(states, states, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(states.shape[1])
    nearest = distance.topk(groups, dim=1, largest=False).values
    density = (-(nearest**2).mean(dim=1)).exp()
    index = torch.arange(count, device=states.device)
    denser = (density.unsqueeze(0) > density.unsqueeze(1)) | ((density.unsqueeze(0) == density.unsqueeze(1)) & (index.unsqueeze(0) < index.unsqueeze(1)))
    # distance to the nearest denser token; the densest gets the largest distance of all
    to_denser = torch.where(denser, distance, distance.max()).amin(dim=1)
    centres = (to_denser * density).argsort(descending=True, stable=True)[:groups]
    group = distance[centres].argmin(dim=0)  # every token to its nearest centre (a tie: the earlier centre)
    group[centres] = torch.arange(groups, device=states.device)
    sums = states.new_zeros(groups, states.shape[1]).index_add_(0, group, states)
    members = states.new_zeros(groups).index_add_(0, group, torch.ones_like(density))
    return (sums / (members + 1e-6).unsqueeze(1)).to(tokens.dtype)
