"""The throughput path: one compiled step per batch, data parallel, fed by a prefetch thread.

`make_step` compiles backbone -> patch features -> partitioner (-> metrics during
evaluation) into ONE jitted program, split over the devices of a mesh by `sharding`
(each device runs its slice of the batch; no communication). `stream` runs it over an
iterable of images:

    host thread:  decode (lazy iterable) -> bucket -> resize + normalise -> pad   (prefetch)
    main thread:  dispatch batch k + 1 (asynchronous) -> copy batch k's results to the host

so decoding and resizing overlap device work, and a batch's results are fetched while the
next batch runs. Every batch of a bucket has the same shape (the last one is padded with
copies of its last image), so nothing recompiles after the first batch of each bucket.
Buckets: all images are resized to one size, so without metrics there is a single bucket;
with a `Metric` the ground truth keeps its own resolution, padded to the metric's bucket
shape (`bsds_metric`: a square canvas, so BSDS's two orientations share one program).

Results equal `partition(extract_features(model, preprocess(images)))`: every image uses
the same key, so its tree depends only on its features. Those can differ in the last bits
with the batch layout (XLA picks kernels by shape; ~1e-6 seen in the tests, where the trees
were identical).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import threading
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hiseg_jax.engine.sharding import (
    data_mesh,
    data_parallel,
    local_device_count,
    local_rows,
    pad_batch,
    replicate,
    shard_batch,
)
from hiseg_jax.features import FEATURE_KINDS, FeatureKind, image_size, preprocess
from hiseg_jax.metrics.checks import raise_for_violations
from hiseg_jax.metrics.regions import TreePrediction
from hiseg_jax.metrics.scores import BSDSScores, _score_bsds
from hiseg_jax.models.vit import ViT, ViTConfig, make_apply
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.spectral.partition import StageBSolver, _partition_batch
from hiseg_jax.tree import Tree
from hiseg_jax.weights.checkpoint import load_backbone

BackboneDType = Literal["float32", "bfloat16"]
BACKBONE_DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
T = TypeVar("T")


class Metric(NamedTuple):
    """How an evaluation step scores its trees inside the compiled program.

    score:   traced `(tree, targets) -> (scores, violations int [B, V])`; `targets` is the
             collated pytree; every leaf of `scores` has the batch as leading axis;
             `violations` counts bad input (see `metrics.checks.raise_for_violations`),
             raised on the host after the step.
    collate: host `list of per-image targets -> pytree of arrays [b, ...]`, one shape per
             bucket.
    bucket:  host `target -> hashable` key; targets of one key collate to one shape.
    """

    score: Callable[[Tree, Any], tuple[Any, jax.Array]]
    collate: Callable[[Sequence[Any]], Any]
    bucket: Callable[[Any], Hashable]


class StepOutput(NamedTuple):
    """One batch's results (device arrays from `Step.dispatch`, host arrays from `fetch`).

    tree:     the batched `Tree` over the patch grid.
    features: float32 [B, h, w, E] patch features (cast back from bfloat16 if used).
    finite:   bool [B] the image's features are finite (a non-finite image is partitioned
              as a constant one and `fetch` raises ValueError naming it).
    scores:   the metric's scores, or None without a metric.
    violations: int32 [B, V] metric input violations, or None.
    """

    tree: Tree
    features: jax.Array | None
    finite: jax.Array
    scores: Any = None
    violations: jax.Array | None = None


class Item(NamedTuple):
    """One image for `stream`: a name (returned with its results), uint8 [H, W, 3] RGB and
    the ground truth the metric reads (None without a metric)."""

    name: Hashable
    image: np.ndarray
    target: Any = None


class HostBatch(NamedTuple):
    """A batch ready for the device: `count` real images, then padding copies."""

    names: tuple[Hashable, ...]
    images: np.ndarray  # float32 [rows, H, W, 3] preprocessed
    targets: Any  # pytree of [rows, ...] arrays: collated ground truth, or None
    count: int


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Every floating-point leaf of `tree` cast to `dtype` (integer leaves untouched)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def backbone_features(
    apply: Callable, params: Any, images: jax.Array, kind: FeatureKind, dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """Traced backbone in `dtype` (params must already be in it): images [B, H, W, 3] ->
    (float32 features [B, h, w, E], bool [B] all of the image's features finite)."""
    tokens, aux = apply(params, images.astype(dtype))
    features = (tokens if kind == "tokens" else aux["keys"]).astype(jnp.float32)
    finite = jnp.isfinite(features).reshape(features.shape[0], -1).all(axis=1)
    return features, finite


def _step_body(
    params: Any,
    images: jax.Array,
    key: jax.Array,
    *targets: Any,
    apply: Callable,
    kind: FeatureKind,
    dtype: Any,
    config: PartitionConfig,
    solver: StageBSolver,
    chunk: int,
    metric: Metric | None,
) -> StepOutput:
    """images [B, H, W, 3] -> features [B, h, w, E] -> Tree (-> metric scores); traced."""
    features, finite = backbone_features(apply, params, images, kind, dtype)
    b, h, w, e = features.shape
    x = jnp.where(finite[:, None, None], features.reshape(b, h * w, e), 0.0)
    labels, parent, depth, is_leaf, valid, parts = _partition_batch(x, key, config, solver, chunk)
    tree = Tree(labels, parent, depth, is_leaf, valid, parts, grid=(h, w))
    if metric is None:
        return StepOutput(tree, features, finite)
    scores, violations = metric.score(tree, targets[0])
    return StepOutput(tree, features, finite, scores, violations)


@dataclasses.dataclass(frozen=True)
class Step:
    """A compiled end-to-end step and what it needs (built by `make_step`).

    run:    the jitted pure function `run(params, images, key[, targets]) -> StepOutput`;
            images float32 [B, H, W, 3] preprocessed and (like every targets leaf) split
            over the mesh's "data" axis (B a multiple of the device count), params and key
            replicated.
    params: the backbone params, in the backbone dtype, replicated over the mesh.
    """

    run: Callable[..., StepOutput]
    params: Any
    mesh: Mesh
    image_size: tuple[int, int]
    vit: ViTConfig
    config: PartitionConfig
    metric: Metric | None

    @property
    def batch_multiple(self) -> int:
        """Local batches are padded to a multiple of this (this process's device count)."""
        return local_device_count(self.mesh)

    def arguments(
        self, images: np.ndarray, key: jax.Array | None = None, targets: Any = None
    ) -> tuple:
        """The arguments of `run` for a local batch: images float32 [b, H, W, 3] from
        `features.preprocess` at `image_size` and targets from the metric's `collate`,
        checked, padded to `batch_multiple` rows and placed on the mesh."""
        self._check(images, targets)
        multiple = self.batch_multiple
        args = [self.params, shard_batch(pad_batch(images, multiple), self.mesh)]
        args.append(replicate(jax.random.key(0) if key is None else key, self.mesh))
        if targets is not None:
            pad = lambda a: shard_batch(pad_batch(np.asarray(a), multiple), self.mesh)
            args.append(jax.tree.map(pad, targets))
        return tuple(args)

    def dispatch(
        self, images: np.ndarray, key: jax.Array | None = None, targets: Any = None
    ) -> StepOutput:
        """Start the step on a local batch (asynchronous; see `arguments`). Returns padded
        device results (see `fetch`)."""
        return self.run(*self.arguments(images, key, targets))

    def __call__(
        self, images: np.ndarray, key: jax.Array | None = None, targets: Any = None
    ) -> StepOutput:
        """`dispatch` then `fetch`: host results for the `len(images)` images."""
        return fetch(self.dispatch(images, key, targets), len(images))

    def _check(self, images: np.ndarray, targets: Any) -> None:
        want = (*self.image_size, 3)
        if not isinstance(images, np.ndarray) or images.dtype != np.float32:
            raise ValueError("images must be a float32 NumPy array from features.preprocess")
        if images.ndim != 4 or images.shape[1:] != want or images.shape[0] == 0:
            raise ValueError(f"images must be [B > 0, {want[0]}, {want[1]}, 3], got {images.shape}")
        if (targets is None) != (self.metric is None):
            has = "has a metric" if self.metric else "has no metric"
            raise ValueError(f"this step {has}: pass targets exactly when it has one")
        sizes = {len(leaf) for leaf in jax.tree.leaves(targets)} - {len(images)}
        if sizes:
            raise ValueError(f"targets with {sorted(sizes)} rows for {len(images)} images")


def make_step(
    backbone: str | os.PathLike[str] | ViT,
    size: int | tuple[int, int],
    config: PartitionConfig | None = None,
    *,
    features: FeatureKind = "tokens",
    dtype: BackboneDType = "float32",
    solver: StageBSolver = "eigh",
    chunk: int = 8,
    metric: Metric | None = None,
    mesh: Mesh | None = None,
) -> Step:
    """Compile-ready end-to-end step for images of `size` (int or (H, W), multiples of the
    patch size): backbone (`dtype` "bfloat16": params and activations in bfloat16, features
    cast back to float32 before the graph), partition with `config` (default
    `PartitionConfig()`), stage-B `solver` and `chunk`, and `metric` when given. `mesh`
    (default `sharding.data_mesh()`, every device) is the data-parallel mesh. `backbone` is
    a checkpoint name or path, or a loaded `ViT`. Compiles on the first call per bucket.
    """
    if features not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS}, got {features!r}")
    if dtype not in BACKBONE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(BACKBONE_DTYPES)}, got {dtype!r}")
    config = PartitionConfig() if config is None else config
    model = backbone if isinstance(backbone, ViT) else load_backbone(backbone)
    hw = image_size(size, model.config.patch_size)
    patches = (hw[0] // model.config.patch_size) * (hw[1] // model.config.patch_size)
    if patches < config.n_parts:
        raise ValueError(f"{hw[0]}x{hw[1]} px gives {patches} patches, fewer than "
                         f"n_parts = {config.n_parts}")
    mesh = data_mesh() if mesh is None else mesh
    _warn_cpu_mesh(mesh)
    params, apply = make_apply(model)
    body = functools.partial(
        _step_body, apply=apply, kind=features, dtype=BACKBONE_DTYPES[dtype], config=config,
        solver=solver, chunk=chunk, metric=metric,
    )
    batched = (False, True, False) + ((True,) if metric is not None else ())
    run = jax.jit(data_parallel(body, mesh, batched))
    params = replicate(cast_floating(params, BACKBONE_DTYPES[dtype]), mesh)
    return Step(run, params, mesh, hw, model.config, config, metric)


def _warn_cpu_mesh(mesh: Mesh) -> None:
    """Several CPU devices: jaxlib 0.10.2's batched LAPACK eigh (`ParallelBatchMap`) waits on
    the intra-op thread pool that the concurrently running devices occupy, and the program
    can deadlock (seen here with 2 forced host devices on 2 cores, 2 images per device).
    Forced host devices are for tests; on CPU one device already uses every core."""
    if mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu":
        warnings.warn(
            f"data-parallel step over {mesh.devices.size} CPU devices: batched eigh can "
            "deadlock in jaxlib's LAPACK kernels when several images run per device; use "
            "one CPU device (or one image per device, as the tests do)", stacklevel=3)


def fetch(
    out: StepOutput,
    count: int,
    names: Sequence[Hashable] | None = None,
    *,
    with_features: bool = True,
) -> StepOutput:
    """This process's first `count` rows of a dispatched step, as host arrays.

    Raises ValueError naming the images (by `names`, else batch index) whose features are
    not finite, and for metric input violations.
    """
    rows = lambda tree: jax.tree.map(lambda a: local_rows(a)[:count], tree)
    finite = rows(out.finite)
    if not finite.all():
        bad = [names[i] if names else i for i in np.flatnonzero(~finite)]
        raise ValueError(f"the backbone gave NaN or inf features for images {bad[:10]}")
    if out.violations is not None:
        raise_for_violations(rows(out.violations))
    return StepOutput(
        tree=rows(out.tree),
        features=rows(out.features) if with_features else None,
        finite=finite,
        scores=rows(out.scores),
    )


# ----------------------------------------------------------------------------------------
# Streaming: bucketing, host preparation in a prefetch thread, lagged fetching.


class BatchResult(NamedTuple):
    """`stream`'s output for one batch: names of its images and their host `StepOutput`."""

    names: tuple[Hashable, ...]
    output: StepOutput


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
    items: Iterable[Item],
    rows: int,
    size: tuple[int, int],
    vit: ViTConfig,
    metric: Metric | None = None,
) -> Iterator[HostBatch]:
    """Group items by bucket into batches of `rows` (the last of a bucket padded), resized
    and normalised (`features.preprocess`) and with collated targets."""
    buffers: dict[Hashable, list[Item]] = {}
    for item in items:
        bucket = metric.bucket(item.target) if metric is not None else None
        buffer = buffers.setdefault(bucket, [])
        buffer.append(item)
        if len(buffer) == rows:
            yield _collate(buffers.pop(bucket), rows, size, vit, metric)
    for buffer in buffers.values():
        yield _collate(buffer, rows, size, vit, metric)


