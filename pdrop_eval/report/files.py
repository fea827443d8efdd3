"""File access for the report: every bad input names its file, nothing is overwritten unasked."""

from __future__ import annotations

import json
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


def check_writable(path: Path, force: bool) -> None:
    """Refuse to replace an existing file unless `force`."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it")


def write_text(path: Path, text: str, force: bool) -> None:
    check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
