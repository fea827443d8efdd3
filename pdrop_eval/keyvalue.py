"""The one `key=value,...` parser: lmms-eval's ``--model_args``, pdrop-vlmeval's ``--model-args``,
drop options (`DropConfig.from_args`) and the ``model_args`` the report reads back from results files.

Commas inside brackets belong to the value (``layer_list=[8,16,24],lambda=0.5`` is two options);
values stay strings; a key given twice is an error, never "the last one wins".
"""

from __future__ import annotations

_OPENING, _CLOSING = "[(", "])"


def split_top_level(text: str) -> list[str]:
    """`text` split on the commas outside brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in _OPENING:
            depth += 1
        elif char in _CLOSING:
            depth = max(depth - 1, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_key_values(text: str, what: str = "option") -> dict[str, str]:
    """``"a=1,b=[2,3]"`` -> ``{"a": "1", "b": "[2,3]"}``; empty parts are skipped.

    `what` names an entry in error messages (e.g. "--model_args key").
    """
    if not isinstance(text, str):
        raise TypeError(f"{what}s must be a 'key=value,...' string, got {type(text).__name__}")
    options: dict[str, str] = {}
    for part in filter(None, (part.strip() for part in split_top_level(text))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what} {part!r} is not of the form key=value")
        if key in options:
            raise ValueError(f"{what} {key!r} given twice ({key}={options[key]} and {key}={value.strip()})")
        options[key] = value.strip()
    return options
