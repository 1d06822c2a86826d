"""Per-item locks between concurrent runs writing into one output folder (POSIX `flock`).

    lock = try_lock(path)          # a Lock, or None while another live process holds it
    ...                            # the item is ours: nobody else writes it
    lock.release()

A lock is an advisory `flock` on the file `path`, which holds the holder's PID (for
messages). The kernel drops a `flock` when its process dies, however it dies (kill -9
included), so a lock file left by a dead run is simply taken over: there is no stale-lock
timeout and no PID guessing. `release` deletes the file while still holding the lock;
`try_lock` re-checks after locking that the file it locked is still the one at `path`, so
a deleted lock file never lets two processes in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from pathlib import Path


@dataclasses.dataclass
class Lock:
    """A held lock: the lock file and its open descriptor."""

    path: Path
    fd: int

    def release(self) -> None:
        """Delete the lock file and drop the lock (idempotent)."""
        if self.fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1


def try_lock(path: str | os.PathLike[str]) -> Lock | None:
    """Take the lock `path` (creating its folder and file) without waiting; None when
    another live process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:  # released and deleted while we opened it
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return Lock(path, fd)


def clear_stale(path: str | os.PathLike[str]) -> None:
    """Delete the lock file `path` if it exists and no live process holds it (a lock left by
    a killed run)."""
    if Path(path).exists() and (lock := try_lock(path)) is not None:
        lock.release()


def holder(path: str | os.PathLike[str]) -> int | None:
    """The PID written in the lock file `path` (None if absent or not yet written)."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
