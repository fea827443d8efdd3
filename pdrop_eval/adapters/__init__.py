"""Evaluation-framework adapters over the shared `pdrop_eval.wrapper.LlavaRunner`.

`lmms` registers the lmms-eval models (entry-point group `lmms_eval.models`); the VLMEvalKit models
live beside it. Each module imports its framework, so import only the one you use.
"""

from pdrop_eval.compat import ensure_torchvision_importable

ensure_torchvision_importable()  # both frameworks import torchvision
