"""Drop configuration and the registry of drop methods.

A config is pure data: which method, where it drops, how many image tokens survive.
`DropConfig.boundaries(num_layers)` turns it into the stage boundaries the engine executes.

`METHODS` holds one `MethodSpec` per method: its option keys and defaults, how it validates,
schedules and labels a config, how the engine ranks image tokens (`pdrop_eval.engine.scoring`), its
report kind and its model names in lmms-eval and VLMEvalKit. `DropConfig`, the adapters, the report
and the pipeline all read it, so adding a method is one entry here plus its ranking in `scoring`.

Plain Python (no torch): the command line, the report and lmms-eval's model listing import it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from decimal import Decimal

from pdrop_eval.keyvalue import parse_key_values

POSITION_MODES = ("compact", "original")


@dataclass(frozen=True)
class Boundary:
    """One drop point: score with `score_layer`'s attention, drop just before `drop_layer` runs."""

    score_layer: int
    drop_layer: int


# ----- option values --------------------------------------------------------------------------------
def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


def _check_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


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


def _parse_list(raw, item) -> tuple:
    """A list option: a Python list, or text with ';', '|', ',' or spaces between items, brackets optional."""
    if isinstance(raw, (list, tuple)):
        return tuple(item(value) for value in raw)
    text = str(raw).strip().strip("[]()")
    parts = [part for part in text.replace("|", ";").replace(",", ";").replace(" ", ";").split(";") if part]
    if not parts:
        raise ValueError("empty list")
    return tuple(item(part) for part in parts)


# key=value option -> (DropConfig field, parser). `lambda` and `ratio` are two names of one field.
OPTION_KEYS = {
    "layer_list": ("layer_list", lambda raw: _parse_list(raw, _parse_int)),
    "lambda": ("ratio", _parse_float),
    "ratio": ("ratio", _parse_float),
    "image_token_ratio_list": ("image_token_ratio_list", lambda raw: _parse_list(raw, _parse_float)),
    "position_mode": ("position_mode", str),
    "fastv_k": ("fastv_k", _parse_int),
    "fastv_r": ("fastv_r", _parse_float),
    "seed": ("seed", _parse_int),
}


def _stage_ratio(ratio: float, stage: int) -> float:
    """λ**stage as the decimal the paper writes: 0.6**3 is 0.216, as in the official explicit list
    [0.6, 0.36, 0.216], where the float power gives 0.21599999999999997 and N=125 would keep 26
    tokens instead of 27."""
    return float(Decimal(repr(ratio)) ** stage)


# ----- the registry -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MethodSpec:
    """One drop method. This base class is the method that drops nothing; subclasses schedule drops."""

    name: str  # DropConfig.method
    title: str  # in messages and `describe()`
    kind: str  # report kind: groups rows, names --delta sides and plot series
    series: str  # short name in table labels and plot legends
    marker: str  # matplotlib marker of its plot series
    keys: tuple[str, ...]  # the key=value options it accepts (OPTION_KEYS)
    defaults: dict  # DropConfig field values when options leave them out
    lmms_model: str  # model name in lmms-eval, and in VLMEvalKit
    lmms_class: str  # class in pdrop_eval.adapters.lmms.models (simple request path; see lmms_chat_class)
    vlmeval_class: str  # class in pdrop_eval.adapters.vlmeval, also registered in vlmeval.vlm
    default_model_preset: str  # checkpoint of a VLMEvalKit model given neither pretrained nor model_preset
    alternatives: tuple[frozenset, ...] = ()  # fields that stand for each other: giving one drops the others' defaults
    schedule_methods: tuple[str, ...] = ()  # methods whose settings (and drop presets) give this one its counts
    sweep_key: str | None = None  # the option `pdrop-eval sweep --values` varies; None: not swept

    @property
    def lmms_chat_class(self) -> str:
        return self.lmms_class + "Chat"

    @property
    def fields(self) -> frozenset:
        """The DropConfig fields its options set."""
        return frozenset(OPTION_KEYS[key][0] for key in self.keys)

    def complete(self, values: dict) -> dict:
        """DropConfig fields from `values` (fields, already parsed) plus the defaults of the missing ones."""
        defaults = dict(self.defaults)
        for group in self.alternatives:
            if group & values.keys():
                for name in group:
                    defaults.pop(name, None)
        return {**defaults, **values}

    def check_keys(self, keys) -> None:
        """Raise ValueError naming the option keys in `keys` this method does not take."""
        stray = sorted(set(keys) - set(self.keys))
        if stray:
            takes = f"its options: {list(self.keys)}" if self.keys else "it takes no drop options"
            raise ValueError(f"{self.title} does not take {stray} ({takes})")

    def check(self, config: DropConfig) -> None:
        """Raise ValueError / TypeError naming the option if `config`'s values are invalid."""

    def boundaries(self, config: DropConfig, num_layers: int) -> list[Boundary]:
        return []

    def scorer(self, config: DropConfig):
        """The `pdrop_eval.engine.scoring.Scorer` that ranks its image tokens (None: it drops nothing)."""
        return None

    def kept_counts(self, config: DropConfig, num_image_tokens: int) -> list[int]:
        return []

    def label(self, config: DropConfig) -> str:
        """Short table label; settings equal to the defaults are left unsaid."""
        return self.series

    def describe(self, config: DropConfig) -> str:
        return self.title

    def options(self, config: DropConfig) -> dict[str, str]:
        """`config` as key=value options (what `DropConfig.from_args` parses back)."""
        return {}

    def _position_note(self, config: DropConfig) -> str:
        return "" if config.position_mode == self.defaults["position_mode"] else f" ({config.position_mode} positions)"


