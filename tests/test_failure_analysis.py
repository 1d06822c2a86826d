"""benchmarks/failure_analysis.py's NumPy covering and majority oracle on hand-made maps."""

from __future__ import annotations

import failure_analysis  # benchmarks/ (tests/conftest.py puts it on sys.path)
import numpy as np
import pytest


def test_covering_by_nodes_by_hand():
    """Segments of 12 and 4 pixels; the nodes are the whole image (level 0) and a 3 / 1
    column split (level 1): IoU 12/12 and 4/4 at level 1, 12/16 and 4/16 at level 0."""
    gt = np.zeros((4, 4), int)
    gt[:, 3] = 1
    levels = np.stack([np.zeros((4, 4), int), gt * 7 + 2])
    assert failure_analysis.covering_by_nodes(gt, levels) == pytest.approx(1.0)
    assert failure_analysis.covering_by_nodes(gt, levels[:1]) == pytest.approx(
        (12 * 12 / 16 + 4 * 4 / 16) / 16
    )


def test_covering_ignores_negative_gt():
    gt = np.array([[0, 0, -1, -1]])
    assert failure_analysis.covering_by_nodes(gt, np.array([[[5, 5, 6, 6]]])) == 1.0
    assert failure_analysis.covering_by_nodes(gt, np.array([[[5, 6, 6, 6]]])) == 0.5


def test_majority_partition_recovers_the_segments_from_finer_pieces():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (12, 12))
    pixels = np.arange(gt.size).reshape(gt.shape)  # every pixel its own piece
    assert np.array_equal(failure_analysis.majority_partition(gt, pixels), gt)
    halves = np.repeat([[0, 1]], 12, axis=0).repeat(6, axis=1)  # two pieces only
    merged = failure_analysis.majority_partition(gt, halves)
    for piece in (0, 1):
        votes = np.bincount(gt[halves == piece], minlength=5)
        assert set(np.unique(merged[halves == piece])) == {int(votes.argmax())}


def test_image_record_leaves_the_root_out_of_best():
    """One human segment over the whole image: a tree that splits it in halves scores Best
    .5 (the root does not count, as in `hiseg evaluate`); a tree that never splits scores 1
    (the root is its only node)."""
    gts = np.zeros((1, 4, 4), int)
    halves = np.repeat([[0, 0, 1, 1]], 4, axis=0)
    split = np.stack([np.zeros((4, 4), int), halves + 1])
    assert failure_analysis.image_record(gts, split, {})["best"] == pytest.approx(0.5)
    unsplit = np.zeros((3, 4, 4), int)
    assert failure_analysis.image_record(gts, unsplit, {})["best"] == pytest.approx(1.0)
