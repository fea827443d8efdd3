"""What every drop method is made of, and the key=value option vocabulary they share.

A method is a `MethodSpec` plus a frozen dataclass of its own parameters. The spec is the method's
*schedule* (`boundaries`: where it drops; `kept_counts`: how many image tokens survive each boundary),
names its *scorer* (`scorer`: how image tokens are ranked, `pdrop_eval.engine.scoring`) and its
*place* (`PLACE_LANGUAGE_MODEL`: before a decoder layer, inside the language model); the staged
prefill's reducer keeps the best-scored tokens in their original order. It also parses, validates,
labels and describes a config of its method, and says which option `pdrop-eval sweep` varies.

Plain Python (no torch): the command line, the report and lmms-eval's model listing import it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from decimal import Decimal
POSITION_MODES = ("compact", "original")
PLACE_LANGUAGE_MODEL = "language_model"  # dropped before a decoder layer, scored by the layers before it
PLACE_BEFORE_LANGUAGE_MODEL = "before_language_model"  # on the vision side: no decoder layer sees the dropped tokens
PLACES = (PLACE_LANGUAGE_MODEL, PLACE_BEFORE_LANGUAGE_MODEL)


@dataclass(frozen=True)
class Boundary:
    """One drop point: score at `score_layer` (its input, its attention), drop just before `drop_layer`
    runs. `score_layer` None: scored on the language model's input embeddings, before any layer, which
    is where a vision-side method drops (`drop_layer` 0: `Boundary.before_language_model()`)."""

    score_layer: int | None
    drop_layer: int

    @classmethod
    def before_language_model(cls) -> Boundary:
        return cls(score_layer=None, drop_layer=0)


# ----- option values --------------------------------------------------------------------------------
def check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


def check_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def parse_int(raw) -> int:
    if isinstance(raw, bool):
        raise ValueError("not an integer")
    if isinstance(raw, int):
        return raw
    return int(str(raw).strip())


def parse_float(raw) -> float:
    if isinstance(raw, bool):
        raise ValueError("not a number")
    return float(raw)


def parse_list(raw, item) -> tuple:
    """A list option: a Python list, or text with ';', '|', ',' or spaces between items, brackets optional."""
    if isinstance(raw, (list, tuple)):
        return tuple(item(value) for value in raw)
    text = str(raw).strip().strip("[]()")
    parts = [part for part in text.replace("|", ";").replace(",", ";").replace(" ", ";").split(";") if part]
    if not parts:
        raise ValueError("empty list")
    return tuple(item(part) for part in parts)


# key=value option -> (parameter field, parser). `lambda` and `ratio` are two names of one field.
# The field names are also the keys of a config's record (`DropConfig.to_dict`, statistics files).
# `pdrop_eval.engine.methods.register_method` adds the options of a new method.
OPTION_KEYS = {
    "layer_list": ("layer_list", lambda raw: parse_list(raw, parse_int)),
    "lambda": ("ratio", parse_float),
    "ratio": ("ratio", parse_float),
    "image_token_ratio_list": ("image_token_ratio_list", lambda raw: parse_list(raw, parse_float)),
    "position_mode": ("position_mode", str),
    "fastv_k": ("fastv_k", parse_int),
    "fastv_r": ("fastv_r", parse_float),
    "seed": ("seed", parse_int),
}
RECORD_FIELDS = ("layer_list", "ratio", "image_token_ratio_list", "fastv_k", "fastv_r", "seed")  # every record has them


def stage_ratio(ratio: float, stage: int) -> float:
    """λ**stage as the decimal the paper writes: 0.6**3 is 0.216, as in the official explicit list
    [0.6, 0.36, 0.216], where the float power gives 0.21599999999999997 and N=125 would keep 26
    tokens instead of 27."""
    return float(Decimal(repr(ratio)) ** stage)


def as_field_types(values: dict) -> dict:
    """Lists as tuples, so that equal settings give equal (and hashable) parameters."""
    return {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}


@dataclass(frozen=True)
class NoParams:
    """The parameters of a method that drops nothing."""


@dataclass(frozen=True, eq=False)
class MethodSpec:
    """One drop method. This base class is the method that drops nothing; subclasses schedule drops.

    The methods below take the method's parameters (`params_class`) and the config's position mode."""

    name: str  # DropConfig.method
    title: str  # in messages and `describe()`
    kind: str  # report kind: groups rows, names --delta sides and plot series
    series: str  # short name in table labels and plot legends
    keys: tuple[str, ...]  # the key=value options it accepts (OPTION_KEYS)
    defaults: dict  # parameter values (and position_mode) when options leave them out
    params_class: type = NoParams
    alternatives: tuple[frozenset, ...] = ()  # fields that stand for each other: giving one drops the others' defaults
    sweep_key: str | None = None  # the option `pdrop-eval sweep --values` varies; None: not swept
    # How a token or TFLOPs budget is solved (pdrop_eval.budget): "pyramid" (λ), "fastv" (R), or "count"
    # (`budget_fields` turns a kept image-token count into its options); None: it takes no budget.
    budget_family: str | None = None
    budget_keys: tuple[str, ...] = ()  # the options a budget sets itself (refused beside budget=...)
    place: str = PLACE_LANGUAGE_MODEL  # PLACES: where its boundaries may be

    def __post_init__(self):
        if self.place not in PLACES:
            raise ValueError(f"{self.title}: place must be one of {PLACES}, got {self.place!r}")

    def check_boundaries(self, boundaries: list[Boundary]) -> list[Boundary]:
        """`boundaries` if they lie where the method's place says (a vision-side method drops before
        the language model only); otherwise a ValueError naming the method."""
        before = [boundary == Boundary.before_language_model() for boundary in boundaries]
        if any(before) != (self.place == PLACE_BEFORE_LANGUAGE_MODEL) or (any(before) and len(boundaries) != 1):
            raise ValueError(f"{self.title} drops at {self.place} but its schedule gives {boundaries}")
        return boundaries

    @property
    def fields(self) -> frozenset:
        """The fields its options set (position_mode included)."""
        return frozenset(OPTION_KEYS[key][0] for key in self.keys)

    def complete(self, values: dict) -> dict:
        """Fields from `values` (already parsed) plus the defaults of the missing ones."""
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

    def make_params(self, values: dict):
        """Its parameters from record fields (position_mode excluded); another method's field is an error."""
        stray = sorted(set(values) - (self.fields - {"position_mode"}))
        if stray:
            raise ValueError(f"{self.title} does not take {stray}")
        return self.params_class(**as_field_types(values))

    def budget_method(self, fields) -> str | None:
        """The method whose schedule a budget solves, given the option fields of a config (None: it takes no budget)."""
        return self.name if self.budget_family else None

    def budget_fields(self, count: int) -> dict:
        """"count" budget family: the options that keep `count` image tokens (e.g. {"pool_tokens": 64})."""
        raise NotImplementedError(f"{self.title} solves no token count")

    def budget_counts(self, num_image_tokens: int, shape: dict):
        """"count" budget family: the counts a budget may solve to, fewest first (a range or a list);
        `shape`: the method's other options given with the budget."""
        return range(1, num_image_tokens + 1)

    def preset_methods(self) -> tuple[str, ...]:
        """The methods whose drop presets give this one its settings."""
        return (self.name,)

    def default_params(self):
        """Its parameters when a config names the method only (its defaults)."""
        values = self.complete({})
        values.pop("position_mode", None)
        return self.make_params(values)

    def record(self, params) -> dict:
        """The parameters as record fields (lists for tuples), the inverse of `make_params`."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in dataclasses.asdict(params).items()}

    def check(self, params) -> None:
        """Raise ValueError / TypeError naming the option if the parameter values are invalid."""

    def boundaries(self, params, num_layers: int) -> list[Boundary]:
        return []

    def kept_counts(self, params, num_image_tokens: int) -> list[int]:
        return []

    def scorer(self, params):
        """The `pdrop_eval.engine.scoring.Scorer` that ranks its image tokens (None: it drops nothing)."""
        return None

    def parts(self, params) -> tuple:
        """(scorer, reducer) for one applied config: `scorer(params)` and `reducer(params)`, unless a
        method builds the two around a shared object (e.g. the vision features its scorer captured)."""
        return self.scorer(params), self.reducer(params)

    def reducer(self, params):
        """The `pdrop_eval.engine.reducers.Reducer` that keeps (or merges) the scored tokens."""
        from pdrop_eval.engine.reducers import SelectTop  # torch: loaded only when a model runs

        return SelectTop()

    def label(self, params, position_mode: str) -> str:
        """Short table label; settings equal to the defaults are left unsaid."""
        return self.series

    def describe(self, params, position_mode: str) -> str:
        return self.title

    def options(self, params, position_mode: str) -> dict[str, str]:
        """The parameters as key=value options (what `DropConfig.from_args` parses back)."""
        return {}

    def position_note(self, position_mode: str) -> str:
        return "" if position_mode == self.defaults["position_mode"] else f" ({position_mode} positions)"


class AttentionRanked(MethodSpec):
    """A method that keeps the image tokens its query rows attend to most."""

    def scorer(self, params):
        from pdrop_eval.engine.scoring import AttentionScorer  # torch: loaded only when a model runs

        return AttentionScorer()
