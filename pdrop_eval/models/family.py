"""`ModelFamily`: what the drop engine and the tools around it need to know about one family of HF
vision-language models, so that nothing outside `pdrop_eval.models` assumes a model's layout.

A family knows its HF classes (resolved lazily: importing this package loads neither torch nor
transformers), where the language model and the vision tower sit in a loaded model, which token ids
carry vision features, its position scheme and rotary embedding, how many image tokens an image
becomes, which picture region each image token shows, the parts training may freeze, and how to build
a tiny random checkpoint for tests. Families are registered in `pdrop_eval.models.registry`.

Configs are read through `config_value`, so a method takes a HF config object (`PretrainedConfig`, as
on a loaded model) or its dict (config.json, `PretrainedConfig.to_dict()`) alike.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from operator import attrgetter

ROPE_1D = "rope_1d"  # one position per token, rotated as in LLaMA
MROPE_3D = "mrope_3d"  # (temporal, height, width) per token, as Qwen2.5-VL's M-RoPE
POSITION_SCHEMES = (ROPE_1D, MROPE_3D)

_REQUIRED = object()


def config_value(config, key: str, default=_REQUIRED):
    """`key` of a HF config given as an object or as a dict; a missing key without `default` is a KeyError."""
    value = config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)
    if value is _REQUIRED:
        raise KeyError(key)
    return value


def transformers_class(name: str) -> type:
    """The transformers class `name`, imported now (torchvision made importable first, as transformers'
    image code needs it)."""
    from pdrop_eval.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    return getattr(importlib.import_module("transformers"), name)


class ModelFamily(ABC):
    """One family of HF vision-language models. A subclass sets the class attributes below and
    implements the abstract methods; one instance of it is registered."""

    name: str  # the HF config's model_type; also the family's name in options and statistics files
    title: str  # the family as people call it, for messages: "LLaVA-1.5"
    model_class_name: str  # the transformers class that loads a checkpoint and that the engine accepts
    processor_class_name: str  # the transformers processor class of its checkpoints
    position_scheme: str  # one of POSITION_SCHEMES
    # attribute paths from the loaded model (an instance of the model class) to its parts
    language_model_path: str  # the decoder: embed_tokens, layers, norm, rotary_emb
    vision_tower_path: str
    input_ids_module_path: str  # the module whose forward receives `input_ids` (the outer one hands them on)
    freezable_part_paths: Mapping[str, str]  # training's --freeze names -> attribute paths

    def describe(self) -> str:
        return f"{self.title} ({self.name!r})"

    # ----- classes and parts ----------------------------------------------------------------------
    def model_class(self) -> type:
        return transformers_class(self.model_class_name)

    def processor_class(self) -> type:
        return transformers_class(self.processor_class_name)

    def language_model(self, model):
        return attrgetter(self.language_model_path)(model)

    def vision_tower(self, model):
        return attrgetter(self.vision_tower_path)(model)

    def input_ids_module(self, model):
        return attrgetter(self.input_ids_module_path)(model)

    def freezable_part(self, model, name: str):
        """The part of `model` that training's ``--freeze name`` keeps as loaded (a name of freezable_part_paths)."""
        return attrgetter(self.freezable_part_paths[name])(model)

    # ----- tokens and positions -------------------------------------------------------------------
    @abstractmethod
    def image_token_ids(self, config) -> tuple[int, ...]:
        """Every token id whose embedding the model replaces by vision features (images, and video
        frames where the family has them)."""

    @abstractmethod
    def apply_rotary(self, states, cos, sin):
        """`states` (queries or keys, head_dim last) rotated by the family's rotary embedding, given
        the language model's (cos, sin) for their positions, broadcastable to `states`."""

    # ----- image tokens ---------------------------------------------------------------------------
    @abstractmethod
    def image_tokens_per_image(self, config, image_size: tuple[int, int]) -> int:
        """N of one image of `image_size` ((width, height), as PIL's `Image.size`)."""

    @abstractmethod
    def max_image_tokens(self, config) -> tuple[int, bool]:
        """(N, varies): the most image tokens one image becomes, and whether N depends on the image."""

    @abstractmethod
    def image_token_regions(self, processor, image_sizes: Sequence[tuple[int, int]], pad_to_square: bool) -> list:
        """One `pdrop_eval.models.layout.TokenRegion` per image token of a prompt showing pictures of
        `image_sizes` (each at least 1x1), in the model's token order, for this family's processor.
        `pad_to_square`: the pictures were centered on a square canvas before the processor."""

    # ----- tiny checkpoints -----------------------------------------------------------------------
    @abstractmethod
    def build_tiny_model(self, spec, text_config, tokenizer, chat_template: str) -> tuple:
        """(model, processor) of a tiny random checkpoint: the family's vision side at the widths and
        image geometry of `spec` (a `pdrop_eval.tiny.TinySpec`) around the decoder of `text_config`,
        with `tokenizer` (its ``<image>`` token included) and `chat_template`."""
