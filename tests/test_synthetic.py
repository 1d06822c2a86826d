"""Synthetic planted hierarchies: shapes, determinism, nesting, and the planted structure."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from hiseg_jax.spectral.synthetic import planted_hierarchy, planted_part_graph


def _check_nested(groups, branching, n):
    """Each level's groups partition range(n); each group lies inside one coarser group."""
    by_level = {}
    for level, mask in groups:
        by_level.setdefault(level, []).append(mask)
    assert sorted(by_level) == list(range(1, len(branching) + 1))
    for level, masks in by_level.items():
        assert len(masks) == int(np.prod(branching[:level]))
        np.testing.assert_array_equal(np.sum(masks, axis=0), np.ones(n))
        if level > 1:
            for m in masks:
                assert sum(bool((m & p).any()) for p in by_level[level - 1]) == 1


def test_planted_hierarchy_shapes_and_nesting():
    feats, groups = planted_hierarchy(0, grid=(24, 20), branching=(2, 3, 2), dim=96)
    assert feats.shape == (24, 20, 96) and feats.dtype == np.float32
    assert np.all(np.isfinite(feats))
    _check_nested(groups, (2, 3, 2), 24 * 20)


def test_planted_groups_are_filled_rectangles():
    _, groups = planted_hierarchy(0, grid=(24, 24))
    for _, mask in groups:
        rows, cols = np.nonzero(mask.reshape(24, 24))
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == mask.sum()


def test_planted_features_follow_the_hierarchy():
    """Mean cosine similarity drops with every level two patches' groups split at."""
    feats, groups = planted_hierarchy(0, grid=(24, 24))
    x = feats.reshape(-1, feats.shape[-1]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    common = np.zeros_like(sim, dtype=np.int64)  # deepest level whose group holds both
    for level, mask in groups:
        common[np.ix_(mask, mask)] = np.maximum(common[np.ix_(mask, mask)], level)
    means = [sim[common == level].mean() for level in range(4)]
    assert means == sorted(means) and means[0] < means[1] - 0.1


def test_planted_hierarchy_is_deterministic():
    a, ga = planted_hierarchy(7)
    b, gb = planted_hierarchy(7)
    np.testing.assert_array_equal(a, b)
    for (la, ma), (lb, mb) in zip(ga, gb, strict=True):
        assert la == lb and np.array_equal(ma, mb)
    assert not np.array_equal(a, planted_hierarchy(8)[0])


def test_jax_keys_are_accepted():
    typed, raw = jax.random.key(3), jax.random.PRNGKey(3)
    np.testing.assert_array_equal(planted_hierarchy(typed)[0], planted_hierarchy(raw)[0])
    np.testing.assert_array_equal(planted_part_graph(typed)[0], planted_part_graph(raw)[0])
    assert not np.array_equal(planted_hierarchy(raw)[0], planted_hierarchy(4)[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"branching": (2, 1)}, "branching"),
        ({"dim": 20}, "dim must be"),
        ({"grid": (3, 3), "branching": (4, 4)}, "too small"),
        ({"scales": (1.0, 0.5)}, "one scale per level"),
    ],
)
def test_planted_hierarchy_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        planted_hierarchy(0, **kwargs)


def test_planted_part_graph_structure():
    wp, groups = planted_part_graph(0, branching=(2, 3), leaf_size=5)
    assert wp.shape == (30, 30) and wp.dtype == np.float64
    np.testing.assert_array_equal(wp, wp.T)
    assert not np.diag(wp).any() and np.all(wp[~np.eye(30, dtype=bool)] > 0)
    _check_nested(groups, (2, 3), 30)
    assert any(np.ptp(np.flatnonzero(m)) + 1 != m.sum() for _, m in groups)  # shuffled
    top, leaf = ([m for lv, m in groups if lv == level] for level in (1, 2))
    same_leaf = np.any([np.outer(m, m) for m in leaf], axis=0) & ~np.eye(30, dtype=bool)
    same_top = np.any([np.outer(m, m) for m in top], axis=0) & ~np.eye(30, dtype=bool)
    assert wp[same_leaf].min() > wp[same_top & ~same_leaf].max()
    assert wp[same_top & ~same_leaf].min() > wp[~same_top].max()


def test_planted_part_graph_bad_input():
    with pytest.raises(ValueError, match="affinities"):
        planted_part_graph(0, branching=(2, 3), affinities=(0.1, 1.0))
