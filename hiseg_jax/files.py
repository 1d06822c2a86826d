"""Outputs that are never seen half-written, and output locations checked before any work.

- `atomic_path(path)` / `write_text(path, text)`: a file is written under a temporary name
  beside it and renamed into place, so a reader (or a killed run) sees the old file or the
  whole new one. Every writer of a result, cache or checkpoint file uses these.
- `staged_folder(final)`: the same for a folder of files. A temporary folder beside `final`
  is renamed to `final` when the block completes; a folder rename is atomic on POSIX, so
  after a kill at any instant `final` holds either the previous complete result, nothing,
  or the new complete result. What a killed run left behind (`.<name>.partial`,
  `.<name>.old`) is removed by the next `staged_folder(final)`. The caller must be the only
  writer of `final` (hold its lock, `hiseg_jax.locks`).
- `check_output_dir(folder)` proves that `folder` can be created and written (with a probe
  file, leaving nothing behind), and `check_output_file(path, overwrite)` does the same for
  a file's folder and refuses to replace an existing file without `overwrite`. Both raise
  `OutputLocationError` (a ValueError) with one line naming the problem; commands call them
  before loading a model.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"


class OutputLocationError(ValueError):
    """An output location that cannot be created or written."""


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


def staging_paths(final: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(temporary folder, displaced previous result) of `final`: hidden siblings of it."""
    final = Path(final)
    return (
        final.with_name(f".{final.name}{PARTIAL_SUFFIX}"),
        final.with_name(f".{final.name}{OLD_SUFFIX}"),
    )


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; on normal exit, make its files durable (fsync) and
    rename it to `final`, replacing a previous `final`; on an exception, remove it.

    A previous `final` is first renamed aside and removed after the new one is in place,
    so a kill between the two renames leaves no `final` (and a stale `.old` that the next
    call removes), never a mixture.
    """
    final = Path(final)
    partial, old = staging_paths(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in (partial, old):
        _remove(stale)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        _remove(partial)
        raise
    _sync_tree(partial)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    _sync(final.parent)
    _remove(old)


def check_output_dir(folder: str | os.PathLike[str], what: str = "output folder") -> Path:
    """`folder`, once proven that it can be created and written (`_unwritable`).

    Raises OutputLocationError naming the cause: a path component that is a file, no
    permission, a read-only file system, no space left.
    """
    folder = Path(folder)
    reason = _unwritable(folder)
    if reason is not None:
        raise OutputLocationError(f"cannot write the {what} {folder}: {reason}")
    return folder


def check_output_file(
    path: str | os.PathLike[str], *, overwrite: bool = False, what: str = "output file"
) -> Path:
    """`path`, once proven that its folder can be created and written; OutputLocationError
    also when `path` is a folder, or an existing file and `overwrite` is False."""
    path = Path(path)
    if path.is_dir():
        raise OutputLocationError(f"the {what} {path} is a folder; name a file")
    if path.exists() and not overwrite:
        raise OutputLocationError(
            f"the {what} {path} already exists; pass --overwrite to replace it"
        )
    reason = _unwritable(path.parent)
    if reason is not None:
        raise OutputLocationError(f"cannot write the {what} {path}: {reason}")
    return path


def _unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be created and written, or None: creates it (and missing
    parents), writes and deletes a probe file in it, then removes the folders it created,
    so that a run failing later on other grounds leaves nothing behind."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hiseg-probe-"):
            pass
    except OSError as err:
        return _why(folder, err)
    finally:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
    return None


def _why(path: Path, err: OSError) -> str:
    """A short cause of `err` for `path`: which ancestor is a file, or the system's reason."""
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        for ancestor in (path, *path.parents):
            if ancestor.exists():
                if not ancestor.is_dir():
                    return f"{ancestor} is a file, not a folder"
                break
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return err.strerror or str(err)


def _remove(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _sync_tree(folder: Path) -> None:
    """fsync every file below `folder`, then the folders, so a rename publishes data that is
    on disk (a kill alone never needs this; a power cut does)."""
    for root, _, files in os.walk(folder):
        for name in files:
            _sync(Path(root) / name)
        _sync(Path(root))


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
