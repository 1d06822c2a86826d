"""Hand-computed toy cases for every metric: expected numbers derived in the comments from
the definitions of docs/metrics.md, not from the code."""

from __future__ import annotations

import chex
import numpy as np

from hiseg_jax.hierarchies import flat_label_space, index_label_space
from hiseg_jax.metrics import (
    Accumulator,
    TreePrediction,
    confusion_counts,
    evaluate_batch,
    evaluate_bsds_batch,
    hungarian_scores,
    nf_covering_batch,
    semantic_scores,
)
from hiseg_jax.metrics.covering import nm_covering
from hiseg_jax.metrics.regions import best_matches, candidate_nodes, node_ancestors, region_stats

# The toy tree on a 4x4 image (L = 2, M = 6 slots, slot 5 unused):
#   0 root; 1 = left half (cols 0-1, leaf); 2 = right half (cols 2-3);
#   3 = top-right quarter, 4 = bottom-right quarter (children of 2).
LEVELS = np.array(
    [
        np.zeros((4, 4)),
        [[1, 1, 2, 2]] * 4,
        [[1, 1, 3, 3], [1, 1, 3, 3], [1, 1, 4, 4], [1, 1, 4, 4]],
    ],
    np.int32,
)
VALID = np.array([1, 1, 1, 1, 1, 0], bool)
DEPTH = np.array([0, 1, 1, 2, 2, 0], np.int32)
PARENT = np.array([-1, 0, 0, 2, 2, -1], np.int32)


def toy_pred(batch: int = 1) -> TreePrediction:
    return TreePrediction(*(np.stack([x] * batch) for x in (LEVELS, VALID, DEPTH, PARENT)))


# Flat GT (labels 0 = A, 1 = B, 2 = C, 3 = a class absent here, -1 ignored):
#   A = cols 0-1 except the ignored (3, 0), plus (2, 2): 8 px; B = top-right quarter: 4 px;
#   C = (2, 3), (3, 2), (3, 3): 3 px. 15 valid pixels.
FLAT_GT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 2], [-1, 0, 2, 2]], np.int32)
FLAT_SPACE = index_label_space(np.full(4, -1), ignore_values=(-1,))
# Node areas over valid pixels: n1 = 7 (its (3, 0) is ignored), n2 = 8, n3 = 4, n4 = 4.
# A: n1 7/(8+7-7) = 7/8; n2 1/15; n4 1/11            -> m(A) = 1, TP 7, FP 0, FN 1
# B: n3 4/(4+4-4) = 1                                 -> m(B) = 3, TP 4, FP 0, FN 0
# C: n4 3/(3+4-3) = 3/4; n2 3/(3+8-3) = 3/8           -> m(C) = 4, TP 3, FP 1, FN 0
FLAT_IOU = [7 / 8, 1.0, 3 / 4]


def test_flat_covering_and_matches():
    scores = evaluate_batch(toy_pred(), FLAT_GT[None], FLAT_SPACE)
    m = scores.matches
    np.testing.assert_array_equal(m.node[0], [1, 3, 4, -1])
    np.testing.assert_allclose(m.iou[0], FLAT_IOU + [0.0], rtol=1e-6)
    np.testing.assert_array_equal(m.tp[0], [7, 4, 3, 0])
    np.testing.assert_array_equal(m.fp[0], [0, 0, 1, 0])
    np.testing.assert_array_equal(m.fn[0], [1, 0, 0, 0])
    assert int(scores.n_nodes[0]) == 4 and int(scores.n_regions[0, 0]) == 3
    # NM = (7/8 + 1 + 3/4) / 3 = 0.875; on a flat GT every lineage is {R}: NH = NM.
    np.testing.assert_allclose(scores.nm_covering[0, 0], 0.875, rtol=1e-6)
    np.testing.assert_allclose(scores.nh_covering[0], 0.875, rtol=1e-6)


def test_iou_threshold():
    # Threshold 0.8 zeroes C (3/4): NM = (7/8 + 1 + 0) / 3 = 0.625.
    scores = evaluate_batch(toy_pred(), FLAT_GT[None], FLAT_SPACE, threshold=0.8)
    np.testing.assert_allclose(scores.nm_covering[0, 0], 0.625, rtol=1e-6)


