"""The drop engine: torch + transformers only, no evaluation-framework imports.

`DropConfig` and the method registry are plain Python; `apply_drop` and `DropHandle` import torch
and transformers on first use (after the torchvision shim of `pdrop_eval.compat`: transformers' modeling
code imports torchvision), so configs (and `pdrop_eval.budget`'s budgets) are computed without loading them.
"""

from pdrop_eval.engine.config import DropConfig

__all__ = ["DropConfig", "DropHandle", "apply_drop"]


def __getattr__(name: str):
    if name in ("DropHandle", "apply_drop"):
        from pdrop_eval.compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        from pdrop_eval.engine import apply

        return getattr(apply, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
