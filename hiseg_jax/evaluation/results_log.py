"""An append-only JSON-lines log that survives being killed at any instant.

Each record is one line, written with a single `write` of the whole line (newline included),
then flushed and fsynced, so a completed `append` is on disk and a kill can at worst leave
the LAST line incomplete (no final newline, or a prefix that is not valid JSON). `read`
drops such a torn last line (reporting it); `repair` truncates the file back to its last
complete line, so that appending resumes on a clean line boundary. A bad line anywhere
else is real corruption, not an interrupted write: it raises ValueError naming the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class ResultsLogError(ValueError):
    """A results log with a corrupt line that is not the last one."""


def append(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append `record` (JSON-serialisable, no NaN) as one line, flushed and fsynced."""
    line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _split(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records of the complete lines, byte length of the complete prefix)."""
    records: list[dict[str, Any]] = []
    end = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: after the last newline
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if number == len(lines) - 1 and not lines[-1]:
                break  # the last line, torn inside its own bytes before its newline landed
            raise ResultsLogError(f"{path}: line {number} is not valid JSON ({err})") from err
        if not isinstance(record, dict):
            raise ResultsLogError(f"{path}: line {number} is not a JSON object")
        records.append(record)
        end += len(line) + 1
    return records, end


def read(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """(records of every complete line, bytes of a torn last line that were ignored).
    A missing file reads as empty."""
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    records, end = _split(data, path)
    return records, len(data) - end


def repair(path: str | os.PathLike[str]) -> int:
    """Truncate a torn last line; returns the number of bytes dropped (0: file was clean)."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    _, end = _split(data, path)
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return len(data) - end