def test_flat_semantic_scores():
    # Per class (A, B, C): IoU = 7/(7+0+1), 4/4, 3/(3+1+0) = 7/8, 1, 3/4 -> mIoU 0.875.
    # pAcc = (7+4+3) / (8+4+3) = 14/15; mAcc = (7/8 + 1 + 1) / 3 = 23/24;
    # fIoU = 8/15 * 7/8 + 4/15 * 1 + 3/15 * 3/4 = 13.25/15. Class 3 is never seen: excluded.
    acc = Accumulator.for_regions(FLAT_SPACE)
    acc.add(evaluate_batch(toy_pred(), FLAT_GT[None], FLAT_SPACE), ["toy"])
    s = semantic_scores(acc.totals["tp"], acc.totals["fp"], acc.totals["fn"])
    np.testing.assert_allclose(s.iou, [7 / 8, 1, 3 / 4, 0])
    np.testing.assert_array_equal(s.seen, [True, True, True, False])
    np.testing.assert_allclose(
        [s.miou, s.pacc, s.macc, s.fiou], [0.875, 14 / 15, 23 / 24, 13.25 / 15]
    )
    summary = acc.summary()["all"]
    np.testing.assert_allclose([summary["miou"], summary["nm_covering"]], [0.875, 0.875], rtol=1e-6)


# Hierarchical GT: X (0) -> a (1), b (2); Y (3).  Pixels: b = left half, a = top-right,
# Y = bottom-right; X = a u b (12 px).  a = node 3, b = node 1, Y = node 4 exactly (IoU 1).
# X: n1 8/12 = 2/3; n2 4/(12+8-4) = 1/4; n3 4/12 -> m(X) = node 1, IoU 2/3.
# NM = (2/3 + 1 + 1 + 1) / 4 = 11/12.
# w(a): pi(a) = {a, X}; m(a) = 3, pi(3) = {3, 2, 0} holds m(a) but not m(X) = 1 -> 1/2.
# w(b): pi(b) = {b, X}; m(b) = 1, pi(1) = {1, 0} holds both -> 1.  w(X) = w(Y) = 1.
# NH = (2/3 + 1/2 + 1 + 1) / 4 = 19/24.
HIER_GT = np.array([[2, 2, 1, 1], [2, 2, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], np.int32)
HIER_SPACE = index_label_space([-1, 0, 0, -1])


def test_hierarchical_covering():
    scores = evaluate_batch(toy_pred(), HIER_GT[None], HIER_SPACE)
    np.testing.assert_array_equal(scores.matches.node[0], [1, 3, 1, 4])
    np.testing.assert_allclose(scores.matches.iou[0], [2 / 3, 1, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(scores.nm_covering[0, 0], 11 / 12, rtol=1e-6)
    np.testing.assert_allclose(scores.nh_covering[0], 19 / 24, rtol=1e-6)


def test_root_is_a_candidate_only_when_alone():
    # A tree that is only its root: both halves of FLAT-like GT match the root, IoU 8/16.
    pred = TreePrediction(
        np.zeros((1, 1, 4, 4), np.int32),
        np.array([[True, False]]),
        np.zeros((1, 2), np.int32),
        np.full((1, 2), -1, np.int32),
    )
    gt = np.array([[[0, 0, 1, 1]] * 4], np.int32)
    scores = evaluate_batch(pred, gt, flat_label_space(2))
    assert int(scores.n_nodes[0]) == 1
    np.testing.assert_array_equal(scores.matches.node[0], [0, 0])
    np.testing.assert_allclose(scores.nm_covering[0, 0], 0.5)


def test_nf_covering():
    # Instances 1 = top-left quarter (4 px), 2 = (2,2), (2,3), (3,2); 0 = background (not a
    # region, its pixels still count). 1: best n1 4/8; 2: best n4 3/(3+4-3) = 3/4.
    # NF = (1/2 + 3/4) / 2 = 0.625 over 2 instances.
    inst = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 0]], np.int32)
    value, count = nf_covering_batch(toy_pred(), inst[None], 3)
    np.testing.assert_allclose(value, [0.625], rtol=1e-6)
    np.testing.assert_array_equal(count, [2])


