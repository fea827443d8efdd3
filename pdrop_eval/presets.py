"""Named presets from the repository's `configs/` folder: drop settings and model settings.

`configs/drop_presets.yaml` maps a name (e.g. ``pdrop-0.5``, ``fastv-k2-r0.5``) to `DropConfig.from_args`
keys; `configs/model_presets.yaml` maps a name (e.g. ``llava-next-7b``) to model arguments
(``pretrained``, ``dtype``, ...). The folder is found next to the package (editable installs).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pdrop_eval.engine.config import DropConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DROP_PRESETS_FILE = CONFIG_DIR / "drop_presets.yaml"
MODEL_PRESETS_FILE = CONFIG_DIR / "model_presets.yaml"


def _load(path: Path) -> dict:
    try:
        presets = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"preset file {path} is missing (presets need the repository's configs/ folder)") from None
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
