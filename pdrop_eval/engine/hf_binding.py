"""Calling transformers by name, across its 5.x releases.

transformers renames things between releases: since 5.24 the KV cache is passed as `cache=` where
5.23 and earlier take `past_key_values=`, and model outputs carry it under the same new name. The
engine never copies an HF signature: it reads the name a function or output class uses from the
function or class itself, and says which transformers is installed and which range pdrop-eval
supports when neither name is there.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import inspect

CACHE_NAMES = ("cache", "past_key_values")  # the KV cache's name, newest release's first


class UnsupportedTransformersError(TypeError):
    """The installed transformers lacks something the engine binds to."""


@functools.cache
def supported_range() -> str:
    """The transformers requirement pdrop-eval declares (pyproject.toml), e.g. '<6,>=5.23'."""
    try:
        requirements = importlib.metadata.requires("pdrop-eval") or []
    except importlib.metadata.PackageNotFoundError:
        return "(pdrop-eval is not installed: see its pyproject.toml)"
    for requirement in requirements:
        name, _, rest = requirement.partition(" ")
        if name.startswith("transformers") and "extra ==" not in rest:
            return requirement[len("transformers") :].strip() or "any"
    return "any"


def unsupported(what: str) -> UnsupportedTransformersError:
    import transformers

    return UnsupportedTransformersError(
        f"{what}: transformers {transformers.__version__} is installed, pdrop-eval supports transformers "
        f"{supported_range()}; install a supported release (pip install -c configs/constraints.txt -e .)"
    )


@functools.cache
def cache_parameter(function) -> str:
    """The name `function` takes the KV cache under (`cache` or `past_key_values`)."""
    parameters = inspect.signature(function).parameters
    for name in CACHE_NAMES:
        if name in parameters:
            return name
    raise unsupported(f"{getattr(function, '__qualname__', function)} takes no KV cache parameter {CACHE_NAMES}")


@functools.cache
def cache_field(output_class) -> str:
    """The field an output dataclass holds the KV cache in."""
    names = {field.name for field in dataclasses.fields(output_class)}
    for name in CACHE_NAMES:
        if name in names:
            return name
    raise unsupported(f"{output_class.__name__} has no KV cache field {CACHE_NAMES}")


def pop_cache(arguments: dict):
    """Remove the KV cache from call arguments given under either name; raise if given under both."""
    given = [name for name in CACHE_NAMES if arguments.get(name) is not None]
    if len(given) > 1:
        raise ValueError(f"the KV cache was given twice, as {' and '.join(given)}")
    cache = arguments.pop(given[0]) if given else None
    for name in CACHE_NAMES:
        arguments.pop(name, None)
    return cache


def output_cache(output):
    """The KV cache a model output carries, whichever name this transformers gives it."""
    return getattr(output, cache_field(type(output)))


def cache_argument(model, cache) -> dict:
    """`{name: cache}` for calling `model` with a KV cache under the name its forward takes."""
    return {cache_parameter(type(model).forward): cache}