class _AttentionRanked(MethodSpec):
    """A method that keeps the image tokens its query rows attend to most."""

    def scorer(self, config: DropConfig):
        from pdrop_eval.engine.scoring import AttentionScorer  # torch: loaded only when a model runs

        return AttentionScorer()


class _PyramidDrop(_AttentionRanked):
    def check(self, config: DropConfig) -> None:
        layers = tuple(_check_int("layer_list entry", layer) for layer in config.layer_list)
        if not layers:
            raise ValueError("layer_list must name at least one boundary layer")
        if layers[0] <= 0:
            raise ValueError(f"layer_list: a boundary at layer {layers[0]} drops before any layer ran; use layers >= 1")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"layer_list must be strictly increasing without duplicates, got {list(layers)}")
        if (config.ratio is None) == (config.image_token_ratio_list is None):
            given = "neither" if config.ratio is None else "both"
            raise ValueError(f"PyramidDrop needs exactly one of lambda (ratio) or image_token_ratio_list, got {given}")
        if config.ratio is not None:
            ratio = _check_number("lambda", config.ratio)
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"lambda must be in (0, 1], got {ratio}")
            return
        ratios = [_check_number("image_token_ratio_list entry", r) for r in config.image_token_ratio_list]
        if len(ratios) != len(layers):
            raise ValueError(f"image_token_ratio_list has {len(ratios)} entries but layer_list has {len(layers)} boundaries")
        if any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"image_token_ratio_list entries must be in (0, 1], got {ratios}")
        if any(b > a for a, b in zip(ratios, ratios[1:])):
            raise ValueError(f"image_token_ratio_list must not increase from stage to stage, got {ratios}")

    def boundaries(self, config: DropConfig, num_layers: int) -> list[Boundary]:
        too_deep = [layer for layer in config.layer_list if layer >= num_layers]
        if too_deep:
            raise ValueError(f"layer_list {list(config.layer_list)} has layers {too_deep} beyond the model's {num_layers} layers")
        return [Boundary(score_layer=layer, drop_layer=layer) for layer in config.layer_list]

    def kept_counts(self, config: DropConfig, num_image_tokens: int) -> list[int]:
        if config.ratio is not None:
            ratios = [_stage_ratio(config.ratio, stage) for stage in range(1, len(config.layer_list) + 1)]
        else:
            ratios = config.image_token_ratio_list
        return [int(num_image_tokens * ratio) for ratio in ratios]

    def label(self, config: DropConfig) -> str:
        if config.ratio is not None:
            label = f"{self.series} λ={config.ratio:g}"
        else:
            label = f"{self.series} ratios " + "/".join(f"{r:g}" for r in config.image_token_ratio_list)
        if config.layer_list != self.defaults["layer_list"]:
            label += " @" + ",".join(map(str, config.layer_list))
        return label + self._position_note(config)

    def describe(self, config: DropConfig) -> str:
        shape = f"lambda={config.ratio}" if config.ratio is not None else f"ratios={list(config.image_token_ratio_list)}"
        return f"{self.title}(layers={list(config.layer_list)}, {shape}, positions={config.position_mode})"

    def options(self, config: DropConfig) -> dict[str, str]:
        options = {"layer_list": ";".join(map(str, config.layer_list))}
        if config.ratio is not None:
            options["lambda"] = str(config.ratio)
        else:
            options["image_token_ratio_list"] = ";".join(map(str, config.image_token_ratio_list))
        return {**options, "position_mode": config.position_mode}


