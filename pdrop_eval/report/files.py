"""File access for the report: every bad input names its file, nothing is overwritten unasked."""

from __future__ import annotations

import json
import os
from pathlib import Path


class ReportInputError(ValueError):
    """An input file the report cannot use; the message names the file and what is wrong."""


class OutputExistsError(ValueError):
    """An output file exists and --force was not given."""


def read_json_object(path: Path, what: str) -> dict:
    """Parse `path` as a JSON object; `what` says what the file should be, for the message."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportInputError(f"{path}: not a text file, expected {what}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportInputError(f"{path}: corrupt JSON ({error}), expected {what}") from None
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: holds a JSON {type(data).__name__}, expected {what}")
    return data


def require(data: dict, path: Path, what: str, *keys: str) -> None:
    """Fail with the file's name when `data` lacks any of `keys` (a partial or foreign file)."""
    missing = [key for key in keys if key not in data]
    if missing:
        raise ReportInputError(f"{path}: not a complete {what} (missing {', '.join(map(repr, missing))})")


class OutputPathError(ValueError):
    """An output path that cannot be written (a folder, below a file, read-only)."""


def check_writable(path: Path, force: bool) -> None:
    """Refuse, before any work is done, an output file that exists (unless `force`) or that cannot be
    written: a folder, a path below a file, or a place without write permission."""
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot write {path}: {ancestor} is a file, not a folder")
    if not os.access(path if path.exists() else ancestor, os.W_OK):
        raise OutputPathError(f"cannot write {path}: {path if path.exists() else ancestor} is not writable")


def write_text(path: Path, text: str, force: bool) -> None:
    check_writable(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise OutputPathError(f"cannot write {path}: {error.strerror or error}") from None
