"""Data parallelism: host helpers here; the sharded pipeline against the single-device API in
a subprocess with 4 forced CPU devices (this process already started JAX with one)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from hiseg_jax.engine.sharding import (
    data_mesh,
    data_parallel,
    initialize_distributed,
    local_device_count,
    local_rows,
    pad_batch,
    replicate,
    shard_batch,
)

WORKER = Path(__file__).with_name("sharding_worker.py")
REPO = WORKER.parents[1]


def test_pad_batch_repeats_the_last_row():
    x = np.arange(6).reshape(3, 2)
    padded = pad_batch(x, 4)
    assert padded.shape == (4, 2)
    np.testing.assert_array_equal(padded[3], x[2])
    assert pad_batch(x, 3) is x and pad_batch(x, 1) is x
    with pytest.raises(ValueError, match="empty"):
        pad_batch(x[:0], 2)
    with pytest.raises(ValueError, match="multiple"):
        pad_batch(x, 0)


def test_single_device_mesh_round_trip():
    mesh = data_mesh()
    assert local_device_count(mesh) == jax.local_device_count()
    key = replicate(jax.random.key(3), mesh)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(3)))
    x = shard_batch(np.arange(8.0).reshape(4, 2), mesh)
    double = jax.jit(data_parallel(lambda k, v: 2 * v, mesh, (False, True)))
    np.testing.assert_array_equal(local_rows(double(key, x)), 2 * np.arange(8.0).reshape(4, 2))


def test_data_mesh_and_initialize_validate():
    with pytest.raises(ValueError, match="at least one device"):
        data_mesh([])
    assert initialize_distributed() is False  # single process: nothing to start
    with pytest.raises(ValueError, match="together"):
        initialize_distributed("localhost:1234", 2)
    with pytest.raises(ValueError, match="process_id"):
        initialize_distributed("localhost:1234", 2, 2)


def _run_worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def test_sharded_stream_equals_single_device_api():
    """4 devices, batches of 4 (one image per device): trees identical to `partition` on the
    whole set at once, BSDS scores equal to `evaluate_bsds_batch` on the unpadded GT, and
    the two batches (4, and 3 + 1 padding; two GT shapes on one canvas) share one compiled
    program."""
    result = _result(_run_worker("4"))
    assert result["devices"] == result["mesh_devices"] == 4
    assert result["batches"] == [4, 3] and result["checked"] == 7
    assert result["compiled"] == 1
    assert result["max_feature_diff"] < 1e-4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_through_jax_distributed():
    """2 processes x 2 CPU devices joined by `jax.distributed`: each streams its own images
    through the global 4-device mesh and gets exactly the single-device results."""
    coordinator = f"localhost:{_free_port()}"
    workers = [_run_worker("2", coordinator, "2", str(i)) for i in range(2)]
    results = [_result(worker) for worker in workers]
    for result in results:
        assert result["processes"] == 2 and result["local_devices"] == 2
        assert result["mesh_devices"] == 4 and result["checked"] == 7
        assert result["batches"] == [2, 2, 2, 1] and result["compiled"] == 1