class _FastV(_AttentionRanked):
    def check(self, config: DropConfig) -> None:
        k = _check_int("fastv_k", config.fastv_k)
        if k < 1:
            raise ValueError(f"fastv_k must be >= 1 (it ranks with layer k-1 and drops before layer k), got {k}")
        r = _check_number("fastv_r", config.fastv_r)
        if not 0.0 <= r < 1.0:
            raise ValueError(f"fastv_r (fraction of image tokens dropped) must be in [0, 1), got {r}")

    def boundaries(self, config: DropConfig, num_layers: int) -> list[Boundary]:
        if config.fastv_k >= num_layers:
            raise ValueError(f"fastv_k={config.fastv_k} must be below the model's {num_layers} layers")
        return [Boundary(score_layer=config.fastv_k - 1, drop_layer=config.fastv_k)]

    def kept_counts(self, config: DropConfig, num_image_tokens: int) -> list[int]:
        return [num_image_tokens - int(num_image_tokens * config.fastv_r)]

    def label(self, config: DropConfig) -> str:
        return f"{self.series} K={config.fastv_k} R={config.fastv_r:g}" + self._position_note(config)

    def describe(self, config: DropConfig) -> str:
        return f"{self.title}(K={config.fastv_k}, R={config.fastv_r}, positions={config.position_mode})"

    def options(self, config: DropConfig) -> dict[str, str]:
        return {"fastv_k": str(config.fastv_k), "fastv_r": str(config.fastv_r), "position_mode": config.position_mode}


