"""Region statistics between ground-truth regions and tree nodes, and best matches (JAX).

Per image, never materialising a per-node mask: one bincount of (leaf node, GT label) pairs
over the pixels gives the joint counts of the tree's deepest level; every node is the union
of its leaves (docs/metrics.md), so node counts are those counts summed over descendants, one
matmul with the tree's ancestor matrix. GT regions are unions of GT labels likewise (GT
ancestor matrix). Counts are carried in float32 and are exact while an image has < 2**24
pixels (checked on the host). Functions here work on ONE image; the entry points vmap them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hiseg_jax.precision import HIGHEST


class TreePrediction(NamedTuple):
    """A batch of predicted trees (the Metrics contract of docs/DESIGN.md).

    Node m of image b covers pixel p iff `level_labels[b, node_depth[b, m], p] == m`; level 0
    is the root (id 0); a node that stops splitting keeps its id at deeper levels. Pixels
    outside an image (spatial padding) carry -1 at every level and must be ignored in the GT.
    """

    level_labels: jax.Array  # int32 [B, L + 1, H, W]
    node_valid: jax.Array  # bool [B, M]
    node_depth: jax.Array  # int32 [B, M]
    node_parent: jax.Array  # int32 [B, M], -1 for the root and unused slots


class RegionStats(NamedTuple):
    """Pixel counts of one image over non-ignored pixels (integers held in float32)."""

    inter: jax.Array  # [G, M] |GT region g n node m|
    gt_area: jax.Array  # [G]
    node_area: jax.Array  # [M]
    image_area: jax.Array  # [] non-ignored pixels


class Matches(NamedTuple):
    """Best node of each GT region (max IoU, then max intersection, then lowest node id)."""

    node: jax.Array  # int32 [G], -1 for a region absent from the image
    iou: jax.Array  # float32 [G], 0 when absent
    tp: jax.Array  # int32 [G] |R n m(R)|
    fp: jax.Array  # int32 [G] |m(R) \ R|
    fn: jax.Array  # int32 [G] |R \ m(R)|


def node_ancestors(parent: jax.Array, valid: jax.Array, steps: int) -> jax.Array:
    """bool [M, M]: `anc[a, n]` iff valid node a is n or an ancestor of n. `steps` bounds the
    depth (L); parent: int32 [M], valid: bool [M]."""
    parent, valid = jnp.asarray(parent), jnp.asarray(valid)
    ids = jnp.arange(parent.shape[0])

    def climb(_: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        anc, cur = carry
        cur = jnp.where(cur >= 0, parent[jnp.maximum(cur, 0)], -1)
        return anc | (cur[None, :] == ids[:, None]), cur

    start = (ids[:, None] == ids[None, :]) & valid[None, :]
    anc, _ = jax.lax.fori_loop(0, steps, climb, (start, jnp.where(valid, ids, -1)))
    return anc


def leaf_nodes(parent: jax.Array, valid: jax.Array) -> jax.Array:
    """bool [M]: valid nodes without a valid child."""
    count = parent.shape[0]
    slot = jnp.where(valid & (parent >= 0), parent, count)  # count: out of range, dropped
    has_child = jnp.zeros(count, bool).at[slot].set(True, mode="drop")
    return valid & ~has_child


def candidate_nodes(valid: jax.Array, depth: jax.Array) -> jax.Array:
    """bool [M]: the candidate regions, every valid node but the root unless it is alone."""
    return jnp.where(valid.sum() > 1, valid & (depth > 0), valid)


def joint_counts(leaf: jax.Array, gt: jax.Array, num_nodes: int, num_labels: int) -> jax.Array:
    """int32 [M, K]: pixels with leaf node m and GT label k; pixels with a negative leaf
    (padding) or label (ignore) are dropped. leaf, gt: int32 [H, W]."""
    keep = (leaf >= 0) & (gt >= 0)
    pair = jnp.where(keep, leaf * num_labels + gt, num_nodes * num_labels).ravel()
    counts = jnp.bincount(pair, length=num_nodes * num_labels + 1)
    return counts[:-1].reshape(num_nodes, num_labels).astype(jnp.int32)


def region_stats(
    leaf: jax.Array, gt: jax.Array, node_anc: jax.Array, gt_anc: jax.Array | None, num_labels: int
) -> RegionStats:
    """Counts between GT regions and nodes of one image. leaf: int32 [H, W] (the deepest
    level's node ids); gt: int32 [H, W] GT labels in [0, K), -1 ignored; node_anc: bool
    [M, M]; gt_anc: bool [G, K] (GT region g holds label k), None for a flat GT (G = K)."""
    counts = joint_counts(leaf, gt, node_anc.shape[0], num_labels).astype(jnp.float32)
    node_label = jnp.dot(node_anc.astype(jnp.float32), counts, precision=HIGHEST)  # [M, K]
    label_area = counts.sum(0)
    if gt_anc is None:
        inter, gt_area = node_label.T, label_area
    else:
        gt_f = gt_anc.astype(jnp.float32)
        inter = jnp.dot(gt_f, node_label.T, precision=HIGHEST)
        gt_area = jnp.dot(gt_f, label_area, precision=HIGHEST)
    return RegionStats(inter, gt_area, node_label.sum(1), label_area.sum())


def iou_matrix(stats: RegionStats) -> jax.Array:
    """float32 [G, M] IoU of every GT region with every node (0 where both are empty)."""
    union = stats.gt_area[:, None] + stats.node_area[None, :] - stats.inter
    return jnp.where(union > 0, stats.inter / jnp.maximum(union, 1.0), 0.0)


def best_matches(stats: RegionStats, candidate: jax.Array) -> Matches:
    """m(R) for every GT region R of one image among the candidate nodes (bool [M])."""
    key = jnp.where(candidate[None, :], iou_matrix(stats), -1.0)
    best_iou = key.max(axis=1)
    node = jnp.argmax(jnp.where(key == best_iou[:, None], stats.inter, -1.0), axis=1)
    tp = jnp.take_along_axis(stats.inter, node[:, None], axis=1)[:, 0]
    present = stats.gt_area > 0
    as_int = lambda x: jnp.where(present, x, 0).astype(jnp.int32)
    return Matches(
        node=jnp.where(present, node, -1).astype(jnp.int32),
        iou=jnp.where(present, best_iou, 0.0),
        tp=as_int(tp),
        fp=as_int(stats.node_area[node] - tp),
        fn=as_int(stats.gt_area - tp),
    )
