"""Model families: everything the project knows about a family of HF vision-language models, in one
class per family (`pdrop_eval.models.family.ModelFamily`), and the lookups that find a model's family.
Importing this package loads neither torch nor transformers."""

from pdrop_eval.models.family import MROPE_3D, POSITION_SCHEMES, ROPE_1D, ModelFamily
from pdrop_eval.models.registry import (
    FAMILIES,
    FAMILY_NAMES,
    family_named,
    family_of_checkpoint,
    family_of_config,
    family_of_model,
    family_of_processor,
    read_config_json,
    supported_families,
)

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "MROPE_3D",
    "POSITION_SCHEMES",
    "ROPE_1D",
    "ModelFamily",
    "family_named",
    "family_of_checkpoint",
    "family_of_config",
    "family_of_model",
    "family_of_processor",
    "read_config_json",
    "supported_families",
]