class _RandomDrop(MethodSpec):
    """The control: the per-stage counts of another method's schedule, image tokens kept at random."""

    def schedule_method(self, given: set) -> str:
        """The method whose schedule the fields `given` describe (the first one when they name none)."""
        named = [name for name in self.schedule_methods if given & (METHODS[name].fields - {"position_mode"})]
        if len(named) > 1:
            raise ValueError(
                f"{self.title} takes the counts of one schedule; got options of {' and '.join(METHODS[n].title for n in named)}"
            )
        return named[0] if named else self.schedule_methods[0]

    def schedule(self, config: DropConfig) -> DropConfig:
        method = self.schedule_method(_set_fields(config))
        values = {name: getattr(config, name) for name in METHODS[method].fields}
        return DropConfig(method=method, **values)

    def complete(self, values: dict) -> dict:
        schedule = METHODS[self.schedule_method(set(values))]
        return {**super().complete(values), **schedule.complete({k: v for k, v in values.items() if k in schedule.fields})}

    def check(self, config: DropConfig) -> None:
        if not _set_fields(config) - {"seed"}:
            raise ValueError(f"{self.title} needs a schedule: PyramidDrop's layer_list and lambda or FastV's fastv_k and fastv_r")
        seed = _check_int("seed", config.seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.schedule(config)  # validates the schedule's own values

    def boundaries(self, config: DropConfig, num_layers: int) -> list[Boundary]:
        return self.schedule(config).boundaries(num_layers)

    def kept_counts(self, config: DropConfig, num_image_tokens: int) -> list[int]:
        return self.schedule(config).kept_counts(num_image_tokens)

    def scorer(self, config: DropConfig):
        from pdrop_eval.engine.scoring import RandomScorer

        return RandomScorer(seed=config.seed)

    def label(self, config: DropConfig) -> str:
        seed = "" if config.seed == self.defaults["seed"] else f", seed {config.seed}"
        return f"{self.series} ({self.schedule(config).label()}{seed})"

    def describe(self, config: DropConfig) -> str:
        return f"{self.title}(counts of {self.schedule(config).describe()}, seed={config.seed})"

    def options(self, config: DropConfig) -> dict[str, str]:
        schedule = self.schedule(config)
        return {**schedule.spec.options(schedule), "seed": str(config.seed)}


_PYRAMID_KEYS = ("layer_list", "lambda", "ratio", "image_token_ratio_list", "position_mode")
_FASTV_KEYS = ("fastv_k", "fastv_r", "position_mode")
_RATIO_FORMS = frozenset({"ratio", "image_token_ratio_list"})

# In the report's row order within a model (the paper's: vanilla, FastV, PDrop), then the control.
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            name="none", title="Vanilla (no drop)", kind="vanilla", series="vanilla", marker="*",
            keys=(), defaults={"position_mode": "compact"},
            lmms_model="llava_next_vanilla", lmms_class="LlavaNextVanilla", vlmeval_class="LLaVAVanilla",
            default_model_preset="llava-next-7b",
        ),
        _FastV(
            name="fastv", title="FastV", kind="fastv", series="FastV", marker="s",
            keys=_FASTV_KEYS, defaults={"fastv_k": 2, "fastv_r": 0.5, "position_mode": "original"},
            sweep_key="fastv_r", lmms_model="llava_fastv", lmms_class="LlavaFastV", vlmeval_class="LLaVAFastV",
            default_model_preset="llava-1.5-7b",  # FastV's own evaluation model
        ),
        _PyramidDrop(
            name="pyramid", title="PyramidDrop", kind="pdrop", series="PDrop", marker="o",
            keys=_PYRAMID_KEYS, defaults={"layer_list": (8, 16, 24), "ratio": 0.5, "position_mode": "compact"},
            alternatives=(_RATIO_FORMS,), sweep_key="lambda",
            lmms_model="llava_next_pdrop", lmms_class="LlavaNextPDrop", vlmeval_class="LLaVAPyramidDrop",
            default_model_preset="llava-next-7b",
        ),
        _RandomDrop(
            name="random", title="Random drop", kind="random", series="Random", marker="X",
            keys=(*_PYRAMID_KEYS, "fastv_k", "fastv_r", "seed"), defaults={"seed": 0},
            alternatives=(_RATIO_FORMS,), schedule_methods=("pyramid", "fastv"),
            sweep_key="lambda",  # PyramidDrop λ's counts: the control's curve beside PyramidDrop's
            lmms_model="llava_random_drop", lmms_class="LlavaRandomDrop", vlmeval_class="LLaVARandomDrop",
            default_model_preset="llava-next-7b",
        ),
    )
}


def method_spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    return METHODS[method]


SWEPT_METHODS = {spec.kind: spec for spec in METHODS.values() if spec.sweep_key}  # by the name sweeps use: its kind


