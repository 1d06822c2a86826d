"""The compiled device step: images -> backbone -> patch features -> tree (-> scores).

`make_step` builds the step of a batch: the backbone (float32 or bfloat16), the partitioner
(`spectral.partition.partition_arrays`), the leaves' mean features (`tree.leaf_descriptors`)
and, during an in-step evaluation, a `Metric`, as three jitted programs (`Programs`: why
three) chained on device arrays, each compiled once per batch shape and split over the
devices of a mesh by `sharding` (each device runs its slice of the batch; no
communication). Nothing goes back to the host between stages. Programs are cached per
(model structure, settings, mesh), so repeated steps with the same settings reuse them.

Every image uses the same key, so its tree depends only on its features and the settings.
Features can differ in the last bits with the batch shape (XLA picks kernels by shape):
this is why the engine pads every batch, the last one too, to the same size.

An image of one colour (`PLAIN_SPREAD`: a black or grey picture, a 1 x 1 image resized)
has no structure, but the backbone's position embeddings give its patches different
features: the step partitions it as all-zero features, a single-node tree, and reports it
(`StepOutput.plain`) so that callers can say why.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from hiseg_jax.engine.metric import Metric
from hiseg_jax.engine.sharding import (
    data_mesh,
    data_parallel,
    local_device_count,
    local_rows,
    pad_batch,
    replicate,
    shard_batch,
)
from hiseg_jax.features import (
    BACKBONE_DTYPES,
    DEFAULT_FEATURES,
    BackboneDType,
    FeatureKind,
    backbone_features,
    cast_floating,
    check_blocks,
    feature_parts,
    image_size,
)
from hiseg_jax.metrics.checks import raise_for_violations
from hiseg_jax.models.vit import ViT, ViTConfig
from hiseg_jax.spectral.config import PartitionConfig, check_grid
from hiseg_jax.spectral.partition import partition_arrays
from hiseg_jax.tree import Tree, leaf_descriptors
from hiseg_jax.weights.checkpoint import load_backbone

# Largest spread of an image's preprocessed pixels (ImageNet-normalised units, where one grey
# level is ~0.017) for which it counts as one colour: above the rounding of the resize.
PLAIN_SPREAD = 1e-3


class StepOutput(NamedTuple):
    """One batch's results (device arrays from `Step.dispatch`, host arrays from `fetch`).

    tree:        the batched `Tree` over the patch grid.
    features:    float32 [B, h, w, E] patch features (cast back from bfloat16 if used).
    finite:      bool [B] the image's features are finite (a non-finite image is
                 partitioned as a constant one and `fetch` raises ValueError naming it).
    scores:      the metric's scores, or None without a metric.
    violations:  int32 [B, V] metric input violations, or None.
    descriptors: float32 [B, M, E] mean feature of each leaf (`tree.leaf_descriptors`).
    plain:       bool [B] the image has one colour (`PLAIN_SPREAD`): a single-node tree.
    """

    tree: Tree
    features: jax.Array | None
    finite: jax.Array
    scores: Any = None
    violations: jax.Array | None = None
    descriptors: jax.Array | None = None
    plain: jax.Array | None = None


class Programs(NamedTuple):
    """The step's three jitted, data-parallel programs, dispatched one after the other on
    device arrays (asynchronous; nothing goes to the host in between).

    backbone:  (params, images [B, H, W, 3]) -> (features [B, h, w, E], finite bool [B],
               plain bool [B]: one colour, see `one_colour`).
    partition: (features, finite, plain, key) -> `Tree` (`spectral.partition.
               partition_arrays`; non-finite and one-colour images are partitioned as
               all-zero features: a single node).
    finish:    (features, tree[, targets]) -> (descriptors [B, M, E], scores, violations).

    They are separate programs on purpose: compiled into the backbone's program, the
    partitioner's float32 arithmetic is scheduled differently (measured: other trees for a
    batch of one image), while on its own it reproduces `spectral.partition.partition`
    bit for bit, whatever the batch size.
    """

    backbone: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]
    partition: Callable[..., Tree]
    finish: Callable[..., tuple[jax.Array, Any, Any]]


def one_colour(images: jax.Array) -> jax.Array:
    """bool [B]: every pixel of images [B, H, W, 3] (preprocessed) is within `PLAIN_SPREAD`
    of the first one."""
    spread = jnp.abs(images - images[:, :1, :1]).max(axis=(1, 2, 3))
    return spread <= PLAIN_SPREAD


def _partition_body(
    features: jax.Array,
    finite: jax.Array,
    plain: jax.Array,
    key: jax.Array,
    *,
    config: PartitionConfig,
) -> Tree:
    usable = (finite & ~plain)[:, None, None, None]
    return partition_arrays(jnp.where(usable, features, 0.0), key, config)


def _finish_body(
    features: jax.Array, tree: Tree, *targets: Any, metric: Metric | None
) -> tuple[jax.Array, Any, Any]:
    descriptors = leaf_descriptors(features, tree)
    if metric is None:
        return descriptors, None, None
    scores, violations = metric.score(tree, targets[0])
    return descriptors, scores, violations


@functools.lru_cache(maxsize=8)
def _programs(
    graphdef: nnx.GraphDef,
    kind: FeatureKind,
    dtype: str,
    config: PartitionConfig,
    metric: Metric | None,
    mesh: Mesh,
) -> Programs:
    """The jitted, data-parallel programs for these settings (kept: they hold the
    compilations, so repeated steps with the same settings compile nothing)."""

    def backbone(params: nnx.State, images: jax.Array) -> tuple[jax.Array, ...]:
        apply = lambda p, x, blocks=(): nnx.merge(graphdef, p)(x, blocks=blocks)
        vit = nnx.merge(graphdef, params).config
        features, finite = backbone_features(
            apply, params, images, kind, BACKBONE_DTYPES[dtype], vit
        )
        return features, finite, one_colour(images)

    targets = (True,) if metric is not None else ()
    partition = functools.partial(_partition_body, config=config)
    finish = functools.partial(_finish_body, metric=metric)
    return Programs(
        backbone=jax.jit(data_parallel(backbone, mesh, (False, True))),
        partition=jax.jit(data_parallel(partition, mesh, (True, True, True, False))),
        finish=jax.jit(data_parallel(finish, mesh, (True, True, *targets))),
    )


@dataclasses.dataclass(frozen=True)
class Step:
    """A compiled end-to-end step and what it needs (built by `make_step`).

    programs: the jitted, data-parallel `Programs`; `run` chains them.
    params:   the backbone params, in the backbone dtype, replicated over the mesh.
    """

    programs: Programs
    params: Any
    mesh: Mesh
    image_size: tuple[int, int]
    vit: ViTConfig
    config: PartitionConfig
    metric: Metric | None

    def run(self, params: Any, images: jax.Array, key: jax.Array, *targets: Any) -> StepOutput:
        """The pure step on arguments placed on the mesh (see `arguments`): images float32
        [B, H, W, 3] preprocessed and (like every targets leaf) split over the mesh's
        "data" axis (B a multiple of the device count), params and key replicated. Returns
        device arrays at once (asynchronous)."""
        features, finite, plain = self.programs.backbone(params, images)
        tree = self.programs.partition(features, finite, plain, key)
        descriptors, scores, violations = self.programs.finish(features, tree, *targets)
        return StepOutput(tree, features, finite, scores, violations, descriptors, plain)

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
    features: FeatureKind = DEFAULT_FEATURES,
    dtype: BackboneDType = "float32",
    metric: Metric | None = None,
    mesh: Mesh | None = None,
) -> Step:
    """Compile-ready end-to-end step for images of `size` (int or (H, W), multiples of the
    patch size): backbone (`dtype` "bfloat16": params and activations in bfloat16, features
    cast back to float32 before the graph), partition with `config` (default
    `PartitionConfig()`, which holds every solver choice) and `metric` when given. `mesh`
    (default `sharding.data_mesh()`, every device) is the data-parallel mesh. `backbone` is
    a checkpoint name or path, or a loaded `ViT`. Compiles on the first call per shape.
    ValueError (on the host) for settings that fit no image.
    """
    feature_parts(features)
    if dtype not in BACKBONE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(BACKBONE_DTYPES)}, got {dtype!r}")
    config = PartitionConfig() if config is None else config
    model = backbone if isinstance(backbone, ViT) else load_backbone(backbone)
    check_blocks(features, model.config)
    patch = model.config.patch_size
    hw = image_size(size, patch)
    check_grid((hw[0] // patch, hw[1] // patch), config)
    mesh = data_mesh() if mesh is None else mesh
    _warn_cpu_mesh(mesh)
    graphdef, params = nnx.split(model)
    programs = _programs(graphdef, features, dtype, config, metric, mesh)
    params = replicate(cast_floating(params, BACKBONE_DTYPES[dtype]), mesh)
    return Step(programs, params, mesh, hw, model.config, config, metric)


def _warn_cpu_mesh(mesh: Mesh) -> None:
    """Several CPU devices: jaxlib 0.10.2's batched LAPACK eigh (`ParallelBatchMap`) waits on
    the intra-op thread pool that the concurrently running devices occupy, and the program
    can deadlock (seen here with 2 forced host devices on 2 cores, 2 images per device, and
    with 4 devices at one image per device: stage B solves `node_chunk` nodes at once).
    Forced host devices are for tests; on CPU one device already uses every core."""
    if mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu":
        warnings.warn(
            f"data-parallel step over {mesh.devices.size} CPU devices: batched eigh can "
            "deadlock in jaxlib's LAPACK kernels when several images or stage-B nodes run "
            "per device; use one CPU device (or one image per device and node_chunk=1, as "
            "tests/batch_invariance_worker.py does)",
            stacklevel=3,
        )


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
        descriptors=rows(out.descriptors),
        plain=rows(out.plain),
    )
