"""`hiseg segment` and `hiseg evaluate` as two real processes joined by `jax.distributed` on
this machine (localhost coordinator, 2 forced CPU devices each) against one process: every
image written once with identical files, identical evaluation totals, and runs that resume
after a process was killed or lost its last batch of records.

Every run uses batches of 2 (one image per device) and shares one persistent compilation
cache, so only the first run compiles the step."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from segment_cases import SMALL_FLAGS

from hiseg_jax.evaluation.result_files import batch_files

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEVICES = 2  # forced host devices per process
COMMON = ["--batch-size", str(DEVICES), *SMALL_FLAGS]
TIMEOUT = 900  # seconds any one run may take


@pytest.fixture(scope="module")
def images(shared_data) -> list[Path]:
    """The first 8 BSDS500 val images (sorted)."""
    return sorted((shared_data / "bsds500" / "images" / "val").glob("*.jpg"))[:8]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The environment of every run: this checkout, CPU with forced devices, a shared
    persistent compilation cache."""
    cache = tmp_path_factory.mktemp("jax-cache")
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def launch(argv: list[str], env: dict[str, str], processes: int = 1) -> list[subprocess.Popen]:
    """Start `hiseg ARGV` as `processes` processes of one run (one needs no coordinator)."""
    flags = [[]]
    if processes > 1:
        address = f"localhost:{_free_port()}"
        flags = [
            ["--coordinator-address", address, "--num-processes", str(processes)]
            + ["--process-id", str(i)]
            for i in range(processes)
        ]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "hiseg_jax.cli", *argv, *extra],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for extra in flags
    ]


def finish(runs: list[subprocess.Popen], code: int = 0) -> list[str]:
    """The stdout of every process of a run, once all exited with `code`."""
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=TIMEOUT)
        assert run.returncode == code, err[-4000:]
        outputs.append(out)
    return outputs


def segment_argv(images: list[Path], out: Path, checkpoint: Path) -> list[str]:
    return ["segment", *map(str, images), "--out", str(out), "--backbone", str(checkpoint), *COMMON]


def image_files(out: Path) -> dict[str, dict[str, object]]:
    """Per image folder: its label arrays and tree.json."""
    files = {}
    for marker in sorted(out.glob("*/done.json")):
        with np.load(marker.parent / "labels.npz") as labels:
            arrays = {name: labels[name] for name in labels.files}
        files[marker.parent.name] = {
            "tree": (marker.parent / "tree.json").read_text(),
            "marker": marker.read_text(),
            **arrays,
        }
    return files


