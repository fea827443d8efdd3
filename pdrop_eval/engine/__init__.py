"""The drop engine: torch + transformers only, no evaluation-framework imports."""

from pdrop_eval.engine.apply import DropHandle, apply_drop
from pdrop_eval.engine.config import DropConfig

__all__ = ["DropConfig", "DropHandle", "apply_drop"]
