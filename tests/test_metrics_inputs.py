"""Bad input gets a ValueError naming the problem, raised on the host before tracing."""

from __future__ import annotations

import numpy as np
import pytest

from hiseg_jax.hierarchies import flat_label_space, label_space, load_hierarchy
from hiseg_jax.metrics import TreePrediction, evaluate_batch, evaluate_bsds_batch

# Root 0 with children 1 (left half) and 2 (right half) on a 4x4 image; slot 3 unused.
LEVELS = np.array([np.zeros((4, 4)), [[1, 1, 2, 2]] * 4], np.int32)[None]
GOOD = TreePrediction(
    LEVELS,
    np.array([[1, 1, 1, 0]], bool),
    np.array([[0, 1, 1, 0]], np.int32),
    np.array([[-1, 0, 0, -1]], np.int32),
)
SPACE = flat_label_space(3, ignore_values=(255,))
GT = np.array([[[0, 0, 1, 1]] * 4])


def with_(**changes) -> TreePrediction:
    return GOOD._replace(**changes)


def test_good_input_passes():
    scores = evaluate_batch(GOOD, GT, SPACE)
    np.testing.assert_allclose(scores.nm_covering[0, 0], 1.0)


@pytest.mark.parametrize(
    "pred, gt, message",
    [
        (GOOD, GT[:, :3], "label maps of different shapes"),
        (GOOD, np.concatenate([GT, GT]), "label maps of different shapes"),
        (with_(node_valid=GOOD.node_valid[:, :3]), GT, "must share one shape"),
        (with_(level_labels=LEVELS.astype(float)), GT, "level_labels must be an integer array"),
        (with_(level_labels=LEVELS[0]), GT, "level_labels must be an integer array with 4 dims"),
        (with_(node_valid=GOOD.node_valid.astype(int)), GT, "node_valid must be bool"),
        (with_(level_labels=LEVELS + 3), GT, r"outside \[-1, M\): 16 pixels in images \[0\]"),
        (with_(level_labels=np.where(LEVELS == 2, 3, LEVELS)), GT, "naming an invalid node slot"),
        (with_(node_depth=np.array([[0, 1, 2, 0]], np.int32)), GT, "inconsistent"),
        (with_(node_parent=np.array([[-1, 0, 5, -1]], np.int32)), GT, "invalid parent"),
        (with_(node_valid=np.array([[0, 1, 1, 0]], bool)), GT, "node 0 must be the valid root"),
        (with_(level_labels=np.stack([LEVELS[0, 1], LEVELS[0, 1]])[None]), GT, "upper levels"),
        (with_(level_labels=np.where(np.arange(4) == 3, -1, LEVELS)), GT, "prediction padding"),
    ],
)
def test_bad_prediction(pred, gt, message):
    with pytest.raises(ValueError, match=message):
        evaluate_batch(pred, gt, SPACE)


def test_labels_absent_from_hierarchy():
    space = label_space(load_hierarchy("voc2012"))
    with pytest.raises(ValueError, match=r"not in hierarchy 'voc2012': \[21, 254\]"):
        evaluate_batch(GOOD, np.array([[[0, 21, 254, 255]] * 4]), space)
    with pytest.raises(ValueError, match="must be integers"):
        evaluate_batch(GOOD, GT.astype(np.float32), SPACE)


def test_encoded_bsds_labels_out_of_range():
    with pytest.raises(ValueError, match=r"ground-truth labels outside \[-1, K\)"):
        evaluate_bsds_batch(GOOD, np.stack([GT, GT], axis=1), 1)
    with pytest.raises(ValueError, match="ground truth must be an integer array with 4 dims"):
        evaluate_bsds_batch(GOOD, GT, 3)


def test_all_ignored_image_is_a_counted_skip_not_nan():
    scores = evaluate_batch(GOOD, np.full((1, 4, 4), 255), SPACE)
    assert int(scores.n_regions[0, 0]) == 0
    assert float(scores.nm_covering[0, 0]) == 0.0 and float(scores.nh_covering[0]) == 0.0
    bsds = evaluate_bsds_batch(GOOD, np.full((1, 2, 4, 4), -1), 3)
    assert int(bsds.n_annotators[0]) == 0 and float(bsds.best[0]) == 0.0


def test_level_check_can_be_disabled():
    # Upper levels are not read: with the check off, a wrong level 0 changes nothing.
    bad = with_(level_labels=np.stack([LEVELS[0, 1], LEVELS[0, 1]])[None])
    scores = evaluate_batch(bad, GT, SPACE, check_levels=False)
    np.testing.assert_allclose(scores.nm_covering[0, 0], 1.0)
