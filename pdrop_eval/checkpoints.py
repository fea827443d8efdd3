"""The small LLaVA-NeXT and Qwen2.5-VL checkpoints trained here on `pdrop_synth`, shipped as package data in
`pdrop_eval/data/checkpoints/` (so the demo runs from an installed wheel too).

How each was trained (the exact command, its time on a 2-core CPU) is in `checkpoints/README.md`
and in the ``train_summary.json`` beside the weights."""

from __future__ import annotations

from pathlib import Path

from pdrop_eval.package_data import DATA_DIR

CHECKPOINTS_DIR = DATA_DIR / "checkpoints"
SHIPPED = {
    "vanilla": "pdrop-synth-vanilla",  # trained without dropping
    "pdrop": "pdrop-synth-pdrop",  # trained with PyramidDrop λ=0.5 at 8/16/24
    "qwen2_5_vl-vanilla": "pdrop-synth-qwen2_5_vl-vanilla",  # Qwen2.5-VL, trained without dropping
}


def shipped_checkpoint(name: str) -> Path:
    """The folder of a shipped checkpoint (a name of `SHIPPED`)."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped checkpoint {name!r}; choose from {sorted(SHIPPED)}")
    path = CHECKPOINTS_DIR / SHIPPED[name]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the shipped checkpoint {path} is missing (pdrop-eval was installed without its package data)")
    return path
