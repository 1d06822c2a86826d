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
- Object stores (`gs://`, `s3://`; `as_path` gives an `etils.epath.Path` for them) have no
  rename of folders and no partial objects: `atomic_path` and `write_text` write a local
  file and upload it as one object (an object appears whole or not at all), and
  `staged_folder(final, last=MARKER)` uploads the files of the temporary folder into
  `final` after deleting the old marker, the marker `last` of all, so a reader that checks
  the marker never trusts a half-written folder.
- `remove(path)` deletes a file or a folder tree, local or on an object store, if it exists.
- `check_output_dir(folder)` proves that `folder` can be created and written (with a probe
  file, leaving nothing behind), and `check_output_file(path, overwrite)` does the same for
  a file's folder and refuses to replace an existing file without `overwrite`. Both raise
  `OutputLocationError` (a ValueError) with one line naming the problem; commands call them
  before loading a model.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from etils import epath

PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
OBJECT_STORES = {"gs": "gcsfs", "s3": "s3fs"}  # URL scheme -> the fsspec package it needs
AnyPath = Path | epath.Path  # a local path, or an object-store path from `as_path`


def as_path(location: str | os.PathLike[str]) -> AnyPath:
    """`location` as a local `Path`, or for `gs://...` and `s3://...` an `epath.Path`.

    ValueError (one line) for another URL scheme, and when the scheme's fsspec package
    (`OBJECT_STORES`) is not installed, naming it."""
    if isinstance(location, epath.Path) and not isinstance(location, Path):
        return location
    text = os.fspath(location)
    scheme, separator, _ = text.partition("://")
    if not separator:
        return Path(text)
    if scheme not in OBJECT_STORES:
        raise ValueError(f"{text}: unsupported location; use a local path, gs:// or s3://")
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError:
        package = OBJECT_STORES[scheme]
        raise ValueError(
            f"{text}: {scheme}:// needs the {package} package: pip install {package}"
        ) from None
    return epath.Path(text)


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for an object-store path (`gs://`, `s3://`)."""
    return "://" in os.fspath(path)


def absolute(path: AnyPath) -> str:
    """The absolute form of `path` as text (an object-store path is already absolute)."""
    return os.fspath(path) if is_remote(path) else str(Path(path).resolve())


def files_below(folder: AnyPath) -> Iterator[AnyPath]:
    """Every file below `folder`, hidden ones included, in no set order (local: `rglob`;
    object stores, where epath refuses `**`: one listing per folder)."""
    if not is_remote(folder):
        yield from (p for p in Path(folder).rglob("*") if p.is_file())
        return
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from files_below(entry)
        else:
            yield entry


def remove(path: AnyPath) -> None:
    """Delete a file or a folder tree if it exists (local or on an object store)."""
    if is_remote(path):
        if path.is_dir():
            path.rmtree()
        elif path.exists():
            path.unlink()
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def local_lock_path(path: AnyPath) -> Path:
    """A local file standing for the object-store `path` in `hiseg_jax.locks` (object
    stores have no locks): it keeps runs on one host apart, not runs on different hosts."""
    digest = hashlib.sha256(os.fspath(path).encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / "hiseg-locks" / f"{digest}.lock"


class OutputLocationError(ValueError):
    """An output location that cannot be created or written."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside `path` (`.<name>.<random>.part`, hidden, unique, so
    that concurrent writers of one file never share it) to write; when the block ends
    normally it replaces `path` in one rename, otherwise it is deleted. For an object-store
    `path` the temporary file is local and is uploaded as one object."""
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="hiseg-") as folder:
            local = Path(folder) / "file"
            yield local
            _upload(local, as_path(path))
        return
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
def staged_folder(final: str | os.PathLike[str], last: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; on normal exit, make its files durable (fsync) and
    rename it to `final`, replacing a previous `final`; on an exception, remove it.

    A previous `final` is first renamed aside and removed after the new one is in place,
    so a kill between the two renames leaves no `final` (and a stale `.old` that the next
    call removes), never a mixture. For an object-store `final` the folder is local and its
    files are uploaded into `final` (`_publish`), the file named `last` after all others.
    """
    if is_remote(final):
        with tempfile.TemporaryDirectory(prefix="hiseg-") as folder:
            yield Path(folder)
            _publish(Path(folder), as_path(final), last)
        return
    final = Path(final)
    partial, old = staging_paths(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in (partial, old):
        remove(stale)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        remove(partial)
        raise
    _sync_tree(partial)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    _sync(final.parent)
    remove(old)


def _upload(local: Path, path: AnyPath) -> None:
    """Copy the local file to `path` in one write (one object on an object store)."""
    with open(local, "rb") as source, path.open("wb") as target:
        shutil.copyfileobj(source, target)


def _publish(staged: Path, final: AnyPath, last: str | None) -> None:
    """Replace the object-store folder `final` with the files of `staged`: the old marker
    `last` is deleted first (the old result stops counting as finished), then the old
    folder, then every file is uploaded, `last` after all others."""
    if last is not None and (final / last).exists():
        (final / last).unlink()
    remove(final)
    files = sorted(p for p in staged.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(staged).as_posix() == last)
    for file in files:
        target = final / file.relative_to(staged).as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        _upload(file, target)


def check_output_dir(folder: str | os.PathLike[str], what: str = "output folder") -> AnyPath:
    """`folder`, once proven that it can be created and written (`_unwritable`).

    Raises OutputLocationError naming the cause: a path component that is a file, no
    permission, a read-only file system, no space left.
    """
    folder = as_path(folder)
    if is_remote(folder):
        return _check_remote(folder, what)
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


def _check_remote(folder: Any, what: str) -> Any:
    """`folder` on an object store, once a probe object was written in it and deleted."""
    probe = folder / f".hiseg-probe-{os.urandom(8).hex()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise OutputLocationError(f"cannot write the {what} {folder}: {err}") from None
    return folder


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
