"""Entry points: score a batch of predicted trees against ground truth.

Host side: validate (`checks`), encode raw label maps with the dataset's `LabelSpace`; then
one jit-compiled, vmapped program per batch shape computes every per-image number. Metrics
compare at the resolution they are given: upsample predictions (or downsample GT) before,
and report which.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.hierarchies.labelspace import LabelSpace, flat_label_space
from hiseg_jax.metrics.checks import check_prediction, pixel_violations, raise_for_violations
from hiseg_jax.metrics.covering import (
    area_covering,
    level_cuts,
    nh_covering,
    nm_covering,
)
from hiseg_jax.metrics.regions import (
    Matches,
    TreePrediction,
    best_matches,
    candidate_nodes,
    leaf_nodes,
    node_ancestors,
    region_stats,
)


class BatchScores(NamedTuple):
    """Per-image scores of a batch against a GT with G nodes and S region sets."""

    n_nodes: jax.Array  # int32 [B] candidate regions of the tree
    n_regions: jax.Array  # int32 [B, S] scored GT regions present; 0: image skipped for set
    nm_covering: jax.Array  # float32 [B, S] NMCovering per region set (0 when skipped)
    nh_covering: jax.Array  # float32 [B] NHCovering over set 0, T_gt (0 when skipped)
    matches: Matches  # [B, G] best node, IoU and TP / FP / FN of every GT node


class BSDSScores(NamedTuple):
    """Per-image area-weighted covering, averaged over the image's annotators."""

    n_nodes: jax.Array  # int32 [B]
    n_annotators: jax.Array  # int32 [B] annotators with a labelled pixel; 0: image skipped
    best: jax.Array  # float32 [B] covering by all candidate nodes ("Best")
    levels: jax.Array  # float32 [B, L + 1] covering by the cut at each level (ODS / OIS)


def _levels_to_ship(pred: TreePrediction, check_levels: bool) -> TreePrediction:
    """The scores read only the deepest level: ship the others only to check them."""
    return pred if check_levels else pred._replace(level_labels=pred.level_labels[:, -1:])


@functools.partial(jax.jit, static_argnames=("num_labels", "steps"))
def region_scores(
    pred: TreePrediction,
    gt: jax.Array,
    gt_anc: jax.Array | None,
    region_sets: jax.Array,
    threshold: jax.Array,
    num_labels: int,
    steps: int,
) -> tuple[BatchScores, jax.Array]:
    """Traced core of `evaluate_batch` (no host checks; usable inside a jitted step).

    pred: level_labels int32 [B, L' + 1, H, W] (only the deepest level is read) and node
    arrays [B, M]; gt: encoded GT node indices int32 [B, H, W] in [0, num_labels) (-1
    ignored); gt_anc: bool [G, G] GT ancestry (None: flat); region_sets: bool [S, G];
    steps: the tree's depth L. Returns (scores, violations int32 [B, V]: bad input counts,
    see `metrics.checks.raise_for_violations`).
    """
    lineage_anc = jnp.eye(num_labels, dtype=bool) if gt_anc is None else gt_anc

    def one(
        labels: jax.Array, valid: jax.Array, depth: jax.Array, parent: jax.Array, gt: jax.Array
    ) -> tuple[BatchScores, jax.Array]:
        node_anc = node_ancestors(parent, valid, steps)
        candidate = candidate_nodes(valid, depth)
        stats = region_stats(labels[-1], gt, node_anc, gt_anc, num_labels)
        matches = best_matches(stats, candidate)
        scored = region_sets & (stats.gt_area > 0)[None, :]
        nm, count = nm_covering(matches.iou, scored, threshold)
        nh = nh_covering(matches.iou, matches.node, scored[0], lineage_anc, node_anc, threshold)
        scores = BatchScores(candidate.sum().astype(jnp.int32), count, nm, nh, matches)
        return scores, pixel_violations(labels, valid, depth, parent, gt, num_labels)

    return jax.vmap(one)(*pred, gt)


