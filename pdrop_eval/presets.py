"""Named presets shipped in the package's `data/` folder: drop settings and model settings.

`pdrop_eval/data/drop_presets.yaml` maps a name (e.g. ``pdrop-0.5``, ``fastv-k2-r0.5``) to
`DropConfig.from_args` keys; `pdrop_eval/data/model_presets.yaml` maps a name (e.g. ``llava-next-7b``)
to model arguments (``pretrained``, ``dtype``, ...).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pdrop_eval.engine.config import DropConfig
from pdrop_eval.package_data import DATA_DIR

DROP_PRESETS_FILE = DATA_DIR / "drop_presets.yaml"
MODEL_PRESETS_FILE = DATA_DIR / "model_presets.yaml"


def _load(path: Path) -> dict:
    try:
        presets = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"preset file {path} is missing (pdrop-eval was installed without its package data)") from None
    if not isinstance(presets, dict) or not all(isinstance(value, dict) for value in presets.values()):
        raise ValueError(f"{path} must map preset names to mappings of settings")
    return presets


def _lookup(path: Path, kind: str, name: str) -> dict:
    presets = _load(path)
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; known: {sorted(presets)}")
    return dict(presets[name])


def drop_preset_args(name: str) -> dict:
    """The raw settings of a drop preset, `method` included."""
    return _lookup(DROP_PRESETS_FILE, "drop", name)


def drop_preset(name: str) -> DropConfig:
    return DropConfig.from_args(drop_preset_args(name))


def model_preset(name: str) -> dict:
    """Model arguments of a model preset, e.g. ``{"pretrained": ..., "dtype": "float16"}``."""
    return _lookup(MODEL_PRESETS_FILE, "model", name)


def resolve_model_args(preset: str | None, options: dict) -> dict:
    """Model arguments from an optional model preset overridden by the explicit, non-None keys."""
    explicit = {key: value for key, value in options.items() if value is not None}
    return {**(model_preset(preset) if preset else {}), **explicit}


def drop_preset_names() -> list[str]:
    return sorted(_load(DROP_PRESETS_FILE))


def model_preset_names() -> list[str]:
    return sorted(_load(MODEL_PRESETS_FILE))
