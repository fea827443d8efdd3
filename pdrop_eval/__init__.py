"""pdrop-eval: PyramidDrop and FastV for HF LLaVA models, evaluated in lmms-eval and VLMEvalKit.

Importing the package is light (no torch), so commands that only compute or read files start fast.
`apply_drop` and `DropHandle` load the engine (torch, transformers) on first use, after the torchvision
shim of `pdrop_eval.compat`; the entry points that load a framework or image processors (`adapters`,
`tiny`, the command line) install that shim themselves.
"""

__all__ = ["DropConfig", "DropHandle", "apply_drop"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from pdrop_eval import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