def evaluate_batch(
    pred: TreePrediction,
    gt: np.ndarray,
    space: LabelSpace,
    *,
    threshold: float = 0.0,
    check_levels: bool = True,
) -> BatchScores:
    """Score trees against raw GT label maps [B, H, W] (dataset pixel values, encoded here
    with `space`; a value outside the space raises ValueError). `threshold`: IoU below it
    counts 0 in NM / NH covering. An image without any scored region is reported with
    `n_regions == 0` (skipped by the accumulators, never a NaN). `check_levels` also checks
    the upper levels of `level_labels` against the deepest one (which, with the parents, is
    all the scores read)."""
    encoded = space.encode(gt)
    pred = check_prediction(pred, encoded, 3)
    flat = bool(np.all(space.parent < 0))
    scores, violations = region_scores(
        _levels_to_ship(pred, check_levels),
        encoded,
        None if flat else space.ancestor,
        space.region_sets,
        jnp.float32(threshold),
        num_labels=space.num_nodes,
        steps=pred.level_labels.shape[1] - 1,
    )
    raise_for_violations(violations)
    return scores


def nf_covering_batch(
    pred: TreePrediction,
    instances: np.ndarray,
    num_instances: int,
    *,
    background: Sequence[int] = (0,),
    ignore_values: Sequence[int] = (),
    threshold: float = 0.0,
    check_levels: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """NFCovering: NMCovering over the foreground instances of instance maps [B, H, W] (ids in
    [0, num_instances); `background` ids are not scored but their pixels count in unions;
    `ignore_values` are excluded). Returns (value float32 [B], instances present int32 [B])."""
    space = flat_label_space(num_instances, ignore_values, unscored=background, name="instances")
    scores = evaluate_batch(pred, instances, space, threshold=threshold, check_levels=check_levels)
    return scores.nm_covering[:, 0], scores.n_regions[:, 0]


@functools.partial(jax.jit, static_argnames=("num_regions", "steps"))
def bsds_scores(
    pred: TreePrediction, segmentations: jax.Array, num_regions: int, steps: int
) -> tuple[BSDSScores, jax.Array]:
    """Traced core of `evaluate_bsds_batch` (no host checks; usable inside a jitted step).

    segmentations: int32 [B, A, H, W] annotators' segment ids in [0, num_regions), -1
    ignored; steps: the tree's depth L. Returns (scores, violations int32 [B, V]).
    """
    num_levels = steps + 1

    def one(
        labels: jax.Array, valid: jax.Array, depth: jax.Array, parent: jax.Array, segs: jax.Array
    ) -> tuple[BSDSScores, jax.Array]:
        node_anc = node_ancestors(parent, valid, num_levels - 1)
        candidate = candidate_nodes(valid, depth)
        cuts = level_cuts(valid, depth, leaf_nodes(parent, valid), num_levels)
        node_sets = jnp.concatenate([candidate[None, :], cuts])

        def annotator(seg: jax.Array) -> tuple[jax.Array, jax.Array]:
            stats = region_stats(labels[-1], seg, node_anc, None, num_regions)
            return area_covering(stats, node_sets), stats.image_area > 0

        covering, labelled = jax.vmap(annotator)(segs)  # [A, 1 + L + 1], [A]
        count = labelled.sum()
        mean = jnp.where(labelled[:, None], covering, 0.0).sum(0) / jnp.maximum(count, 1)
        scores = BSDSScores(
            candidate.sum().astype(jnp.int32), count.astype(jnp.int32), mean[0], mean[1:]
        )
        return scores, pixel_violations(labels, valid, depth, parent, segs, num_regions)

    return jax.vmap(one)(*pred, segmentations)


def evaluate_bsds_batch(
    pred: TreePrediction, segmentations: np.ndarray, num_regions: int, *, check_levels: bool = True
) -> BSDSScores:
    """BSDS-style covering against several human segmentations per image: int [B, A, H, W]
    segment ids in [0, num_regions), -1 ignored; pad images with fewer annotators with an
    all -1 annotator (not counted)."""
    pred = check_prediction(pred, segmentations, 4)
    scores, violations = bsds_scores(
        _levels_to_ship(pred, check_levels),
        segmentations,
        num_regions=num_regions,
        steps=pred.level_labels.shape[1] - 1,
    )
    raise_for_violations(violations)
    return scores
