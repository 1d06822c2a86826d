"""Metrics inside the compiled step: the `Metric` interface and the BSDS covering metric.

A `Metric` scores a batch of trees in the same program that built them, so only the scores
come back to the host. Its ground truth is bucketed and collated on the host (`bucket`,
`collate`) so that every batch of a bucket has one shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.metrics.regions import TreePrediction
from hiseg_jax.metrics.scores import BSDSScores, bsds_scores
from hiseg_jax.tree import Tree


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


def canvas_shape(height: int, width: int, granule: int) -> tuple[int, int]:
    """The square bucket canvas of an (height, width) map: the longer side rounded up to a
    multiple of `granule`, so both orientations of a size share one compiled shape."""
    side = -(-max(height, width) // granule) * granule
    return side, side


def upsample_to_canvas(labels: jax.Array, size: jax.Array, canvas: tuple[int, int]) -> jax.Array:
    """Nearest upsampling of patch labels [L', h, w] to a traced image size [2] = (H, W),
    drawn at the top-left of a [L', *canvas] map whose other pixels are -1 (padding).

    Inside the image, pixel (y, x) takes patch (floor((y + 1/2) h / H), floor((x + 1/2) w /
    W)), exactly `tree.upsample_labels`; the size is an array, so one program serves every
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
                raise ValueError(
                    f"target {b}: expected [A, H, W] with 1 <= A <= {annotators} "
                    f"annotators, got shape {target.shape}"
                )
            segs[b, : len(target), : target.shape[1], : target.shape[2]] = target - 1
            sizes[b] = target.shape[1:]
        return segs, sizes

    def score(tree: Tree, targets: tuple[jax.Array, jax.Array]) -> tuple[BSDSScores, jax.Array]:
        segs, sizes = targets
        leaves = tree.labels[:, -1:].reshape(tree.batch_size, 1, *tree.grid)
        draw = functools.partial(upsample_to_canvas, canvas=segs.shape[-2:])
        pred = TreePrediction(jax.vmap(draw)(leaves, sizes), tree.valid, tree.depth, tree.parent)
        return bsds_scores(pred, segs, num_regions=num_regions, steps=tree.levels)

    return Metric(score=score, collate=collate, bucket=bucket)