def _collate(
    items: list[Item], rows: int, size: tuple[int, int], vit: ViTConfig, metric: Metric | None
) -> HostBatch:
    images = pad_batch(preprocess([item.image for item in items], size, vit), rows)
    targets = None
    if metric is not None:
        collated = metric.collate([item.target for item in items])
        targets = jax.tree.map(lambda a: pad_batch(np.asarray(a), rows), collated)
    return HostBatch(tuple(item.name for item in items), images, targets, len(items))


def stream(
    step: Step,
    items: Iterable[Item],
    *,
    batch_size: int,
    key: jax.Array | None = None,
    prefetch_depth: int = 2,
    with_features: bool = False,
) -> Iterator[BatchResult]:
    """Run `step` over `items` (a lazy iterable: its decoding runs in the prefetch thread).

    Batches hold `batch_size` images rounded up to a multiple of the local device count;
    results come per batch, grouped by bucket (not in input order: use the names). Batch
    k's results are copied to the host after batch k + 1 was dispatched. Multi-host: every
    process must produce the same number of batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    multiple = step.batch_multiple
    rows = -(-batch_size // multiple) * multiple
    prepared = host_batches(items, rows, step.image_size, step.vit, step.metric)
    pending: tuple[HostBatch, StepOutput] | None = None
    for batch in prefetch(prepared, prefetch_depth):
        out = step.dispatch(batch.images, key, batch.targets)
        if pending is not None:
            yield _finish(*pending, with_features)
        pending = (batch, out)
    if pending is not None:
        yield _finish(*pending, with_features)


def _finish(batch: HostBatch, out: StepOutput, with_features: bool) -> BatchResult:
    host = fetch(out, batch.count, batch.names, with_features=with_features)
    return BatchResult(batch.names, host)


# ----------------------------------------------------------------------------------------
# Metrics inside the step.


def canvas_shape(height: int, width: int, granule: int) -> tuple[int, int]:
    """The square bucket canvas of an (height, width) map: the longer side rounded up to a
    multiple of `granule`, so both orientations of a size share one compiled shape."""
    side = -(-max(height, width) // granule) * granule
    return side, side


def upsample_to_canvas(
    labels: jax.Array, size: jax.Array, canvas: tuple[int, int]
) -> jax.Array:
    """Nearest upsampling of patch labels [L', h, w] to a traced image size [2] = (H, W),
    drawn at the top-left of a [L', *canvas] map whose other pixels are -1 (padding).

    Inside the image, pixel (y, x) takes patch (floor((y + 1/2) h / H), floor((x + 1/2) w /
    W)), exactly `api.upsample_labels`; the size is an array, so one program serves every
    image size that fits the canvas.
    """
    h, w = labels.shape[-2:]
    ys, xs = jnp.arange(canvas[0]), jnp.arange(canvas[1])
    rows = jnp.minimum((2 * ys + 1) * h // (2 * size[0]), h - 1)
    cols = jnp.minimum((2 * xs + 1) * w // (2 * size[1]), w - 1)
    inside = (ys < size[0])[:, None] & (xs < size[1])[None, :]
    return jnp.where(inside, labels[:, rows[:, None], cols[None, :]], -1)


def bsds_metric(num_regions: int = 256, annotators: int = 9, granule: int = 32) -> Metric:
    """BSDS-style area-weighted covering (as `metrics.evaluate_bsds_batch`) inside the step.

    Targets: per image the human segmentations int [A, H, W] with ids from 1 (as
    `datasets.bsds500.read_bsds_mat` gives them), A <= `annotators`. They are collated to
    (segmentations int32 [b, annotators, S, S], sizes int32 [b, 2]): ids shifted to
    [0, num_regions), drawn on a square canvas S (`canvas_shape`; BSDS's 481x321 and 321x481
    share S = 512 with the default granule), -1 elsewhere and for missing annotators (not
    counted). The step upsamples the leaves to each image's own size on that canvas, so
    padding is ignored and one compiled program serves both orientations.
    """

    def bucket(target: np.ndarray) -> tuple[int, int]:
        return canvas_shape(*np.shape(target)[1:], granule)

    def collate(targets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        canvases = {bucket(t) for t in targets}
        if len(canvases) != 1:
            raise ValueError(f"targets of one batch fit different canvases: {sorted(canvases)}")
        segs = np.full((len(targets), annotators, *canvases.pop()), -1, np.int32)
        sizes = np.empty((len(targets), 2), np.int32)
        for b, target in enumerate(targets):
            target = np.asarray(target)
            if target.ndim != 3 or not 1 <= len(target) <= annotators:
                raise ValueError(f"target {b}: expected [A, H, W] with 1 <= A <= {annotators} "
                                 f"annotators, got shape {target.shape}")
            segs[b, : len(target), : target.shape[1], : target.shape[2]] = target - 1
            sizes[b] = target.shape[1:]
        return segs, sizes

    def score(tree: Tree, targets: tuple[jax.Array, jax.Array]) -> tuple[BSDSScores, jax.Array]:
        segs, sizes = targets
        leaves = tree.labels[:, -1:].reshape(tree.batch_size, 1, *tree.grid)
        draw = functools.partial(upsample_to_canvas, canvas=segs.shape[-2:])
        pred = TreePrediction(jax.vmap(draw)(leaves, sizes), tree.valid, tree.depth, tree.parent)
        return _score_bsds(pred, segs, num_regions=num_regions, steps=tree.levels)

    return Metric(score=score, collate=collate, bucket=bucket)
