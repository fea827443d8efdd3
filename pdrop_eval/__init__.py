"""pdrop-eval: PyramidDrop and FastV for HF LLaVA models, evaluated in lmms-eval and VLMEvalKit."""

from pdrop_eval.compat import ensure_torchvision_importable

ensure_torchvision_importable()

from pdrop_eval.engine import DropConfig, DropHandle, apply_drop  # noqa: E402

__all__ = ["DropConfig", "DropHandle", "apply_drop"]
__version__ = "0.1.0"
