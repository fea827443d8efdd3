"""No drop: the stock model, run through the same prompts and batching as the drop methods."""

from pdrop_eval.engine.methods.base import MethodSpec

VANILLA = MethodSpec(name="none", title="Vanilla (no drop)", kind="vanilla", series="vanilla", keys=(), defaults={"position_mode": "compact"})