# BSDS: image 1 has three annotator slots:
#  S1 = FLAT_GT with (3, 0) labelled A: A 9 px, B 4, C 3 (16 px, all nodes full size).
#    Best (candidates 1-4): A 8/9, B 1, C 3/4 -> 9/16*8/9 + 4/16 + 3/16*3/4 = 14.25/16.
#    Level 0 {root}: IoU = area/16 -> (81 + 16 + 9)/256.  Level 1 {1, 2}: A 8/9, B 4/8,
#    C 3/8 -> 0.5 + 0.125 + 0.0703125.  Level 2 {1, 3, 4}: as Best.
#  S2 = one segment: best node IoU 8/16 -> 0.5; level 0 (root) 1; levels 1, 2: 0.5.
#  S3 = all -1: padding, not counted.  Means over S1, S2 below.
# Image 2, one annotator: left / right halves. Level 1 {1, 2}: 1. Level 2: left 1, right
# best 4/8 -> 0.75. Best: 1.
BSDS_1 = np.stack([np.where(FLAT_GT < 0, 0, FLAT_GT), np.full((4, 4), 5), np.full((4, 4), -1)])
BSDS_2 = np.stack([np.array([[0, 0, 1, 1]] * 4), np.full((4, 4), -1), np.full((4, 4), -1)])
S1 = [106 / 256, 0.6953125, 0.890625]
S2 = [1.0, 0.5, 0.5]


def test_bsds_covering():
    scores = evaluate_bsds_batch(toy_pred(2), np.stack([BSDS_1, BSDS_2]).astype(np.int32), 6)
    np.testing.assert_array_equal(scores.n_annotators, [2, 1])
    np.testing.assert_allclose(scores.best, [(0.890625 + 0.5) / 2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(scores.levels[0], (np.array(S1) + S2) / 2, rtol=1e-6)
    np.testing.assert_allclose(scores.levels[1], [0.5, 1.0, 0.75], rtol=1e-6)
    # ODS over levels 1..2: means (0.59765625 + 1)/2, (0.6953125 + 0.75)/2 -> level 1.
    # OIS: per-image best level, (0.6953125 + 1)/2.
    acc = Accumulator.for_bsds()
    acc.add(scores, ["img1", "img2"])
    summary = acc.summary()
    np.testing.assert_allclose(
        [summary["ods"], summary["ois"], summary["best"]],
        [0.798828125, 0.84765625, 0.84765625],
        rtol=1e-6,
    )
    assert summary["ods_level"] == 1 and summary["images"] == 2


def test_hungarian_beats_greedy():
    # Greedy would give both classes cluster 0; the assignment maximising matched pixels is
    # class 0 -> cluster 1 (4), class 1 -> cluster 0 (6): TP [4, 6], FN = row sums - TP =
    # [5, 1], FP = column sums - TP = [4 - 4, 11 - 6]. IoU = 4/9, 6/12 -> mIoU 17/36;
    # pAcc 10/16; mAcc (4/9 + 6/7)/2; fIoU 9/16 * 4/9 + 7/16 * 1/2 = 7.5/16.
    scores, assignment = hungarian_scores(np.array([[5, 4, 0], [6, 0, 1]]))
    np.testing.assert_array_equal(assignment, [1, 0])
    np.testing.assert_allclose(
        [scores.miou, scores.pacc, scores.macc, scores.fiou],
        [17 / 36, 10 / 16, (4 / 9 + 6 / 7) / 2, 7.5 / 16],
    )


def test_confusion_counts():
    # Two images; class x cluster pixel counts, ignored pixels (-1) dropped: class 0 meets
    # cluster 2 twice and cluster 1 once; class 1 meets cluster 0 four times.
    gt = np.array([[[0, 1], [1, -1]], [[0, 0], [1, 1]]], np.int32)
    clusters = np.array([[[2, 0], [0, 1]], [[2, 1], [0, 0]]], np.int32)
    np.testing.assert_array_equal(confusion_counts(gt, clusters, 2, 3), [[0, 1, 2], [4, 0, 0]])


class CoreJitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_per_image_core(self):
        # The per-image building blocks agree jitted and not; NM of the flat toy is 0.875.
        def core(labels, valid, depth, parent, gt):
            node_anc = node_ancestors(parent, valid, 2)
            stats = region_stats(labels[-1], gt, node_anc, None, 4)
            m = best_matches(stats, candidate_nodes(valid, depth))
            return nm_covering(m.iou, (stats.gt_area > 0)[None, :], 0.0), m.node

        (nm, count), node = self.variant(core)(LEVELS, VALID, DEPTH, PARENT, FLAT_GT)
        np.testing.assert_allclose(nm, [0.875], rtol=1e-6)
        np.testing.assert_array_equal(count, [3])
        np.testing.assert_array_equal(node, [1, 3, 4, -1])
