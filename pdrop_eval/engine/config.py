"""Drop configuration: which method, where it drops, how many image tokens survive.

A config is pure data. `DropConfig.boundaries(num_layers)` turns it into the list of stage boundaries
the engine executes, after checking the layers against the model's depth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

METHODS = ("none", "pyramid", "fastv")
POSITION_MODES = ("compact", "original")


@dataclass(frozen=True)
class Boundary:
    """One drop point: score with `score_layer`'s attention, drop just before `drop_layer` runs."""

    score_layer: int
    drop_layer: int


def _check_int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {value!r}")
    return value


def _check_number(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{field} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DropConfig:
    """What to drop. Build with `pyramid()`, `fastv()`, `none()` or `from_args()`.

    method: "none" | "pyramid" | "fastv".
    layer_list: PyramidDrop stage boundaries (0-based layer indices, strictly increasing, > 0).
    ratio: PyramidDrop λ; after boundary s, int(N * λ**s) image tokens are kept.
    image_token_ratio_list: explicit kept fractions of N per boundary (instead of λ).
    fastv_k, fastv_r: FastV drops the fraction r of image tokens before layer k, ranked by layer k-1.
    position_mode: "compact" renumbers RoPE positions after each drop (PyramidDrop reference),
        "original" keeps each token's position (FastV reference).
    """

    method: str = "none"
    layer_list: tuple[int, ...] = ()
    ratio: float | None = None
    image_token_ratio_list: tuple[float, ...] | None = None
    fastv_k: int | None = None
    fastv_r: float | None = None
    position_mode: str = "compact"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}")
        if self.method == "pyramid":
            self._check_pyramid()
        elif self.method == "fastv":
            self._check_fastv()

    def _check_pyramid(self) -> None:
        layers = tuple(_check_int("layer_list entry", layer) for layer in self.layer_list)
        if not layers:
            raise ValueError("layer_list must name at least one boundary layer")
        if layers[0] <= 0:
            raise ValueError(f"layer_list: a boundary at layer {layers[0]} drops before any layer ran; use layers >= 1")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"layer_list must be strictly increasing without duplicates, got {list(layers)}")
        if (self.ratio is None) == (self.image_token_ratio_list is None):
            raise ValueError("PyramidDrop needs exactly one of lambda (ratio) or image_token_ratio_list")
        if self.ratio is not None:
            ratio = _check_number("lambda", self.ratio)
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"lambda must be in (0, 1], got {ratio}")
        else:
            ratios = [_check_number("image_token_ratio_list entry", r) for r in self.image_token_ratio_list]
            if len(ratios) != len(layers):
                raise ValueError(
                    f"image_token_ratio_list has {len(ratios)} entries but layer_list has {len(layers)} boundaries"
                )
            if any(not 0.0 < r <= 1.0 for r in ratios):
                raise ValueError(f"image_token_ratio_list entries must be in (0, 1], got {ratios}")
            if any(b > a for a, b in zip(ratios, ratios[1:])):
                raise ValueError(f"image_token_ratio_list must not increase from stage to stage, got {ratios}")

    def _check_fastv(self) -> None:
        k = _check_int("fastv_k", self.fastv_k)
        if k < 1:
            raise ValueError(f"fastv_k must be >= 1 (it ranks with layer k-1 and drops before layer k), got {k}")
        r = _check_number("fastv_r", self.fastv_r)
        if not 0.0 <= r < 1.0:
            raise ValueError(f"fastv_r (fraction of image tokens dropped) must be in [0, 1), got {r}")

    # ----- constructors -------------------------------------------------------------------------
    @classmethod
    def pyramid(
        cls,
        layer_list=(8, 16, 24),
        ratio: float | None = 0.5,
        image_token_ratio_list=None,
        position_mode: str = "compact",
    ) -> "DropConfig":
        if image_token_ratio_list is not None:
            ratio = None
            image_token_ratio_list = tuple(image_token_ratio_list)
        return cls(
            method="pyramid",
            layer_list=tuple(layer_list),
            ratio=ratio,
            image_token_ratio_list=image_token_ratio_list,
            position_mode=position_mode,
        )

    @classmethod
    def fastv(cls, k: int = 2, r: float = 0.5, position_mode: str = "original") -> "DropConfig":
        return cls(method="fastv", fastv_k=k, fastv_r=r, position_mode=position_mode)

    @classmethod
    def none(cls) -> "DropConfig":
        return cls()

    @classmethod
    def for_budget(
        cls, budget, method: str = "pyramid", *, model="llava-1.5-7b", image_tokens: int | None = None, convention: str = "avg_layer", **shape
    ) -> "DropConfig":
        """The `method` ("pyramid" or "fastv") config closest to `budget`: 128 image tokens, "25%" of N,
        a TFLOPs figure (convention="tflops") or another DropConfig (the same FLOPs); see
        `pdrop_eval.engine.budget`. `model` is a FLOPs preset name, a checkpoint folder or a `ModelDims`;
        `image_tokens` overrides its N. `shape`: layer_list or search_layers=True (PyramidDrop),
        fastv_k (FastV), position_mode."""
        from pdrop_eval.engine import budget as budgets  # imports this module

        return budgets.solve(budget, budgets.model_dims(model, image_tokens), method, convention=convention, **shape).config

    @classmethod
    def from_args(cls, args: str | dict, method: str | None = None) -> "DropConfig":
        """Parse an lmms-eval style fragment, e.g. ``"layer_list=8;16;24,lambda=0.5"``.

        Lists use ';' or '|' between items, or ',' inside brackets (``layer_list=[8,16,24]``).
        The method comes from `method`, else from a ``method=`` key, else from the keys given.
        """
        fields = _parse_fragment(args) if isinstance(args, str) else dict(args)
        unknown = sorted(set(fields) - set(_ARG_PARSERS) - {"method"})
        if unknown:
            raise ValueError(f"unknown drop option(s) {unknown}; known: {sorted(_ARG_PARSERS) + ['method']}")
        given_method = fields.pop("method", None)
        if method is not None and given_method is not None and given_method != method:
            raise ValueError(f"method={given_method!r} conflicts with the model's method {method!r}")
        method = method or given_method or _infer_method(fields)
        values = {}
        for key, raw in fields.items():
            name, parse = _ARG_PARSERS[key]
            if name in values:
                raise ValueError(f"drop option {name!r} given twice (as {key!r})")
            try:
                values[name] = parse(raw)
            except ValueError as error:
                raise ValueError(f"bad value for drop option {key!r}: {raw!r} ({error})") from None
        if method == "none":
            if values:
                raise ValueError(f"method 'none' takes no drop options, got {sorted(values)}")
            return cls.none()
        if method == "pyramid":
            foreign = sorted(set(values) & {"fastv_k", "fastv_r"})
            if foreign:
                raise ValueError(f"PyramidDrop does not take {foreign}")
            if "image_token_ratio_list" in values:
                values.setdefault("ratio", None)
            return cls.pyramid(**values)
        if method == "fastv":
            foreign = sorted(set(values) & {"layer_list", "ratio", "image_token_ratio_list"})
            if foreign:
                raise ValueError(f"FastV does not take {foreign}")
            return cls.fastv(
                k=values.get("fastv_k", 2),
                r=values.get("fastv_r", 0.5),
                position_mode=values.get("position_mode", "original"),
            )
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "DropConfig":
        """The inverse of `to_dict` (e.g. the ``drop`` entry of a statistics file)."""
        if not isinstance(data, dict):
            raise TypeError(f"a drop config dict is needed, got {data!r}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown DropConfig field(s) {unknown}")
        values = dict(data)
        values["layer_list"] = tuple(values.get("layer_list") or ())
        if values.get("image_token_ratio_list") is not None:
            values["image_token_ratio_list"] = tuple(values["image_token_ratio_list"])
        values.setdefault("position_mode", "original" if values.get("method") == "fastv" else "compact")
        return cls(**values)

    def to_args(self) -> str:
        """This config as the fragment `from_args` parses (without ``method``), e.g. for --model_args."""
        if self.method == "pyramid":
            if self.ratio is not None:
                shape = f"lambda={self.ratio}"
            else:
                shape = "image_token_ratio_list=" + ";".join(map(str, self.image_token_ratio_list))
            return f"layer_list={';'.join(map(str, self.layer_list))},{shape},position_mode={self.position_mode}"
        if self.method == "fastv":
            return f"fastv_k={self.fastv_k},fastv_r={self.fastv_r},position_mode={self.position_mode}"
        return ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layer_list"] = list(self.layer_list)
        if self.image_token_ratio_list is not None:
            data["image_token_ratio_list"] = list(self.image_token_ratio_list)
        return data

    # ----- what the engine executes --------------------------------------------------------------
    def boundaries(self, num_layers: int) -> list[Boundary]:
        """The drop points for a decoder of `num_layers` layers (validated against that depth)."""
        if self.method == "pyramid":
            too_deep = [layer for layer in self.layer_list if layer >= num_layers]
            if too_deep:
                raise ValueError(f"layer_list {list(self.layer_list)} has layers {too_deep} beyond the model's {num_layers} layers")
            return [Boundary(score_layer=layer, drop_layer=layer) for layer in self.layer_list]
        if self.method == "fastv":
            if self.fastv_k >= num_layers:
                raise ValueError(f"fastv_k={self.fastv_k} must be below the model's {num_layers} layers")
            return [Boundary(score_layer=self.fastv_k - 1, drop_layer=self.fastv_k)]
        return []

    def kept_counts(self, num_image_tokens: int) -> list[int]:
        """Image tokens left after each boundary, always counted from the original N."""
        n = num_image_tokens
        if self.method == "pyramid":
            if self.ratio is not None:
                return [int(n * self.ratio**stage) for stage in range(1, len(self.layer_list) + 1)]
            return [int(n * r) for r in self.image_token_ratio_list]
        if self.method == "fastv":
            return [n - int(n * self.fastv_r)]
        return []

    def image_tokens_per_layer(self, num_image_tokens: int, num_layers: int) -> list[int]:
        """Image tokens each decoder layer sees for a sample with N image tokens."""
        counts = [num_image_tokens] * num_layers
        for boundary, kept in zip(self.boundaries(num_layers), self.kept_counts(num_image_tokens)):
            counts[boundary.drop_layer :] = [kept] * (num_layers - boundary.drop_layer)
        return counts

    def describe(self) -> str:
        if self.method == "pyramid":
            shape = f"lambda={self.ratio}" if self.ratio is not None else f"ratios={list(self.image_token_ratio_list)}"
            return f"PyramidDrop(layers={list(self.layer_list)}, {shape}, positions={self.position_mode})"
        if self.method == "fastv":
            return f"FastV(K={self.fastv_k}, R={self.fastv_r}, positions={self.position_mode})"
        return "no drop"


