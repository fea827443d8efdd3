"""The supported model families, and which family a model, config, checkpoint folder or processor
belongs to. Anything else is refused with an error naming the supported families."""

from __future__ import annotations

import json
from pathlib import Path

from pdrop_eval.models.family import ModelFamily, config_value
from pdrop_eval.models.llava import LlavaFamily
from pdrop_eval.models.llava_next import LlavaNextFamily
from pdrop_eval.models.llava_onevision import LlavaOnevisionFamily
from pdrop_eval.models.qwen2_5_vl import Qwen2_5_VLFamily

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (LlavaFamily(), LlavaNextFamily(), Qwen2_5_VLFamily(), LlavaOnevisionFamily())}
FAMILY_NAMES = tuple(FAMILIES)  # the HF model_type of each supported family


def supported_families() -> str:
    """"LLaVA-1.5 ('llava'), LLaVA-NeXT ('llava_next')", for error messages."""
    return ", ".join(family.describe() for family in FAMILIES.values())


def family_named(name: str) -> ModelFamily:
    """The family whose name (HF model_type) is `name`."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; supported: {supported_families()}")
    return FAMILIES[name]


def family_of_config(config, source: str = "this") -> ModelFamily:
    """The family of a HF config (object or dict) by its model_type; `source` names the checkpoint in errors."""
    model_type = config_value(config, "model_type", None)
    if not model_type:
        raise ValueError(f"{source} has no model_type in its config; supported: {supported_families()}")
    if model_type not in FAMILIES:
        raise ValueError(f"{source} is a {model_type!r} checkpoint; supported: {supported_families()}")
    return FAMILIES[model_type]


def read_config_json(path: str | Path) -> dict:
    """A HF config.json as a dict; `path` is the file or the checkpoint folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no model config at {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a model config (a JSON object)")
    return config


def family_of_checkpoint(folder: str | Path) -> ModelFamily:
    """The family of a local checkpoint folder, from its config.json (nothing else is read)."""
    return family_of_config(read_config_json(folder), source=str(folder))


def family_of_model(model) -> ModelFamily:
    """The family whose model class `model` is an instance of."""
    for family in FAMILIES.values():
        if isinstance(model, family.model_class()):
            return family
    classes = ", ".join(f"{family.title} ({family.model_class_name})" for family in FAMILIES.values())
    raise TypeError(f"{type(model).__name__} is not a model of a supported family; supported: {classes}")


def family_of_processor(processor) -> ModelFamily:
    """The family whose processor class `processor` is an instance of."""
    for family in FAMILIES.values():
        if isinstance(processor, family.processor_class()):
            return family
    names = " or ".join(family.processor_class_name for family in FAMILIES.values())
    raise TypeError(f"expected a {names}, got {type(processor).__name__}")
