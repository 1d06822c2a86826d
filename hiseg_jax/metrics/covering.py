"""Covering metrics of one image (docs/metrics.md, "Covering"), in JAX, from best matches
and region stats.

- NMCovering: unweighted mean over the scored GT regions of IoU(R, m(R)).
- NFCovering: the same over foreground instances (an instance map whose background id is
  not scored; see `hiseg_jax.metrics.scores.nf_covering_batch`).
- NHCovering: IoU(R, m(R)) weighted by the share of R's lineage (R and its GT ancestors that
  are scored) whose matches lie on the lineage of m(R) (m(R) and its ancestors in the tree).
- BSDS segmentation covering: area-weighted, over a set of nodes (all candidates: "Best";
  one cut of the tree per level: ODS / OIS once aggregated over images).
An optional IoU threshold zeroes matches below it (NM, NF, NH; not the BSDS covering).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hiseg_jax.metrics.regions import RegionStats, iou_matrix


def _thresholded(iou: jax.Array, threshold: jax.Array | float) -> jax.Array:
    return jnp.where(iou >= threshold, iou, 0.0)


def nm_covering(
    best_iou: jax.Array, scored: jax.Array, threshold: jax.Array | float
) -> tuple[jax.Array, jax.Array]:
    """Per region set: (NMCovering float32 [S], number of scored regions int32 [S]).
    best_iou: [G]; scored: bool [S, G] (region set and present in the image). A set with no
    region gives (0, 0): the image is skipped for that set."""
    count = scored.sum(axis=1)
    total = jnp.where(scored, _thresholded(best_iou, threshold)[None, :], 0.0).sum(axis=1)
    return total / jnp.maximum(count, 1), count.astype(jnp.int32)


def lineage_weights(
    best_node: jax.Array, scored: jax.Array, gt_anc: jax.Array, node_anc: jax.Array
) -> jax.Array:
    """float32 [G]: w(R) = |{P in pi(R) : m(P) in pi(m(R))}| / |pi(R)| for scored R (0 else).
    best_node: int32 [G]; scored: bool [G]; gt_anc: bool [G, G] (`[P, R]`: P is R or an
    ancestor); node_anc: bool [M, M] likewise for the tree."""
    lineage = gt_anc & scored[:, None]  # [P, R]: P in pi(R)
    node = jnp.maximum(best_node, 0)  # absent regions are out of every lineage
    on_path = node_anc[node[:, None], node[None, :]]  # [P, R]: m(P) in pi(m(R))
    size = lineage.sum(axis=0)
    hits = (lineage & on_path).sum(axis=0)
    return jnp.where(scored, hits / jnp.maximum(size, 1), 0.0)


def nh_covering(
    best_iou: jax.Array,
    best_node: jax.Array,
    scored: jax.Array,
    gt_anc: jax.Array,
    node_anc: jax.Array,
    threshold: jax.Array | float,
) -> jax.Array:
    """float32 []: NHCovering over the scored GT regions (bool [G]); 0 when there is none."""
    weights = lineage_weights(best_node, scored, gt_anc, node_anc)
    total = (_thresholded(best_iou, threshold) * weights).sum()
    return total / jnp.maximum(scored.sum(), 1)


def level_cuts(valid: jax.Array, depth: jax.Array, leaf: jax.Array, num_levels: int) -> jax.Array:
    """bool [L + 1, M]: the nodes of the tree's cut at each level (nodes of that depth, and
    shallower leaves, which keep their id at deeper levels)."""
    level = jnp.arange(num_levels)[:, None]
    return valid[None, :] & ((depth[None, :] == level) | ((depth[None, :] < level) & leaf))


def area_covering(stats: RegionStats, node_sets: jax.Array) -> jax.Array:
    """float32 [K]: BSDS covering sum_R |R| / |image| * max_{m in set} IoU(R, m) of the GT
    regions by each node set (bool [K, M]); 0 for an all-ignored image."""
    iou = iou_matrix(stats)
    best = jnp.max(jnp.where(node_sets[:, None, :], iou[None, :, :], 0.0), axis=-1)  # [K, G]
    weight = stats.gt_area / jnp.maximum(stats.image_area, 1.0)
    return (best * weight[None, :]).sum(axis=1)
