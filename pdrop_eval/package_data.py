"""Files shipped inside the package, found with importlib.resources, so that a checkout and an installed
wheel read the same files: `data/` (drop and model presets, the paper's tables) and `tasks/` (the
lmms-eval tasks, passed to lmms-eval by folder: ``--include_path "$(python -m pdrop_eval.tasks)"``)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def package_path(*parts: str) -> Path:
    """A file or folder of the installed package as a path on disk (lmms-eval and pandas read by path)."""
    resource = files("pdrop_eval").joinpath(*parts)
    if not isinstance(resource, Path):
        raise RuntimeError(
            f"pdrop_eval/{'/'.join(parts)} is not on disk ({resource!r}): install pdrop-eval unpacked, as pip does"
        )
    return resource


DATA_DIR = package_path("data")
TASKS_DIR = package_path("tasks")
