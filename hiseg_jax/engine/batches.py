"""The host side of the engine: items -> buckets -> resized, normalised, padded batches,
prepared in a background thread (`prefetch`) while the device runs the previous batch."""

from __future__ import annotations

import queue
import threading
from collections.abc import Hashable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

import jax
import numpy as np

from hiseg_jax.engine.metric import Metric
from hiseg_jax.engine.sharding import pad_batch
from hiseg_jax.features import preprocess
from hiseg_jax.models.vit import ViTConfig

T = TypeVar("T")


class Item(NamedTuple):
    """One image for the engine.

    name:    returned with its results.
    image:   uint8 [H, W, 3] RGB.
    target:  the ground truth an in-step `Metric` reads (None without a metric).
    payload: anything the caller wants back with the results (never looked at).
    """

    name: Hashable
    image: np.ndarray
    target: Any = None
    payload: Any = None


class Failure(NamedTuple):
    """An input that could not be used (e.g. an unreadable file), reported with the next
    batch; `payload` as in `Item`."""

    name: Hashable
    error: str
    payload: Any = None


class HostBatch(NamedTuple):
    """A batch ready for the device: `count` real items, then padding copies of the last.

    items:    the real items, in order.
    images:   float32 [rows, H, W, 3] preprocessed (None when the batch only reports
              failures).
    targets:  pytree of [rows, ...] arrays: collated ground truth, or None.
    failures: inputs skipped since the previous batch.
    """

    items: tuple[Item, ...]
    images: np.ndarray | None
    targets: Any
    failures: tuple[Failure, ...]

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def names(self) -> tuple[Hashable, ...]:
        return tuple(item.name for item in self.items)


def prefetch(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `iterable` in a background thread, up to `depth` items ahead of the consumer.

    An exception raised by the iterable is re-raised in the consumer; closing the generator
    stops the thread after its current item.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterable:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(("error", err))

    thread = threading.Thread(target=work, name="hiseg-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def host_batches(
    items: Iterable[Item | Failure],
    rows: int,
    size: tuple[int, int],
    vit: ViTConfig,
    metric: Metric | None = None,
) -> Iterator[HostBatch]:
    """Group items by bucket into batches of `rows` (every batch padded to `rows`, the last
    of a bucket too), resized and normalised (`features.preprocess`), with collated targets.

    Without a metric (one bucket) a `Failure` keeps its place: batch k holds the inputs
    [k rows, (k + 1) rows) that could be used, so which images share a batch does not
    depend on which others fail; a batch whose inputs all failed only reports them. With a
    metric, failures ride with the next batch. Failures left at the end come in a batch of
    their own with no images.
    """
    buffers: dict[Hashable, list[Item]] = {}
    failures: list[Failure] = []
    for item in items:
        if isinstance(item, Failure):
            failures.append(item)
            if metric is None and len(buffers.get(None, [])) + len(failures) == rows:
                yield _collate(buffers.pop(None, []), rows, size, vit, metric, failures)
                failures = []
            continue
        bucket = metric.bucket(item.target) if metric is not None else None
        buffer = buffers.setdefault(bucket, [])
        buffer.append(item)
        taken = len(buffer) + (len(failures) if metric is None else 0)
        if taken == rows:
            yield _collate(buffers.pop(bucket), rows, size, vit, metric, failures)
            failures = []
    for buffer in buffers.values():
        yield _collate(buffer, rows, size, vit, metric, failures)
        failures = []
    if failures:
        yield HostBatch((), None, None, tuple(failures))


def _collate(
    items: list[Item],
    rows: int,
    size: tuple[int, int],
    vit: ViTConfig,
    metric: Metric | None,
    failures: list[Failure],
) -> HostBatch:
    if not items:
        return HostBatch((), None, None, tuple(failures))
    images = pad_batch(preprocess([item.image for item in items], size, vit), rows)
    targets = None
    if metric is not None:
        collated = metric.collate([item.target for item in items])
        targets = jax.tree.map(lambda a: pad_batch(np.asarray(a), rows), collated)
    return HostBatch(tuple(items), images, targets, tuple(failures))
