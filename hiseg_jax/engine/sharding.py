"""Data parallelism: one mesh axis over every device, batch-sharded inputs, multi-host start-up.

Images are independent, so a batch is split over a 1-D mesh axis `"data"`: every device
runs the same compiled program on its slice of the batch (`data_parallel`, a `shard_map`
with no collectives), while params and the PRNG key are replicated. A device's slice is
computed exactly as a single-device run of those images would compute it.

Multi-host: every process calls `initialize_distributed` before any other JAX call, builds
the same `data_mesh()` (it spans the devices of all processes) and feeds its OWN images:
`shard_batch` turns the process-local batch into the global array, `local_rows` gives back
this process's rows of a result. All processes must run the same number of steps with the
same local batch size (the program is launched on every device at once).

    mesh = data_mesh()
    x = shard_batch(pad_batch(images, local_device_count(mesh)), mesh)
    out = jax.jit(data_parallel(fn, mesh, (False, True)))(replicate(params, mesh), x)
    rows = local_rows(out)[:len(images)]

The commands (`hiseg segment`, `hiseg evaluate`) run the other way: each process takes its
`process_share` of the inputs and runs it on a `local_mesh` (its own devices only), so no
step waits for another host and shares may differ in length (images already done, files
that fail); the processes meet only at a `barrier` and to `gather` counts, through the
coordination service of `jax.distributed` (no device involved).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
T = TypeVar("T")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto_detect: bool = False,
) -> bool:
    """Start `jax.distributed` for a multi-process run; True when this call started it.

    Call it first, before any array is created. Without arguments and `auto_detect=False`
    it does nothing (a single-process run needs no coordinator). With `auto_detect=True`
    JAX reads the cluster environment (SLURM, Open MPI, Cloud TPU, ...); otherwise pass all
    three of `coordinator_address` ("host:port" of process 0), `num_processes` and
    `process_id`. A second call is a no-op.
    """
    given = (coordinator_address, num_processes, process_id)
    if jax.distributed.is_initialized() or (not auto_detect and given == (None, None, None)):
        return False
    if not auto_detect:
        if None in given:
            raise ValueError(
                "pass coordinator_address, num_processes and process_id together "
                f"(or auto_detect=True), got {given}"
            )
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"need num_processes >= 1 and 0 <= process_id < num_processes, "
                f"got {num_processes} and {process_id}"
            )
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def process_share(items: Sequence[T]) -> list[T]:
    """This process's share of `items` (the same sequence in every process): every
    `jax.process_count()`-th item from index `jax.process_index()`, so each item goes to
    exactly one process and shares differ in length by at most one."""
    return list(items)[jax.process_index() :: jax.process_count()]


WAIT_MS = 20 * 24 * 3600 * 1000  # a barrier waits this long (20 days) for the slowest share
_calls = itertools.count()  # every process makes the same calls in the same order


def barrier(name: str) -> None:
    """Wait until every process reached the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        _client().wait_at_barrier(f"hiseg/{name}/{next(_calls)}", WAIT_MS)


def gather(values: np.ndarray) -> np.ndarray:
    """Every process's `values` (same shape everywhere; integers or floats) stacked as
    `[processes, ...]`, in process order, in every process."""
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values[None]
    client, key = _client(), f"hiseg/gather/{next(_calls)}"
    client.key_value_set(f"{key}/{jax.process_index()}", json.dumps(values.tolist()))
    rows = [
        json.loads(client.blocking_key_value_get(f"{key}/{i}", WAIT_MS))
        for i in range(jax.process_count())
    ]
    return np.asarray(rows, values.dtype)


def _client() -> Any:
    """The `jax.distributed` coordination client: barriers and a key-value store that wait
    as long as asked and need no device. Device collectives (`multihost_utils`) do not fit:
    processes reach the end of their shares minutes apart, and on CPU gloo gives up after
    30 s. JAX has no public accessor; orbax reads it the same way."""
    from jax._src import distributed  # see the docstring

    if distributed.global_state.client is None:
        raise RuntimeError("jax.distributed is not initialized")
    return distributed.global_state.client


def local_mesh() -> Mesh:
    """`data_mesh` over this process's devices only: steps on it need no other process."""
    return data_mesh(jax.local_devices())


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis `"data"` over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def local_device_count(mesh: Mesh) -> int:
    """Devices of the mesh owned by this process: local batches must be a multiple of it."""
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def pad_batch(x: np.ndarray, multiple: int) -> np.ndarray:
    """`x [b, ...]` padded to a multiple of `multiple` rows with copies of its last row.

    Copies of a real row (not zeros) keep the padded rows valid inputs; their results are
    dropped by slicing `[:b]`.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if x.shape[0] == 0:
        raise ValueError("cannot pad an empty batch")
    extra = -x.shape[0] % multiple
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x


def shard_batch(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's batch `[b, ...]` -> the global array `[b * processes, ...]` split on
    axis 0 (b a multiple of `local_device_count(mesh)`)."""
    local = local_device_count(mesh)
    if x.shape[0] % local:
        raise ValueError(
            f"local batch of {x.shape[0]} is not a multiple of the {local} local devices; "
            "use pad_batch"
        )
    return jax.make_array_from_process_local_data(batch_sharding(mesh), x)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of `tree` copied to every device of the mesh (same value everywhere).

    Goes through the host so that it also works for meshes spanning several processes; the
    leaves must hold the same values in every process (e.g. params loaded from one file).
    """
    sharding = replicated_sharding(mesh)

    def put(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(leaf))
            impl = jax.random.key_impl(leaf)
            return jax.random.wrap_key_data(_replicated_array(data, sharding), impl=impl)
        return _replicated_array(np.asarray(leaf), sharding)

    return jax.tree.map(put, tree)


def _replicated_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order, as one host array."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[start].data) for start in sorted(shards)])


def data_parallel(fn: Callable, mesh: Mesh, batched: Sequence[bool]) -> Callable:
    """`fn(*args)` run on every device on its slice of the batch, with no communication.

    `batched[i]` says whether argument i has the batch as leading axis (split over
    `"data"`) or is replicated (params, key). Every output must have the batch as leading
    axis. Wrap the result in `jax.jit`.
    """
    specs = tuple(P(DATA_AXIS) if b else P() for b in batched)
    # check_vma off: loops in `fn` mix replicated constants with per-device values in their
    # carries, which the type check rejects although no collective is involved.
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(DATA_AXIS), check_vma=False)