# ----- the config -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DropConfig:
    """What to drop. Build with `pyramid()`, `fastv()`, `random()`, `none()` or `from_args()`.

    method: a key of `METHODS` ("none", "pyramid", "fastv", "random").
    layer_list: PyramidDrop stage boundaries (0-based layer indices, strictly increasing, > 0).
    ratio: PyramidDrop λ; after boundary s, int(N * λ^s) image tokens are kept (λ^s as a decimal).
    image_token_ratio_list: explicit kept fractions of N per boundary (instead of λ).
    fastv_k, fastv_r: FastV drops the fraction r of image tokens before layer k, ranked by layer k-1.
    position_mode: "compact" renumbers RoPE positions after each drop (PyramidDrop reference),
        "original" keeps each token's position (FastV reference).
    seed: random drop only; with each sample's own tokens it seeds which image tokens are kept.
    A field another method uses is an error, not ignored.
    """

    method: str = "none"
    layer_list: tuple[int, ...] = ()
    ratio: float | None = None
    image_token_ratio_list: tuple[float, ...] | None = None
    fastv_k: int | None = None
    fastv_r: float | None = None
    position_mode: str = "compact"
    seed: int | None = None

    def __post_init__(self):
        spec = self.spec
        if self.position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}")
        stray = sorted(_set_fields(self) - spec.fields)
        if stray:
            raise ValueError(f"{spec.title} does not take {stray}")
        spec.check(self)

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.method)

    # ----- constructors -------------------------------------------------------------------------
    @classmethod
    def pyramid(cls, layer_list=None, ratio: float | None = None, image_token_ratio_list=None, position_mode: str | None = None) -> DropConfig:
        """PyramidDrop; defaults: layers 8/16/24, λ=0.5 unless image_token_ratio_list is given, compact positions."""
        return cls._build("pyramid", layer_list=layer_list, ratio=ratio, image_token_ratio_list=image_token_ratio_list, position_mode=position_mode)

    @classmethod
    def fastv(cls, k: int | None = None, r: float | None = None, position_mode: str | None = None) -> DropConfig:
        """FastV; defaults: K=2, R=0.5, original positions."""
        return cls._build("fastv", fastv_k=k, fastv_r=r, position_mode=position_mode)

    @classmethod
    def random(cls, schedule: DropConfig | None = None, seed: int = 0, position_mode: str | None = None) -> DropConfig:
        """The counts of `schedule` (a PyramidDrop or FastV config; default `pyramid()`) with the kept
        image tokens drawn uniformly at random, reproducibly per sample (from `seed` and the sample's
        own tokens) and nested across stages; positions as the schedule's unless `position_mode`."""
        schedule = cls.pyramid() if schedule is None else schedule
        spec = METHODS["random"]
        if schedule.method not in spec.schedule_methods:
            raise ValueError(f"random drop takes the counts of one of {spec.schedule_methods}, got a {schedule.method!r} config")
        values = {name: getattr(schedule, name) for name in schedule.spec.fields}
        return cls(method="random", **{**values, "position_mode": position_mode or schedule.position_mode, "seed": seed})

    @classmethod
    def none(cls) -> DropConfig:
        return cls()

    @classmethod
    def for_budget(
        cls, budget, method: str = "pyramid", *, model="llava-1.5-7b", image_tokens: int | None = None, convention: str = "avg_layer", **shape
    ) -> DropConfig:
        """The `method` ("pyramid" or "fastv") config closest to `budget`: 128 image tokens, "25%" of N,
        a TFLOPs figure (convention="tflops") or another DropConfig (the same FLOPs); see
        `pdrop_eval.engine.budget`. `model` is a FLOPs preset name, a checkpoint folder or a `ModelDims`;
        `image_tokens` overrides its N. `shape`: layer_list or search_layers=True (PyramidDrop),
        fastv_k (FastV), position_mode."""
        from pdrop_eval.engine import budget as budgets  # imports this module

        return budgets.solve(budget, budgets.model_dims(model, image_tokens), method, convention=convention, **shape).config

    @classmethod
    def _build(cls, method: str, **given) -> DropConfig:
        values = {name: value for name, value in given.items() if value is not None}
        return cls(method=method, **_as_field_types(METHODS[method].complete(values)))

    @classmethod
    def from_args(cls, args: str | dict, method: str | None = None, preset: dict | None = None) -> DropConfig:
        """A config from key=value options, e.g. ``"layer_list=8;16;24,lambda=0.5"`` or a dict.

        Lists use ';' or '|' between items, or ',' inside brackets (``layer_list=[8,16,24]``). The
        method is `method`, else a ``method=`` key, else the preset's, else the one whose options
        were given. `preset` (a drop preset's settings, ``method`` included) is read like `args` and
        fills in what `args` leaves out: an explicit option overrides it (``ratio`` overrides the
        preset's ``lambda``, ``image_token_ratio_list`` its λ). Another method's option is an error.
        """
        given_method, values, keys = _read_options(args, "drop option")
        if method is not None and given_method is not None and given_method != method:
            raise ValueError(f"method={given_method!r} conflicts with the model's method {method!r}")
        method = method or given_method
        if preset is not None:
            preset_method, preset_values, preset_keys = _read_options(preset, "drop preset setting")
            if method is None:
                method = preset_method
            elif preset_method is not None and preset_method not in (method, *method_spec(method).schedule_methods):
                raise ValueError(f"the drop preset's method {preset_method!r} conflicts with the model's method {method!r}")
            values, keys = _overlay(preset_values, values, method), {**preset_keys, **keys}
        spec = method_spec(method or _infer_method(set(values)))
        spec.check_keys(keys[name] for name in values)
        return cls(method=spec.name, **_as_field_types(spec.complete(values)))

    @classmethod
    def from_dict(cls, data: dict) -> DropConfig:
        """The inverse of `to_dict` (e.g. the ``drop`` entry of a statistics file)."""
        if not isinstance(data, dict):
            raise TypeError(f"a drop config dict is needed, got {data!r}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown DropConfig field(s) {unknown}")
        unset = (None, [], ())  # to_dict writes the fields of other methods as null or []
        values = {name: value for name, value in data.items() if name != "method" and value not in unset}
        spec = method_spec(data.get("method", "none"))
        if "position_mode" not in values:  # files written before it was recorded: the method's default
            values["position_mode"] = spec.complete(values)["position_mode"]
        return cls(method=spec.name, **_as_field_types(values))

    def to_args(self) -> str:
        """This config as the fragment `from_args` parses (without ``method``), e.g. for --model_args."""
        return ",".join(f"{key}={value}" for key, value in self.spec.options(self).items())

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layer_list"] = list(self.layer_list)
        if self.image_token_ratio_list is not None:
            data["image_token_ratio_list"] = list(self.image_token_ratio_list)
        return data

    # ----- what the engine executes --------------------------------------------------------------
    def boundaries(self, num_layers: int) -> list[Boundary]:
        """The drop points for a decoder of `num_layers` layers (validated against that depth)."""
        return self.spec.boundaries(self, num_layers)

    def kept_counts(self, num_image_tokens: int) -> list[int]:
        """Image tokens left after each boundary, always counted from the original N."""
        return self.spec.kept_counts(self, num_image_tokens)

    def image_tokens_per_layer(self, num_image_tokens: int, num_layers: int) -> list[int]:
        """Image tokens each decoder layer sees for a sample with N image tokens."""
        counts = [num_image_tokens] * num_layers
        for boundary, kept in zip(self.boundaries(num_layers), self.kept_counts(num_image_tokens)):
            counts[boundary.drop_layer :] = [kept] * (num_layers - boundary.drop_layer)
        return counts

    def describe(self) -> str:
        return self.spec.describe(self)

    def label(self) -> str:
        """Short table label, e.g. "PDrop λ=0.5", "FastV K=2 R=0.5", "Random (PDrop λ=0.5)", "vanilla"."""
        return self.spec.label(self)


