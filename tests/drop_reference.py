"""An independent, deliberately plain PyramidDrop for one unpadded sample, to test the engine against.

It runs the stock decoder layers one by one on Python lists of surviving tokens, ranks with the true
attention weights of the unmodified layer (eager attention returns them), renumbers positions with
`arange` over the survivors, and shares no code with `pdrop_eval.engine`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class _Captured(Exception):
    pass


def language_model_embeddings(model, inputs) -> torch.Tensor:
    """(T, d) the embeddings LLaVA hands its language model (image features merged) for a batch of
    one, computed by the stock model; they carry the autograd graph of the vision tower and projector."""
    captured = {}

    def capture(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]
        raise _Captured  # the language model itself is not needed

    hook = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model.model(**{k: v for k, v in inputs.items() if k != "labels"})
    except _Captured:
        pass
    finally:
        hook.remove()
    return captured["embeds"][0]


def answer_query_rows(labels: list[int]) -> list[int]:
    """Training rule: each position p with labels[p] == -100 and labels[p + 1] != -100."""
    return [p for p in range(len(labels) - 1) if labels[p] == -100 and labels[p + 1] != -100]


@dataclass
class ReferenceRun:
    outputs: torch.Tensor  # (T, d) final hidden state per original position (dropped: state at the drop layer)
    survivors: list[int]  # original indices that reached the last layer
    kept: list[list[int]]  # per boundary, kept image tokens by their index in the image block


def pyramid_drop(model, embeds, *, is_image: list[bool], query_rows: list[int], layer_list, ratio: float, compact: bool) -> ReferenceRun:
    """PyramidDrop over one sample's `embeds` (T, d): before each layer L in `layer_list` keep the
    int(N * ratio**s) image tokens the `query_rows` attend to most (layer L's own eager attention,
    mean over heads, then over rows); without query rows nothing is dropped."""
    num_image = sum(is_image)
    schedule = [(layer, layer, int(num_image * ratio**stage)) for stage, layer in enumerate(layer_list, 1)]
    return staged_drop(model, embeds, is_image=is_image, query_rows=query_rows, schedule=schedule, compact=compact)


def staged_drop(model, embeds, *, is_image: list[bool], query_rows: list[int], schedule, compact: bool) -> ReferenceRun:
    """Drops over one sample's `embeds` (T, d) by `schedule`, (score_layer, drop_layer, kept) per boundary:
    rank the image tokens by the `query_rows`' attention at score_layer (its own eager attention over its
    input, mean over heads, then over rows) and keep the `kept` best before drop_layer runs (FastV:
    (K-1, K, kept); PyramidDrop: (L, L, kept)); without query rows nothing is dropped."""
    lm = model.model.language_model
    image_order = [i for i, image in enumerate(is_image) if image]
    alive = list(range(len(is_image)))  # original indices of the current tokens, in order
    hidden = embeds
    outputs = [None] * len(is_image)
    kept = []
    scores = None
    for layer_idx, layer in enumerate(lm.layers):
        for score_layer, drop_layer, keep_count in schedule if query_rows else ():
            if layer_idx == score_layer:
                with torch.no_grad(), _eager_attention(model):
                    weights = _attention_weights(lm, layer, hidden.detach(), _positions(alive, compact))  # (H, t, t)
                rows = [alive.index(q) for q in query_rows]
                scores = weights.mean(0)[rows].mean(0)  # (t,)
            if layer_idx == drop_layer:
                image_slots = [i for i, original in enumerate(alive) if is_image[original]]
                best = sorted(image_slots, key=lambda i: -scores[i].item())[:keep_count]
                keep = [i for i, original in enumerate(alive) if not is_image[original] or i in best]
                for i, original in enumerate(alive):
                    if i not in keep:
                        outputs[original] = hidden[i]
                kept.append(sorted(image_order.index(alive[i]) for i in best))
                hidden = hidden[keep]
                alive = [alive[i] for i in keep]
        hidden = _run_layer(lm, layer, hidden, _positions(alive, compact))
    for i, original in enumerate(alive):
        outputs[original] = hidden[i]
    return ReferenceRun(outputs=torch.stack(outputs), survivors=alive, kept=kept)


def logits(model, hidden: torch.Tensor) -> torch.Tensor:
    return model.lm_head(model.model.language_model.norm(hidden))


def survivors_loss(model, run: ReferenceRun, labels: list[int]) -> torch.Tensor:
    """Summed next-token cross-entropy on the surviving sequence with its own labels, as the official
    training code computes it after dropping."""
    survivor_logits = logits(model, run.outputs[run.survivors])
    survivor_labels = torch.tensor([labels[i] for i in run.survivors])
    # float32, as transformers computes its loss
    return F.cross_entropy(survivor_logits[:-1].float(), survivor_labels[1:], ignore_index=-100, reduction="sum")


@contextmanager
def _eager_attention(model):
    """Transformers' eager attention, which returns the weights, whatever the model was loaded with."""
    loaded = model.config.text_config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(loaded)


def _positions(alive: list[int], compact: bool) -> torch.Tensor:
    return torch.arange(len(alive)) if compact else torch.tensor(alive)


def _causal_mask(length: int, dtype) -> torch.Tensor:
    return torch.full((length, length), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]


def _run_layer(lm, layer, hidden, positions):
    embeddings = lm.rotary_emb(hidden[None], positions[None])
    return layer(hidden[None], attention_mask=_causal_mask(len(positions), hidden.dtype), position_embeddings=embeddings)[0]


def _attention_weights(lm, layer, hidden, positions) -> torch.Tensor:
    embeddings = lm.rotary_emb(hidden[None], positions[None])
    _, weights = layer.self_attn(
        hidden_states=layer.input_layernorm(hidden[None]),
        position_embeddings=embeddings,
        attention_mask=_causal_mask(len(positions), hidden.dtype),
    )
    return weights[0]
