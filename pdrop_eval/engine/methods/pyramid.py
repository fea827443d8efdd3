"""PyramidDrop (SPEC section 2): at each boundary layer L, rank the image tokens by the last prompt
token's attention at layer L and keep int(N·λ^s) of them after boundary s, in their original order."""

from __future__ import annotations

from dataclasses import dataclass

from pdrop_eval.engine.methods.base import AttentionRanked, Boundary, check_int, check_number, stage_ratio


@dataclass(frozen=True)
class PyramidParams:
    """layer_list: stage boundaries (0-based layer indices, strictly increasing, > 0).
    ratio: λ; after boundary s, int(N * λ^s) image tokens are kept (λ^s as a decimal).
    image_token_ratio_list: explicit kept fractions of N per boundary (instead of λ)."""

    layer_list: tuple[int, ...]
    ratio: float | None = None
    image_token_ratio_list: tuple[float, ...] | None = None


class PyramidDrop(AttentionRanked):
    def check(self, params: PyramidParams) -> None:
        layers = tuple(check_int("layer_list entry", layer) for layer in params.layer_list)
        if not layers:
            raise ValueError("layer_list must name at least one boundary layer")
        if layers[0] <= 0:
            raise ValueError(f"layer_list: a boundary at layer {layers[0]} drops before any layer ran; use layers >= 1")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"layer_list must be strictly increasing without duplicates, got {list(layers)}")
        if (params.ratio is None) == (params.image_token_ratio_list is None):
            given = "neither" if params.ratio is None else "both"
            raise ValueError(f"PyramidDrop needs exactly one of lambda (ratio) or image_token_ratio_list, got {given}")
        if params.ratio is not None:
            ratio = check_number("lambda", params.ratio)
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"lambda must be in (0, 1], got {ratio}")
            return
        ratios = [check_number("image_token_ratio_list entry", r) for r in params.image_token_ratio_list]
        if len(ratios) != len(layers):
            raise ValueError(f"image_token_ratio_list has {len(ratios)} entries but layer_list has {len(layers)} boundaries")
        if any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"image_token_ratio_list entries must be in (0, 1], got {ratios}")
        if any(b > a for a, b in zip(ratios, ratios[1:])):
            raise ValueError(f"image_token_ratio_list must not increase from stage to stage, got {ratios}")

    def boundaries(self, params: PyramidParams, num_layers: int) -> list[Boundary]:
        too_deep = [layer for layer in params.layer_list if layer >= num_layers]
        if too_deep:
            raise ValueError(f"layer_list {list(params.layer_list)} has layers {too_deep} beyond the model's {num_layers} layers")
        return [Boundary(score_layer=layer, drop_layer=layer) for layer in params.layer_list]

    def kept_counts(self, params: PyramidParams, num_image_tokens: int) -> list[int]:
        if params.ratio is not None:
            ratios = [stage_ratio(params.ratio, stage) for stage in range(1, len(params.layer_list) + 1)]
        else:
            ratios = params.image_token_ratio_list
        return [int(num_image_tokens * ratio) for ratio in ratios]

    def label(self, params: PyramidParams, position_mode: str) -> str:
        if params.ratio is not None:
            label = f"{self.series} λ={params.ratio:g}"
        else:
            label = f"{self.series} ratios " + "/".join(f"{r:g}" for r in params.image_token_ratio_list)
        if params.layer_list != self.defaults["layer_list"]:
            label += " @" + ",".join(map(str, params.layer_list))
        return label + self.position_note(position_mode)

    def describe(self, params: PyramidParams, position_mode: str) -> str:
        shape = f"lambda={params.ratio}" if params.ratio is not None else f"ratios={list(params.image_token_ratio_list)}"
        return f"{self.title}(layers={list(params.layer_list)}, {shape}, positions={position_mode})"

    def options(self, params: PyramidParams, position_mode: str) -> dict[str, str]:
        options = {"layer_list": ";".join(map(str, params.layer_list))}
        if params.ratio is not None:
            options["lambda"] = str(params.ratio)
        else:
            options["image_token_ratio_list"] = ";".join(map(str, params.image_token_ratio_list))
        return {**options, "position_mode": position_mode}


PYRAMID_KEYS = ("layer_list", "lambda", "ratio", "image_token_ratio_list", "position_mode")
RATIO_FORMS = frozenset({"ratio", "image_token_ratio_list"})

PYRAMID = PyramidDrop(
    name="pyramid", title="PyramidDrop", kind="pdrop", series="PDrop", keys=PYRAMID_KEYS,
    defaults={"layer_list": (8, 16, 24), "ratio": 0.5, "position_mode": "compact"}, params_class=PyramidParams,
    alternatives=(RATIO_FORMS,), sweep_key="lambda", budget_family="pyramid", budget_keys=("lambda", "ratio", "image_token_ratio_list"),
)