def assert_same_images(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        for key, value in want[name].items():
            np.testing.assert_array_equal(got[name][key], value, err_msg=f"{name} {key}")


def summary(outputs: list[str]) -> str:
    """The run's summary line: printed by process 0 only."""
    lines = [
        [line for line in out.splitlines() if line.startswith("hiseg segment:")] for out in outputs
    ]
    assert len(lines[0]) == 1 and not any(lines[1:]), outputs
    return lines[0][0]


@pytest.fixture(scope="module")
def single(images, env, default_checkpoint, tmp_path_factory) -> Path:
    """The 8 images segmented by one process."""
    out = tmp_path_factory.mktemp("single") / "out"
    (stdout,) = finish(launch(segment_argv(images, out, default_checkpoint), env))
    assert "8 segmented, 0 skipped" in summary([stdout])
    return out


def test_two_processes_segment_each_image_once_as_one_process(
    images, env, default_checkpoint, single, tmp_path
):
    """Process i takes images i, i + 2, ... of the sorted list: 8 images segmented in all
    (so none twice), the files of each identical to the single-process run's, one summary."""
    out = tmp_path / "out"
    outputs = finish(launch(segment_argv(images, out, default_checkpoint), env, processes=2))
    assert "8 segmented by 2 processes, 0 skipped (already done), 0 failed" in summary(outputs)
    assert_same_images(image_files(out), image_files(single))
    assert (out / "index.html").is_file()
    again = finish(launch(segment_argv(images, out, default_checkpoint), env, processes=2))
    assert "0 segmented by 2 processes, 8 skipped" in summary(again)


def test_killed_process_then_resumed_run_completes(
    images, env, default_checkpoint, single, tmp_path
):
    """Process 1 is killed (SIGKILL) once it wrote its first image; process 0, which would
    wait for it until jax.distributed's heartbeat timeout, is stopped too. The same command
    then finishes the run: every image once (finished ones untouched), files identical to
    the single-process run's, nothing left behind."""
    out = tmp_path / "out"
    argv = segment_argv(images, out, default_checkpoint)
    runs = launch(argv, env, processes=2)
    share = [path.stem for path in images][1::2]
    deadline = time.monotonic() + TIMEOUT
    while not any((out / name / "done.json").exists() for name in share):
        assert runs[1].poll() is None, runs[1].communicate()[1][-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for run in reversed(runs):
        run.send_signal(signal.SIGKILL)
        run.communicate()
    finished = {m.parent.name: m.stat().st_mtime_ns for m in out.glob("*/done.json")}
    assert 0 < len(finished) < len(images)

    outputs = finish(launch(argv, env, processes=2))
    line = summary(outputs)
    assert f"{8 - len(finished)} segmented by 2 processes, {len(finished)} skipped" in line
    assert_same_images(image_files(out), image_files(single))
    for name, mtime in finished.items():
        assert (out / name / "done.json").stat().st_mtime_ns == mtime, name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def evaluate_argv(shared_data: Path, out: Path, checkpoint: Path, prepared: Path) -> list[str]:
    return [
        "evaluate",
        "--dataset",
        "bsds500",
        "--data-dir",
        str(shared_data / "bsds500"),
        "--split",
        "val",
        "--limit",
        "8",
        "--prepared-dir",
        str(prepared),
        "--out",
        str(out),
        "--backbone",
        str(checkpoint),
        "--no-progress",
        *COMMON,
    ]


def records(out: Path) -> dict[int, dict]:
    """Every image's record from every batch file, without its timing."""
    lines = [line for path in batch_files(out) for line in path.read_text().splitlines()]
    found = [json.loads(line) for line in lines]
    assert len(found) == len({r["index"] for r in found})  # each image scored once
    return {r["index"]: {k: v for k, v in r.items() if k != "seconds"} for r in found}


def test_two_processes_evaluate_as_one_process(
    shared_data, env, default_checkpoint, tmp_path_factory
):
    """`--limit 8` by one process and by two (each preparing BSDS500 val in its own
    folder, process 0 first): the same 8 records and the same report totals, written once
    by process 0; after the last batch file of process 1 is deleted, `--resume` with two
    processes scores exactly those images again and gives the same totals."""
    root = tmp_path_factory.mktemp("evaluate")
    one = root / "one"
    finish(launch(evaluate_argv(shared_data, one, default_checkpoint, root / "prep1"), env))
    two = root / "two"
    argv = evaluate_argv(shared_data, two, default_checkpoint, root / "prep2")
    outputs = finish(launch(argv, env, processes=2))
    assert "8 images scored" in outputs[0] and "images scored" not in outputs[1]
    assert [p.name for p in batch_files(two)] == [  # process i: images i, i + 2, ...
        "p0-00000000.jsonl",
        "p0-00000004.jsonl",
        "p1-00000001.jsonl",
        "p1-00000005.jsonl",
    ]
    want = json.loads((one / "report.json").read_text())
    got = json.loads((two / "report.json").read_text())
    assert got["results"] == want["results"] and got["run"]["scored"] == 8
    assert records(two) == records(one)

    batch_files(two)[-1].unlink()
    outputs = finish(launch([*argv, "--resume"], env, processes=2))
    assert records(two) == records(one)
    assert json.loads((two / "report.json").read_text())["results"] == want["results"]
