"""The drop engine: torch + transformers only, no evaluation-framework imports."""

from pdrop_eval.engine.apply import DropHandle, apply_drop
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.engine.stats import SampleDropStats

__all__ = ["DropConfig", "DropHandle", "SampleDropStats", "apply_drop"]
