"""VisionZip (Yang et al., 2024) on LLaVA-1.5 and LLaVA-NeXT: before the language model, each image's
vision tokens become `dominant` + `contextual` tokens, built at the vision layer LLaVA takes its
features from.

The rule follows `dvlab-research/VisionZip` at commit 3151f6d:
- `visionzip/main.py`, `visionzip()`: `dominant` counts the [CLS] token, so `dominant - 1` patch tokens
  are chosen; the README's settings are 54+10 (64 tokens), the paper's 108+20 (128) and 162+30 (192);
- `visionzip/utils.py`, `apply_info` (r = 1 at layer index 22 of 24, i.e. `layers[-2]`) and
  `CLIPAttention_forward` (the metric: that layer's key states, mean over heads);
- `visionzip/clip_encoder.py`, `CLIPVisionTower_VisionZip.forward`: at `layers[-2]` (its output is
  LLaVA's feature layer, `hidden_states[-2]`), dominant = [CLS] plus the top `dominant - 1` patches by
  the [CLS] query's attention summed over heads, kept in sequence order; the other tokens' metric rows
  L2-normalised, `contextual` targets at stride `max(1, R // contextual)` among them, every other one
  assigned to its most similar target, each contextual token = target's state + mean of its assigned
  tokens' states; output [CLS, dominant patches in sequence order, contextual tokens in target order];
- `visionzip/llava_arch.py`, `encode_images_visionzip`: the projector runs on those merged features,
  and the language model reads them in place of the image's tokens (a shorter sequence).

LLaVA-NeXT (`visionzip/llava_arch.py`, `prepare_inputs_labels_for_multimodal_visionzip` with
`encode_images_visionzip_multi` and `restore_image_features_sorted`): the rule above runs on every
crop (the base tile and each anyres crop) on its own; the image is then the base crop's
[CLS, dominant patches, contextual tokens] followed by the grid crops' dominant patches put back on the
whole (rows·side) x (columns·side) crop grid and read in raster order, then the grid crops' [CLS]
tokens, then their contextual tokens, crop by crop. The official code computes the `image_newline`
rows but never inserts them, and never calls `unpad_image`: no newline tokens, and crops that are
mostly padding keep their share too. So does this one. One deviation: the official code gives every
crop the same `dominant` + `contextual`, so an image keeps (1 + crops)·(dominant + contextual) tokens
and the count depends on its crop grid; the engine's counts depend on N alone, so here `dominant` and
`contextual` count the whole image and are shared out over its crops as evenly as they go, the base
tile first taking one more (`pdrop_eval.engine.vision_side.crop_shares`). The official 54+10 per crop
on an image of a 2x2 grid (5 crops) is dominant=270, contextual=50 here. A crop whose contextual share
is 0 keeps its dominant tokens only; every crop keeps its [CLS] token (dominant >= crops).

Here the prompt keeps LLaVA's N image placeholders (the processor and HF's placeholder check see the
stock count, N, as the language model receives N features); a hook on the vision layer builds the
tokens, the reducer (`pdrop_eval.engine.vision_side.VisionZipReducer`) writes them into the first
`dominant + contextual` image slots and the staged prefill drops the rest with compact positions. The
README's "Comparison methods" lists the deviations. Towers without a [CLS] token, and a feature layer
that is the patch embeddings, are refused.

Plain Python (no torch): the parts load when a model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdrop_eval.engine.methods.base import (
    PLACE_BEFORE_LANGUAGE_MODEL,
    Boundary,
    MethodSpec,
    check_int,
    parse_int,
)


@dataclass(frozen=True)
class VisionZipParams:
    """dominant: tokens chosen by the [CLS] attention, the [CLS] token included (the official
    `dominant`); contextual: merged tokens. Per image (on LLaVA-NeXT shared out over its crops)."""

    dominant: int
    contextual: int


def kept_tokens(dominant: int, contextual: int, num_image_tokens: int) -> int:
    """dominant + contextual, if an image's `num_image_tokens` tokens have room for them (ValueError if not)."""
    kept = dominant + contextual
    if kept > num_image_tokens:
        raise ValueError(
            f"VisionZip keeps dominant + contextual = {dominant} + {contextual} = {kept} tokens per image, "
            f"more than the {num_image_tokens} image tokens it replaces"
        )
    return kept


class VisionZip(MethodSpec):
    def check(self, params: VisionZipParams) -> None:
        if check_int("dominant", params.dominant) < 1:
            raise ValueError(f"dominant (the [CLS] token plus the patches it attends to most) must be >= 1, got {params.dominant}")
        if check_int("contextual", params.contextual) < 1:
            raise ValueError(f"contextual (merged tokens; the official code divides by it) must be >= 1, got {params.contextual}")

    def boundaries(self, params: VisionZipParams, num_layers: int) -> list[Boundary]:
        return [Boundary.before_language_model()]

    def kept_counts(self, params: VisionZipParams, num_image_tokens: int) -> list[int]:
        return [kept_tokens(params.dominant, params.contextual, num_image_tokens) if num_image_tokens else 0]

    def scorer(self, params: VisionZipParams):
        from pdrop_eval.engine.vision_side import (
            FirstImageSlots,  # torch: loaded only when a model runs
        )

        return FirstImageSlots()

    def reducer(self, params: VisionZipParams):
        from pdrop_eval.engine.vision_side import VisionZipReducer

        return VisionZipReducer(dominant=params.dominant, contextual=params.contextual)

    def budget_fields(self, count: int) -> dict:
        """`count` tokens split as the official budgets are (54+10, 108+20, 162+30: a sixth and a bit contextual)."""
        contextual = max(1, round(count * 10 / 64))
        return {"dominant": count - contextual, "contextual": contextual}

    def budget_counts(self, num_image_tokens: int, shape: dict) -> range:
        return range(2, num_image_tokens + 1)  # at least the [CLS] token and one contextual token

    def label(self, params: VisionZipParams, position_mode: str) -> str:
        return f"{self.series} {params.dominant}+{params.contextual}"

    def describe(self, params: VisionZipParams, position_mode: str) -> str:
        return f"{self.title}(dominant={params.dominant}, contextual={params.contextual})"

    def options(self, params: VisionZipParams, position_mode: str) -> dict[str, str]:
        return {"dominant": str(params.dominant), "contextual": str(params.contextual)}


VISIONZIP_OPTIONS = {"dominant": ("dominant", parse_int), "contextual": ("contextual", parse_int)}

VISIONZIP = VisionZip(
    name="visionzip", title="VisionZip", kind="visionzip", series="VisionZip", keys=tuple(VISIONZIP_OPTIONS),
    defaults={"dominant": 54, "contextual": 10, "position_mode": "compact"},  # the official README's 64-token setting
    params_class=VisionZipParams, place=PLACE_BEFORE_LANGUAGE_MODEL, budget_family="count", budget_keys=tuple(VISIONZIP_OPTIONS),
)