def _set_fields(config: DropConfig) -> set:
    """The method-specific fields of `config` that hold a value."""
    return {f.name for f in fields(config) if f.name not in ("method", "position_mode") and getattr(config, f.name) != f.default}


def _as_field_types(values: dict) -> dict:
    """Lists as tuples, so that equal settings give equal (and hashable) configs."""
    return {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}


def _read_options(args: str | dict, what: str) -> tuple[str | None, dict, dict]:
    """(``method`` if given, {field: parsed value}, {field: the key it was given as})."""
    if isinstance(args, str):
        raw = parse_key_values(args, what)
    elif isinstance(args, dict):
        raw = dict(args)
    else:
        raise TypeError(f"{what}s must be a 'key=value,...' string or a dict, got {type(args).__name__}")
    method = raw.pop("method", None)
    unknown = sorted(set(raw) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; known: {sorted(OPTION_KEYS) + ['method']}")
    values, keys = {}, {}
    for key, raw_value in raw.items():
        name, parse = OPTION_KEYS[key]
        if name in values:
            raise ValueError(f"{what} {name!r} given twice (as {keys[name]!r} and {key!r})")
        try:
            values[name] = parse(raw_value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"bad value for {what} {key!r}: {raw_value!r} ({error})") from None
        keys[name] = key
    return (None if method is None else str(method)), values, keys


def _overlay(preset: dict, explicit: dict, method: str | None) -> dict:
    """`explicit` over `preset`; an explicit field also replaces the preset's alternatives to it."""
    merged = dict(preset)
    for group in METHODS[method].alternatives if method in METHODS else ():
        if group & explicit.keys():
            for name in group:
                merged.pop(name, None)
    return {**merged, **explicit}


def _infer_method(given: set) -> str:
    """The method whose options are exactly what is needed for the fields `given`: among those that
    take all of them, the one none of the others' options are a part of (none for no fields)."""
    fitting = [spec for spec in METHODS.values() if given <= spec.fields]
    narrowest = [spec for spec in fitting if not any(other.fields < spec.fields for other in fitting)]
    if len(narrowest) != 1:
        raise ValueError(f"drop options {sorted(given)} do not say which method; add method=<{'|'.join(METHODS)}>")
    return narrowest[0].name
