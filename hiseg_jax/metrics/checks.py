"""Validation of metric inputs: bad input gets a ValueError naming the problem, never a
silent wrong number or a traceback from inside JAX.

Shapes, dtypes and the small node arrays [B, M] are checked on the host before tracing.
Pixel arrays stay where they are (often on the accelerator): the compiled program counts
their violations (`pixel_violations`) beside the scores, and `raise_for_violations` raises on
the host before any score is returned.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.metrics.regions import TreePrediction

MAX_PIXELS = 1 << 24  # counts are exact in float32 below this many pixels per image
VIOLATIONS = (
    "level_labels outside [-1, M)",
    "level_labels naming an invalid node slot",
    "ground-truth labels outside [-1, K) (encode raw maps with LabelSpace.encode)",
    "prediction padding (level_labels -1) over labelled ground-truth pixels",
    "upper levels of level_labels disagreeing with the deepest level and node_parent",
)


def _int_array(name: str, x: Any, ndim: int) -> Any:
    """x as is (NumPy or JAX: never copied across devices) if it is an integer array."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim != ndim or not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(
            f"{name} must be an integer array with {ndim} dims, got {x.dtype} {tuple(x.shape)}"
        )
    return x


def check_prediction(pred: TreePrediction, gt: Any, gt_ndim: int) -> TreePrediction:
    """Host checks of a prediction against a GT of ndim 3 ([B, H, W]) or 4 ([B, A, H, W]).
    Returns the prediction with its node arrays as NumPy int32 / bool."""
    labels = _int_array("level_labels", pred.level_labels, 4)
    gt = _int_array("ground truth", gt, gt_ndim)
    valid = np.asarray(pred.node_valid)
    depth = np.asarray(_int_array("node_depth", pred.node_depth, 2), np.int32)
    parent = np.asarray(_int_array("node_parent", pred.node_parent, 2), np.int32)
    if valid.dtype != bool:
        raise ValueError(f"node_valid must be bool, got {valid.dtype}")
    batch, num_levels, height, width = labels.shape
    if not valid.shape == depth.shape == parent.shape == (batch, valid.shape[-1]):
        raise ValueError(
            f"node_valid, node_depth, node_parent must share one shape [B, M] "
            f"with B = {batch}, got {valid.shape}, {depth.shape}, {parent.shape}"
        )
    if gt.shape[0] != batch or tuple(gt.shape[-2:]) != (height, width):
        raise ValueError(
            f"label maps of different shapes: prediction level_labels "
            f"{tuple(labels.shape)} (B, L+1, H, W) vs ground truth "
            f"{tuple(gt.shape)}"
        )
    if height * width >= MAX_PIXELS:
        raise ValueError(f"{height}x{width} images exceed {MAX_PIXELS} pixels")
    for b in range(batch):
        _check_tree(b, valid[b], depth[b], parent[b], num_levels - 1)
    return TreePrediction(labels, valid, depth, parent)


def _check_tree(
    b: int, valid: np.ndarray, depth: np.ndarray, parent: np.ndarray, max_depth: int
) -> None:
    """Node 0 is the root; every other valid node hangs below a valid parent one level up."""
    if not valid[0] or depth[0] != 0 or parent[0] != -1:
        raise ValueError(f"image {b}: node 0 must be the valid root (depth 0, parent -1)")
    others = np.nonzero(valid)[0][1:]
    par = parent[others]
    safe = np.clip(par, 0, valid.shape[0] - 1)
    bad = (par < 0) | (par >= valid.shape[0]) | ~valid[safe] | (depth[others] != depth[safe] + 1)
    bad |= depth[others] > max_depth
    if bad.any():
        raise ValueError(
            f"image {b}: nodes {others[bad][:10].tolist()} have an invalid parent "
            f"or a depth inconsistent with it (depth <= {max_depth})"
        )


def level_ancestors(
    valid: jax.Array, depth: jax.Array, parent: jax.Array, num_levels: int
) -> jax.Array:
    """int32 [L + 1, M]: the node covering node m's pixels at each level (its ancestor of
    that depth, or m itself at and below its own depth)."""
    level = jnp.arange(num_levels)[:, None]

    def climb(_: int, cur: jax.Array) -> jax.Array:
        return jnp.where(valid[cur] & (depth[cur] > level), parent[cur], cur)

    start = jnp.broadcast_to(jnp.arange(valid.shape[0]), (num_levels, valid.shape[0]))
    return jax.lax.fori_loop(0, num_levels - 1, climb, start)


def pixel_violations(
    labels: jax.Array,
    valid: jax.Array,
    depth: jax.Array,
    parent: jax.Array,
    gt: jax.Array,
    num_labels: int,
) -> jax.Array:
    """int32 [5]: pixels breaking each rule of `VIOLATIONS`, for one image. labels: int32
    [L' + 1, H, W], all levels (checked against each other) or only the deepest (L' = 0);
    gt: int32 [H, W] or [A, H, W]."""
    leaf = labels[-1]
    num_nodes = valid.shape[0]
    in_range = (leaf >= -1) & (leaf < num_nodes)
    on_invalid = (leaf >= 0) & in_range & ~valid[jnp.clip(leaf, 0, num_nodes - 1)]
    labelled = gt >= 0 if gt.ndim == 2 else (gt >= 0).any(axis=0)
    count = lambda x: x.sum(dtype=jnp.int32)
    mismatch = jnp.int32(0)
    if labels.shape[0] > 1:
        table = level_ancestors(valid, depth, parent, labels.shape[0])
        expected = table[:, jnp.clip(leaf, 0, num_nodes - 1)]  # [L' + 1, H, W]
        mismatch = count((leaf >= 0)[None] & in_range[None] & (labels != expected))
    return jnp.stack(
        [
            count(~in_range),
            count(on_invalid),
            count((gt < -1) | (gt >= num_labels)),
            count(labelled & (leaf < 0)),
            mismatch,
        ]
    )


def raise_for_violations(violations: jax.Array) -> None:
    """violations: int [B, 5] -> ValueError naming each broken rule and the images concerned."""
    counts = np.asarray(violations)
    broken = [
        f"{rule}: {int(counts[:, i].sum())} pixels in images "
        f"{np.flatnonzero(counts[:, i])[:10].tolist()}"
        for i, rule in enumerate(VIOLATIONS)
        if counts[:, i].any()
    ]
    if broken:
        raise ValueError("bad metric input: " + "; ".join(broken))
