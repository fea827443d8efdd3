"""Drop configuration: which method, its parameters, and the position convention.

A config is pure data. `DropConfig.boundaries(num_layers)` turns it into the stage boundaries the
engine executes; `kept_counts(N)` into the image tokens each stage keeps. Each method (its parameter
dataclass, schedule, scorer, labels) lives in `pdrop_eval.engine.methods`; this module parses options
into a config and writes a config back as options or as a record (statistics files).

Plain Python (no torch): the command line, the report and lmms-eval's model listing import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pdrop_eval.engine.methods import METHODS, OPTION_KEYS, POSITION_MODES, RECORD_FIELDS, SWEPT_METHODS, Boundary, MethodSpec, method_spec
from pdrop_eval.keyvalue import parse_key_values

__all__ = ["METHODS", "OPTION_KEYS", "POSITION_MODES", "SWEPT_METHODS", "Boundary", "DropConfig", "MethodSpec", "method_spec"]


@dataclass(frozen=True)
class DropConfig:
    """What to drop. Build with `pyramid()`, `fastv()`, `random()`, `none()` or `from_args()`.

    method: a key of `METHODS` ("none", "pyramid", "fastv", "random").
    params: the method's parameters (`PyramidParams`, `FastVParams`, `RandomParams`, ...); None: its defaults.
    position_mode: "compact" renumbers RoPE positions after each drop (PyramidDrop reference),
        "original" keeps each token's position (FastV reference).
    """

    method: str = "none"
    params: object = field(default=None)
    position_mode: str = "compact"

    def __post_init__(self):
        spec = self.spec
        if self.position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}")
        if self.params is None:
            object.__setattr__(self, "params", spec.default_params())
        if not isinstance(self.params, spec.params_class):
            raise TypeError(f"{spec.title} takes {spec.params_class.__name__}, got {type(self.params).__name__}")
        spec.check(self.params)

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
        params = spec.params_class(schedule_method=spec.of_schedule(schedule.spec).name, schedule=schedule.params, seed=seed)
        return cls(method=spec.name, params=params, position_mode=position_mode or schedule.position_mode)

    @classmethod
    def none(cls) -> DropConfig:
        return cls()

    @classmethod
    def _build(cls, method: str, **given) -> DropConfig:
        spec = METHODS[method]
        return cls._assemble(spec, spec.complete({name: value for name, value in given.items() if value is not None}))

    @classmethod
    def _assemble(cls, spec: MethodSpec, values: dict) -> DropConfig:
        """The config of `spec` from record fields (position_mode among them)."""
        values = dict(values)
        position_mode = values.pop("position_mode")
        return cls(method=spec.name, params=spec.make_params(values), position_mode=position_mode)

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
            elif preset_method is not None and preset_method not in method_spec(method).preset_methods():
                raise ValueError(f"the drop preset's method {preset_method!r} conflicts with the model's method {method!r}")
            values, keys = _overlay(preset_values, values, method), {**preset_keys, **keys}
        spec = method_spec(method or _infer_method(set(values)))
        spec.check_keys(keys[name] for name in values)
        return cls._assemble(spec, spec.complete(values))

    @classmethod
    def from_dict(cls, data: dict) -> DropConfig:
        """The inverse of `to_dict` (e.g. the ``drop`` entry of a statistics file)."""
        if not isinstance(data, dict):
            raise TypeError(f"a drop config dict is needed, got {data!r}")
        unknown = sorted(set(data) - {"method", "position_mode", *RECORD_FIELDS, *(field for field, _ in OPTION_KEYS.values())})
        if unknown:
            raise ValueError(f"unknown DropConfig field(s) {unknown}")
        unset = (None, [], ())  # to_dict writes the fields of other methods as null or []
        values = {name: value for name, value in data.items() if name != "method" and value not in unset}
        spec = method_spec(data.get("method", "none"))
        if "position_mode" not in values:  # files written before it was recorded: the method's default
            values["position_mode"] = spec.complete(values)["position_mode"]
        return cls._assemble(spec, values)

    def to_args(self) -> str:
        """This config as the fragment `from_args` parses (without ``method``), e.g. for --model_args."""
        return ",".join(f"{key}={value}" for key, value in self.spec.options(self.params, self.position_mode).items())

    def to_dict(self) -> dict:
        """The config as a flat record: every method's fields, another method's as null ([] for layer_list)."""
        record = {name: None for name in RECORD_FIELDS} | {"layer_list": []} | self.spec.record(self.params)
        return {"method": self.method, **record, "position_mode": self.position_mode}

    # ----- what the engine executes --------------------------------------------------------------
    def boundaries(self, num_layers: int) -> list[Boundary]:
        """The drop points for a decoder of `num_layers` layers (validated against that depth)."""
        return self.spec.check_boundaries(self.spec.boundaries(self.params, num_layers))

    def kept_counts(self, num_image_tokens: int) -> list[int]:
        """Image tokens left after each boundary, always counted from the original N."""
        return self.spec.kept_counts(self.params, num_image_tokens)

    def image_tokens_per_layer(self, num_image_tokens: int, num_layers: int) -> list[int]:
        """Image tokens each decoder layer sees for a sample with N image tokens."""
        counts = [num_image_tokens] * num_layers
        for boundary, kept in zip(self.boundaries(num_layers), self.kept_counts(num_image_tokens)):
            counts[boundary.drop_layer :] = [kept] * (num_layers - boundary.drop_layer)
        return counts

    def parts(self) -> tuple:
        """The method's (scorer, reducer) for one applied config (`pdrop_eval.engine.scoring`,
        `pdrop_eval.engine.reducers`); the scorer is None for a method that drops nothing."""
        return self.spec.parts(self.params)

    def describe(self) -> str:
        return self.spec.describe(self.params, self.position_mode)

    def label(self) -> str:
        """Short table label, e.g. "PDrop λ=0.5", "FastV K=2 R=0.5", "Random (PDrop λ=0.5)", "vanilla"."""
        return self.spec.label(self.params, self.position_mode)


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
