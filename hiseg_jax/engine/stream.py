"""The engine's loop: a compiled `Step` run over a lazy iterable of images.

    host thread:  decode (the caller's lazy iterable) -> bucket -> resize + normalise -> pad
    main thread:  dispatch batch k + 1 (asynchronous) -> copy batch k's results to the host

so decoding and resizing overlap device work, and a batch's results are fetched while the
next batch runs. Every batch has the same number of rows (the last one of a bucket is padded
with copies of its last image), so nothing recompiles after the first batch of each bucket
and an image's tree does not depend on how many images share its batch. Buckets: all images
are resized to one size, so without an in-step metric there is a single bucket; with a
`Metric` the ground truth keeps its own resolution, padded to the metric's bucket shape.

`api.segment`, `hiseg segment` and `hiseg evaluate` all run through `stream`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from hiseg_jax.engine.batches import Failure, HostBatch, Item, host_batches, prefetch
from hiseg_jax.engine.step import Step, StepOutput, fetch

COMPILING = "compiling (first batch of each shape) ..."
DEFAULT_BATCH_SIZE = 4  # images per compiled batch, everywhere (API, `hiseg segment`, `evaluate`)


class BatchResult(NamedTuple):
    """`stream`'s output for one batch: its real items (in batch order), their host results
    (None for a batch that only reports failures) and the inputs skipped before it."""

    items: tuple[Item, ...]
    output: StepOutput | None
    failures: tuple[Failure, ...]

    @property
    def names(self) -> tuple[Hashable, ...]:
        return tuple(item.name for item in self.items)


def stream(
    step: Step,
    items: Iterable[Item | Failure],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    key: jax.Array | None = None,
    prefetch_depth: int = 2,
    with_features: bool = False,
    notify: Callable[[str], Any] | None = None,
) -> Iterator[BatchResult]:
    """Run `step` over `items` (a lazy iterable: its decoding runs in the prefetch thread;
    it yields a `Failure` for an input it cannot use, which is passed on, not raised).

    Batches hold `batch_size` images rounded up to a multiple of the local device count;
    results come per batch, grouped by bucket (not in input order: use the names). Batch
    k's results are copied to the host after batch k + 1 was dispatched. `notify(COMPILING)`
    is called before a batch of a new shape is dispatched (the call compiles), and
    `notify("")` once it has been. Multi-host: every process must produce the same number
    of batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    multiple = step.batch_multiple
    rows = -(-batch_size // multiple) * multiple
    prepared = host_batches(items, rows, step.image_size, step.vit, step.metric)
    shapes: set[tuple] = set()
    pending: tuple[HostBatch, StepOutput | None] | None = None
    with contextlib.closing(prefetch(prepared, prefetch_depth)) as batches:
        for batch in batches:
            out = None
            if batch.count:
                shape = _shape(batch)
                fresh = shape not in shapes and notify is not None
                if fresh:
                    notify(COMPILING)
                out = step.dispatch(batch.images, key, batch.targets)
                shapes.add(shape)
                if fresh:
                    notify("")
            if pending is not None:
                yield _finish(*pending, with_features)
            pending = (batch, out)
    if pending is not None:
        yield _finish(*pending, with_features)


def engine_settings(batch_size: int) -> dict[str, Any]:
    """What of a run, besides the images and the partition settings, can change a tree: the
    batch size and the devices (kind and count: XLA picks kernels by shape and device, and
    stage A can turn a difference in the last bits into another tree). Recorded with the
    results (`hiseg segment`'s done.json, `hiseg evaluate`'s settings.json) and compared
    when a run is resumed. The devices are this process's own (`jax.local_devices()`): each
    process of a multi-process run computes its share on them alone."""
    devices = jax.local_devices()
    return {
        "batch_size": batch_size,
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
    }


def _shape(batch: HostBatch) -> tuple:
    """What the compiled program depends on: the shapes of the batch's arrays."""
    return tuple(np.shape(a) for a in jax.tree.leaves((batch.images, batch.targets)))


def _finish(batch: HostBatch, out: StepOutput | None, with_features: bool) -> BatchResult:
    names = [item.name for item in batch.items]
    host = None if out is None else fetch(out, batch.count, names, with_features=with_features)
    return BatchResult(batch.items, host, batch.failures)
