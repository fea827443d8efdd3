"""The registry of drop methods: one module per method, each a `MethodSpec` and its parameters.

Adding a method is one module here (its parameters, its spec: schedule, scorer, place) and one entry
in `METHODS`; see the README's "Adding a method". Plain Python (no torch)."""

from pdrop_eval.engine.methods.base import OPTION_KEYS, POSITION_MODES, RECORD_FIELDS, Boundary, MethodSpec, NoParams
from pdrop_eval.engine.methods.fastv import FASTV, FastVParams
from pdrop_eval.engine.methods.pyramid import PYRAMID, PyramidParams
from pdrop_eval.engine.methods.random_drop import RANDOM, RandomParams
from pdrop_eval.engine.methods.vanilla import VANILLA

# In the report's row order within a model (the paper's: vanilla, FastV, PDrop), then the control.
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (VANILLA, FASTV, PYRAMID, RANDOM)}
SWEPT_METHODS = {spec.kind: spec for spec in METHODS.values() if spec.sweep_key}  # by the name sweeps use: its kind


def method_spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    return METHODS[method]


__all__ = [
    "METHODS", "OPTION_KEYS", "POSITION_MODES", "RECORD_FIELDS", "SWEPT_METHODS", "Boundary", "FastVParams", "MethodSpec",
    "NoParams", "PyramidParams", "RandomParams", "method_spec",
]
