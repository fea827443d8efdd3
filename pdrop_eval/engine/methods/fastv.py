"""FastV (SPEC section 2): rank the image tokens with layer K-1's attention from the last prompt token
and drop the fraction R of them before layer K."""

from __future__ import annotations

from dataclasses import dataclass

from pdrop_eval.engine.methods.base import AttentionRanked, Boundary, check_int, check_number


@dataclass(frozen=True)
class FastVParams:
    """fastv_k: the drop layer K (ranked by layer K-1); fastv_r: the fraction of image tokens dropped."""

    fastv_k: int
    fastv_r: float


class FastV(AttentionRanked):
    def check(self, params: FastVParams) -> None:
        k = check_int("fastv_k", params.fastv_k)
        if k < 1:
            raise ValueError(f"fastv_k must be >= 1 (it ranks with layer k-1 and drops before layer k), got {k}")
        r = check_number("fastv_r", params.fastv_r)
        if not 0.0 <= r < 1.0:
            raise ValueError(f"fastv_r (fraction of image tokens dropped) must be in [0, 1), got {r}")

    def boundaries(self, params: FastVParams, num_layers: int) -> list[Boundary]:
        if params.fastv_k >= num_layers:
            raise ValueError(f"fastv_k={params.fastv_k} must be below the model's {num_layers} layers")
        return [Boundary(score_layer=params.fastv_k - 1, drop_layer=params.fastv_k)]

    def kept_counts(self, params: FastVParams, num_image_tokens: int) -> list[int]:
        return [num_image_tokens - int(num_image_tokens * params.fastv_r)]

    def label(self, params: FastVParams, position_mode: str) -> str:
        return f"{self.series} K={params.fastv_k} R={params.fastv_r:g}" + self.position_note(position_mode)

    def describe(self, params: FastVParams, position_mode: str) -> str:
        return f"{self.title}(K={params.fastv_k}, R={params.fastv_r}, positions={position_mode})"

    def options(self, params: FastVParams, position_mode: str) -> dict[str, str]:
        return {"fastv_k": str(params.fastv_k), "fastv_r": str(params.fastv_r), "position_mode": position_mode}


FASTV_KEYS = ("fastv_k", "fastv_r", "position_mode")

FASTV = FastV(
    name="fastv", title="FastV", kind="fastv", series="FastV", keys=FASTV_KEYS,
    defaults={"fastv_k": 2, "fastv_r": 0.5, "position_mode": "original"}, params_class=FastVParams,
    sweep_key="fastv_r", budget_family="fastv", budget_keys=("fastv_r",),
)
