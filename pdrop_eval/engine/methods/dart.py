"""DART (Duplication-Aware Reduction of Tokens, Wen et al. 2025, arXiv 2502.11494): before layer K, keep
a few pivot image tokens and, for every pivot, the image tokens least similar to it.

The rule follows the official repository ZichenWen1/DART at its last commit, 5a19452 (2025-08-31; the
LLaVA code last changed in 9fee9fa, 2025-03-19), read from its mirror xqy1111111/DART, which holds that
history unchanged: `llava/model/language_model/modeling_llama_self.py`, `DART.forward` and
`DART.get_retained_image_token`, with the settings of `llava/eval/model_vqa_loader.py`
(`configure_DART`, its argument defaults and the LLaVA-NeXT `text_length`). Per sample:

- pivots: the `dart_pivot_image` image tokens and the `dart_pivot_text` tokens after the image block
  whose keys at layer K-1 (after RoPE, all heads) have the largest L1 norm (`k_states_*_L1_norm.topk`);
  the official keys come out of `repeat_kv`, which scales every token's L1 norm by the same group
  count, so the un-repeated keys rank alike;
- similarity: cosine, on layer K-1's output after the final norm (`self.norm(layer_outputs[0])`);
- each pivot adds the `dart_tokens // (pivots)` image tokens least similar to it among those no pivot
  has taken yet (`(-cos_sim).topk(TOKEN_TOPK)`), so a sample keeps `dart_pivot_image + pivots ·
  (dart_tokens // pivots)` image tokens: 4 + 8·16 = 132 for the default 128. The count is capped, as
  the official LLaVA-NeXT path caps it (`min(retain_token_num_for_llava_next, image_token_length -
  pivot_image_token)`), at the image tokens left besides the image pivots;
- pivots are walked in the order the official loop walks them: `list(set(image_pivots + text_pivots))`
  over their indices in the sample's own sequence, i.e. CPython's set order, which this module reproduces
  by building the same set. That order changes the picks, since each pivot takes from what is left;
- the kept tokens keep their original positions (the official `position_ids = keep_indexs`).

The picks are made by the scorer (`dart_scoring.DartScorer`: 1 for a kept image token, 0 otherwise;
torch lives there, this module is plain Python) and `SelectTop` keeps exactly them, since `kept_counts` is the number picked. No attention weights are read, so every attention
backend works. Deviations (README, "Comparison methods"): batched (a sample's picks are those it gets
alone: indices and the keys' RoPE positions count its own tokens, padding excluded); ties in the L1 norm
or the similarity go to the earlier token; the count is capped as above for every family; a sample's
image tokens must be one contiguous block, as the official code assumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdrop_eval.engine.methods.base import Boundary, MethodSpec, check_int, parse_int


@dataclass(frozen=True)
class DartParams:
    """dart_k: the drop layer K (pivots and similarity from layer K-1); dart_tokens: the official
    `max_num_trunction`, the image tokens the pivots pick (the kept count is rounded down to a multiple of
    the pivots, plus the image pivots); dart_pivot_image / dart_pivot_text: the pivots of each kind."""

    dart_k: int
    dart_tokens: int
    dart_pivot_image: int
    dart_pivot_text: int

    @property
    def pivots(self) -> int:
        return self.dart_pivot_image + self.dart_pivot_text


def picks_per_pivot(params: DartParams, num_image_tokens: int) -> int:
    """The official TOKEN_TOPK: image tokens each pivot adds, for a sample with `num_image_tokens`."""
    if num_image_tokens < params.dart_pivot_image:
        raise ValueError(
            f"DART takes {params.dart_pivot_image} image pivots (dart_pivot_image) but a sample has only {num_image_tokens} image tokens"
        )
    return min(params.dart_tokens, num_image_tokens - params.dart_pivot_image) // params.pivots


class Dart(MethodSpec):
    def check(self, params: DartParams) -> None:
        if check_int("dart_k", params.dart_k) < 1:
            raise ValueError(f"dart_k must be >= 1 (its pivots come from layer dart_k-1, it drops before layer dart_k), got {params.dart_k}")
        for name in ("dart_pivot_image", "dart_pivot_text"):
            if check_int(name, getattr(params, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(params, name)}")
        if check_int("dart_tokens", params.dart_tokens) < params.pivots:
            raise ValueError(
                f"dart_tokens={params.dart_tokens} is below DART's {params.pivots} pivots (dart_pivot_image + dart_pivot_text): "
                f"each pivot would add {params.dart_tokens // params.pivots} tokens"
            )

    def boundaries(self, params: DartParams, num_layers: int) -> list[Boundary]:
        if params.dart_k >= num_layers:
            raise ValueError(f"dart_k={params.dart_k} must be below the model's {num_layers} layers")
        return [Boundary(score_layer=params.dart_k - 1, drop_layer=params.dart_k)]

    def kept_counts(self, params: DartParams, num_image_tokens: int) -> list[int]:
        if not num_image_tokens:  # a text-only sample of a batch: nothing to keep
            return [0]
        return [params.dart_pivot_image + params.pivots * picks_per_pivot(params, num_image_tokens)]

    def scorer(self, params: DartParams):
        from pdrop_eval.engine.methods.dart_scoring import DartScorer  # torch: loaded only when a model runs

        return DartScorer(params)

    def budget_fields(self, count: int) -> dict:
        return {"dart_tokens": count}

    def budget_counts(self, num_image_tokens: int, shape: dict) -> range:
        """From the pivots up: fewer dart_tokens than pivots is no DART setting."""
        pivots = sum(shape.get(name, self.defaults[name]) for name in ("dart_pivot_image", "dart_pivot_text"))
        return range(pivots, num_image_tokens + 1)

    def label(self, params: DartParams, position_mode: str) -> str:
        label = f"{self.series} K={params.dart_k} tokens={params.dart_tokens}"
        if (params.dart_pivot_image, params.dart_pivot_text) != (self.defaults["dart_pivot_image"], self.defaults["dart_pivot_text"]):
            label += f" pivots={params.dart_pivot_image}+{params.dart_pivot_text}"
        return label + self.position_note(position_mode)

    def describe(self, params: DartParams, position_mode: str) -> str:
        return (
            f"{self.title}(K={params.dart_k}, tokens={params.dart_tokens}, pivots={params.dart_pivot_image} image + "
            f"{params.dart_pivot_text} text, positions={position_mode})"
        )

    def options(self, params: DartParams, position_mode: str) -> dict[str, str]:
        return {
            "dart_k": str(params.dart_k), "dart_tokens": str(params.dart_tokens), "dart_pivot_image": str(params.dart_pivot_image),
            "dart_pivot_text": str(params.dart_pivot_text), "position_mode": position_mode,
        }


DART_KEYS = ("dart_k", "dart_tokens", "dart_pivot_image", "dart_pivot_text", "position_mode")
DART_OPTIONS = {key: (key, parse_int) for key in DART_KEYS if key != "position_mode"}  # register_method(options=)

DART = Dart(
    name="dart", title="DART", kind="dart", series="DART", keys=DART_KEYS,
    defaults={"dart_k": 2, "dart_tokens": 128, "dart_pivot_image": 4, "dart_pivot_text": 4, "position_mode": "original"},
    params_class=DartParams, budget_family="count", budget_keys=("dart_tokens",),
)
