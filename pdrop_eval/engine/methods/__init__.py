"""The registry of drop methods: one module per method, each a `MethodSpec` and its parameters.

Adding a method is one module (its parameters and its spec: schedule, scorer, place) and one
`register_method` call; see the README's "Adding a method". Plain Python (no torch)."""

from pdrop_eval.engine.methods.base import OPTION_KEYS, POSITION_MODES, RECORD_FIELDS, Boundary, MethodSpec, NoParams
from pdrop_eval.engine.methods.dart import DART, DART_OPTIONS
from pdrop_eval.engine.methods.fastv import FASTV, FastVParams
from pdrop_eval.engine.methods.pool import POOL, POOL_OPTIONS
from pdrop_eval.engine.methods.pyramid import PYRAMID, PyramidParams
from pdrop_eval.engine.methods.random_drop import RANDOM, RandomParams
from pdrop_eval.engine.methods.sparsevlm import SPARSEVLM, SPARSEVLM_OPTIONS
from pdrop_eval.engine.methods.vanilla import VANILLA
from pdrop_eval.engine.methods.visionzip import VISIONZIP, VISIONZIP_OPTIONS

METHODS: dict[str, MethodSpec] = {}  # in registration order: the report's row order within a model
SWEPT_METHODS: dict[str, MethodSpec] = {}  # the methods `pdrop-eval sweep` varies, by the name sweeps use: its kind


def register_method(spec: MethodSpec, options: dict | None = None) -> MethodSpec:
    """Add `spec` to `METHODS`; `options` (key -> (record field, parser)) are its option keys that
    `OPTION_KEYS` does not have yet. Returns `spec`."""
    if spec.name in METHODS:
        raise ValueError(f"a method named {spec.name!r} is already registered ({METHODS[spec.name].title})")
    for key, (field, parse) in (options or {}).items():
        if key in OPTION_KEYS and OPTION_KEYS[key][0] != field:
            raise ValueError(f"option {key!r} already sets {OPTION_KEYS[key][0]!r}, not {field!r}")
        OPTION_KEYS[key] = (field, parse)
    unknown = sorted(set(spec.keys) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"{spec.title} takes options {unknown} that no method defines: pass them as options=")
    METHODS[spec.name] = spec
    if spec.sweep_key:
        SWEPT_METHODS[spec.kind] = spec
    return spec


# The paper's order (vanilla, FastV, PDrop), the comparison methods, then the control, which takes
# any of their counts (its options include theirs, so it registers after them).
for _spec, _options in ((VANILLA, None), (FASTV, None), (PYRAMID, None), (DART, DART_OPTIONS), (VISIONZIP, VISIONZIP_OPTIONS),
                        (POOL, POOL_OPTIONS), (SPARSEVLM, SPARSEVLM_OPTIONS), (RANDOM, None)):
    register_method(_spec, options=_options)


def method_spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    return METHODS[method]


__all__ = [
    "METHODS", "OPTION_KEYS", "POSITION_MODES", "RECORD_FIELDS", "SWEPT_METHODS", "Boundary", "FastVParams", "MethodSpec",
    "NoParams", "PyramidParams", "RandomParams", "method_spec", "register_method",
]
