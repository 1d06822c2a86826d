"""Atomic file writes: a reader (or a killed run) sees the old file or the whole new one,
never a half-written one. Every writer of a result, cache or checkpoint file uses these."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside `path` (`.<name>.<random>.part`, hidden, unique, so
    that concurrent writers of one file never share it) to write; when the block ends
    normally it replaces `path` in one rename, otherwise it is deleted."""
    path = Path(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(descriptor)
    partial = Path(name)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")
