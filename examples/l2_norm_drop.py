"""A drop method in one file: before layer `norm_layer`, keep the image tokens whose hidden state (the
layer's input) has the largest L2 norm, `int(N * norm_keep)` of them, in their original order.

It is the worked example of the README's "Adding a method": a parameter dataclass, a scorer, a spec
(schedule, labels, options) and one `register_method` call. Import this module, then

    apply_drop(model, DropConfig.from_args("method=l2norm,norm_layer=4,norm_keep=0.25"))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pdrop_eval.engine.methods import register_method
from pdrop_eval.engine.methods.base import Boundary, MethodSpec, check_int, check_number, parse_float, parse_int
from pdrop_eval.engine.scoring import Scorer, StageView


@dataclass(frozen=True)
class NormParams:
    norm_layer: int  # drop before this decoder layer, ranked by its input
    norm_keep: float  # kept fraction of the N image tokens


class NormScorer(Scorer):
    def scores(self, view: StageView) -> torch.Tensor:
        return view.hidden.float().norm(dim=-1)  # (B, T_s): the staged loop reads the image slots only


class NormDrop(MethodSpec):
    def check(self, params: NormParams) -> None:
        if check_int("norm_layer", params.norm_layer) < 1:
            raise ValueError(f"norm_layer must be >= 1, got {params.norm_layer}")
        if not 0.0 < check_number("norm_keep", params.norm_keep) <= 1.0:
            raise ValueError(f"norm_keep must be in (0, 1], got {params.norm_keep}")

    def boundaries(self, params: NormParams, num_layers: int) -> list[Boundary]:
        if params.norm_layer >= num_layers:
            raise ValueError(f"norm_layer={params.norm_layer} must be below the model's {num_layers} layers")
        return [Boundary(score_layer=params.norm_layer, drop_layer=params.norm_layer)]

    def kept_counts(self, params: NormParams, num_image_tokens: int) -> list[int]:
        return [int(num_image_tokens * params.norm_keep)]

    def scorer(self, params: NormParams) -> Scorer:
        return NormScorer()

    def label(self, params: NormParams, position_mode: str) -> str:
        return f"{self.series} @{params.norm_layer} keep={params.norm_keep:g}" + self.position_note(position_mode)

    def describe(self, params: NormParams, position_mode: str) -> str:
        return f"{self.title}(layer={params.norm_layer}, keep={params.norm_keep}, positions={position_mode})"

    def options(self, params: NormParams, position_mode: str) -> dict[str, str]:
        return {"norm_layer": str(params.norm_layer), "norm_keep": str(params.norm_keep), "position_mode": position_mode}


L2_NORM = register_method(
    NormDrop(
        name="l2norm", title="L2-norm drop", kind="l2norm", series="L2", keys=("norm_layer", "norm_keep", "position_mode"),
        defaults={"norm_layer": 2, "norm_keep": 0.5, "position_mode": "original"}, params_class=NormParams,
    ),
    options={"norm_layer": ("norm_layer", parse_int), "norm_keep": ("norm_keep", parse_float)},
)
