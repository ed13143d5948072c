"""JSON files: checked reading of annotation files (every error names the file and the record),
and writing that never leaves a truncated file that looks complete."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mammut.data.errors import DataFormatError

logger = logging.getLogger(__name__)


def load_json(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{file}: not UTF-8 text ({error})") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{file}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from error


def write_json(path: Path, content: Any) -> None:
    """Compact JSON written to a temporary name beside ``path`` and renamed over it: an interrupted
    run leaves the old file or the new one, never a part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(content, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    os.replace(temporary, path)


def field(record: Any, key: str, kind: type, file: Path, where: str) -> Any:
    """``record[key]``, checked to be a ``kind``; the error names the file and record."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{file}: {where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DataFormatError(f"{file}: {where}: missing key {key!r}")
    value = record[key]
    # bool is an int in Python but never a valid id.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataFormatError(f"{file}: {where}: {key!r} must be {kind.__name__}, got {value!r}")
    return value


def reject(problem: str, skip_bad_samples: bool) -> None:
    if not skip_bad_samples:
        raise DataFormatError(problem)
    logger.warning("skipping bad sample: %s", problem)
