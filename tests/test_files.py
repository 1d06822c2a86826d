"""Files are published whole by one rename (concurrent writers apart), folders survive kill -9
(staged folders), locks keep concurrent runs apart, and output locations are checked before
any work (#15 items 2 and 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hiseg_jax import files, locks
from hiseg_jax.files import OutputLocationError, check_output_dir, check_output_file

ROOT = os.geteuid() == 0


def run_python(code: str) -> subprocess.Popen:
    """Start `code` in a fresh interpreter that imports this checkout's hiseg_jax."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True
    )


# --- output locations -------------------------------------------------------------------


def test_output_dir_under_a_file_is_named(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputLocationError, match=r"afile is a file, not a folder"):
        check_output_dir(tmp_path / "afile" / "out")
    with pytest.raises(OutputLocationError, match=r"afile is a file, not a folder"):
        check_output_dir(tmp_path / "afile")
    existing = tmp_path / "existing"
    existing.mkdir()
    assert check_output_dir(existing / "new" / "deeper") == existing / "new" / "deeper"
    assert not list(existing.iterdir())  # what the check created is gone again


@pytest.mark.skipif(ROOT, reason="root writes into read-only folders")
def test_read_only_output_dir_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputLocationError, match="permission denied"):
            check_output_dir(folder / "out")
        with pytest.raises(OutputLocationError, match="permission denied"):
            check_output_dir(folder)
    finally:
        folder.chmod(0o755)


def test_output_file_checks(tmp_path):
    existing = tmp_path / "w.safetensors"
    existing.write_bytes(b"old")
    with pytest.raises(OutputLocationError, match="already exists; pass --overwrite"):
        check_output_file(existing)
    assert check_output_file(existing, overwrite=True) == existing
    with pytest.raises(OutputLocationError, match="is a folder"):
        check_output_file(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputLocationError, match="afile is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "w.safetensors")


# --- atomic files -----------------------------------------------------------------------


def test_concurrent_writers_of_one_file_never_share_a_temporary(tmp_path):
    path = tmp_path / "index.html"
    path.write_text("old")
    with files.atomic_path(path) as first, files.atomic_path(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("first")
        second.write_text("second")
        assert path.read_text() == "old"  # nothing published before a block ends
    assert path.read_text() == "first"  # the outer block ended last
    with pytest.raises(RuntimeError), files.atomic_path(path) as partial:
        partial.write_text("half")
        raise RuntimeError("failed half-way")
    files.write_text(path, "whole")
    assert path.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == [path.name]


# --- staged folders ---------------------------------------------------------------------


def test_staged_folder_publishes_complete_or_nothing(tmp_path):
    final = tmp_path / "sub" / "img"
    with files.staged_folder(final) as folder:
        (folder / "a.txt").write_text("1")
        assert not final.exists() and folder.name == ".img.partial"
    assert (final / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), files.staged_folder(final) as folder:
        (folder / "b.txt").write_text("2")
        raise RuntimeError("failed half-way")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]  # the old result, intact
    with files.staged_folder(final) as folder:
        (folder / "c.txt").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"]  # replaced whole
    assert sorted(p.name for p in final.parent.iterdir()) == ["img"]  # no leftovers


def test_kill_9_inside_a_staged_folder_leaves_no_folder_and_is_cleaned(tmp_path):
    final = tmp_path / "img"
    child = run_python(f"""
        import os, signal
        from hiseg_jax import files
        with files.staged_folder({str(final)!r}) as folder:
            (folder / "tree.json").write_text("{{}}")
            (folder / "labels.npz").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert child.wait(timeout=60) == -signal.SIGKILL
    partial, _ = files.staging_paths(final)
    assert not final.exists() and (partial / "tree.json").exists()  # what a kill leaves
    with files.staged_folder(final) as folder:
        assert not list(folder.iterdir())  # the stale partial folder was discarded
        (folder / "done.json").write_text("{}")
    assert [p.name for p in final.iterdir()] == ["done.json"] and not partial.exists()


# --- locks ------------------------------------------------------------------------------


def test_lock_excludes_a_second_holder_and_is_released(tmp_path):
    path = tmp_path / "deep" / ".img.lock"
    first = locks.try_lock(path)
    assert first is not None and locks.holder(path) == os.getpid()
    assert locks.try_lock(path) is None  # a second open file, even in this process
    first.release()
    assert not path.exists()
    second = locks.try_lock(path)
    assert second is not None
    second.release()
    second.release()  # idempotent


def test_lock_of_a_live_process_holds_and_of_a_killed_one_is_taken_over(tmp_path):
    path = tmp_path / ".img.lock"
    child = run_python(f"""
        import sys, time
        from hiseg_jax import locks
        lock = locks.try_lock({str(path)!r})
        print("locked" if lock else "busy", flush=True)
        time.sleep(120)
        """)
    try:
        assert child.stdout.readline().strip() == "locked"
        assert locks.try_lock(path) is None and locks.holder(path) == child.pid
    finally:
        child.kill()
        child.wait(timeout=60)
    assert path.exists()  # the dead run's lock file stays, but no process holds it
    deadline = time.monotonic() + 10
    taken = None
    while taken is None and time.monotonic() < deadline:
        taken = locks.try_lock(path)
    assert taken is not None and locks.holder(path) == os.getpid()
    taken.release()