def _parse_list(raw, item):
    if isinstance(raw, (list, tuple)):
        return tuple(item(v) for v in raw)
    text = str(raw).strip().strip("[]()")
    parts = [p for p in text.replace("|", ";").replace(",", ";").replace(" ", ";").split(";") if p]
    if not parts:
        raise ValueError("empty list")
    return tuple(item(p) for p in parts)


def _parse_int(raw) -> int:
    if isinstance(raw, bool):
        raise ValueError("not an integer")
    if isinstance(raw, int):
        return raw
    return int(str(raw).strip())


def _parse_float(raw) -> float:
    if isinstance(raw, bool):
        raise ValueError("not a number")
    return float(raw)


_ARG_PARSERS = {
    "layer_list": ("layer_list", lambda raw: _parse_list(raw, _parse_int)),
    "lambda": ("ratio", _parse_float),
    "ratio": ("ratio", _parse_float),
    "image_token_ratio_list": ("image_token_ratio_list", lambda raw: _parse_list(raw, _parse_float)),
    "position_mode": ("position_mode", str),
    "fastv_k": ("fastv_k", _parse_int),
    "fastv_r": ("fastv_r", _parse_float),
}


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so ``layer_list=[8,16,24],lambda=0.5`` has two parts."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_fragment(text: str) -> dict:
    fields = {}
    for part in filter(None, (p.strip() for p in _split_top_level(text))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"drop option {part!r} is not of the form key=value")
        key = key.strip()
        if key in fields:
            raise ValueError(f"drop option {key!r} given twice")
        fields[key] = value.strip()
    return fields


def _infer_method(fields: dict) -> str:
    if {"fastv_k", "fastv_r"} & set(fields):
        return "fastv"
    if {"layer_list", "lambda", "ratio", "image_token_ratio_list"} & set(fields):
        return "pyramid"
    return "none"
