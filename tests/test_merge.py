"""Merging of small leaves (`spectral.merge`) against the NumPy oracle
(`reference.merge_small_leaves`) on random nested trees, with and without jit, and the
properties the merge promises."""

from __future__ import annotations

import dataclasses

import chex
import jax
import numpy as np
import pytest
from absl.testing import parameterized

from hiseg_jax.spectral import reference
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.spectral.merge import merge_small_leaves
from hiseg_jax.spectral.partition import partition

GRID = (6, 7)


def random_tree(seed: int, grid: tuple[int, int] = GRID, levels: int = 3) -> tuple:
    """A random tree in `hiseg_jax.tree.Tree` layout for one image (P = N slots a depth):
    the root, then each node of a depth with probability .7, splits into the 2-4 Voronoi
    cells of random seed patches. Returns (labels [L + 1, N], parent, depth, valid [M])."""
    rng = np.random.default_rng(seed)
    h, w = grid
    n = h * w
    slots = 1 + levels * n
    rows, cols = np.divmod(np.arange(n), w)
    labels = np.zeros((levels + 1, n), np.int32)
    parent = np.full(slots, -1, np.int32)
    depth = np.zeros(slots, np.int32)
    valid = np.zeros(slots, bool)
    valid[0] = True
    active = [0]
    for d in range(1, levels + 1):
        labels[d] = labels[d - 1]
        slot, born = 1 + (d - 1) * n, []
        for m in active:
            inside = np.flatnonzero(labels[d - 1] == m)
            if inside.size < 2 or (d > 1 and rng.random() > 0.7):
                continue
            seeds = rng.choice(inside, size=min(inside.size, rng.integers(2, 5)), replace=False)
            dist = (rows[inside, None] - rows[seeds]) ** 2 + (cols[inside, None] - cols[seeds]) ** 2
            cell = np.argmin(dist, axis=1)
            for c in range(seeds.size):
                labels[d, inside[cell == c]] = slot
                parent[slot], depth[slot], valid[slot] = m, d, True
                born.append(slot)
                slot += 1
        active = born
    return labels, parent, depth, valid


class MergeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((0, 2), (1, 3), (2, 5), (3, 4), (4, 8), (5, 3))
    def test_matches_reference(self, seed: int, min_patches: int) -> None:
        tree = random_tree(seed)
        merge = self.variant(merge_small_leaves, static_argnames="grid")
        got = merge(*tree, grid=GRID, min_patches=min_patches)
        want = reference.merge_small_leaves(*tree, GRID, min_patches)
        for g, r in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g), r)

    @parameterized.parameters(0, 1, 2, 3, 4, 5, 6, 7)
    def test_properties(self, seed: int) -> None:
        tree = random_tree(seed)
        labels, parent, depth, valid, is_leaf = reference.merge_small_leaves(*tree, GRID, 4)
        area = np.bincount(labels[-1], minlength=valid.size)
        assert valid.sum() < tree[3].sum()  # random trees always have leaves below 4 patches
        assert np.all(area[is_leaf & (parent >= 0)] >= 4)
        assert set(np.unique(labels[-1])) == set(np.flatnonzero(is_leaf))
        for m in np.flatnonzero(valid & (parent >= 0)):
            inside = labels[depth[m]] == m
            assert np.all(labels[depth[parent[m]], inside] == parent[m])
            assert valid[parent[m]] and depth[parent[m]] == depth[m] - 1
        for d in range(labels.shape[0]):
            assert np.all(valid[labels[d]])
        for upper, lower in zip(labels[:-1], labels[1:], strict=True):
            assert np.all((lower == upper) | (parent[lower] == upper))

    def test_min_patches_one_keeps_tree(self) -> None:
        tree = random_tree(0)
        got = merge_small_leaves(*tree, grid=GRID, min_patches=1)
        for g, r in zip(got[:4], tree, strict=True):
            np.testing.assert_array_equal(np.asarray(g), r)

    def test_by_hand(self) -> None:
        """2 x 3 grid: root -> {1: patches 0-4, 2: patch 5}; 1 -> {4: 0, 1, 3, 4; 5: 2}.
        Below 2 patches: leaves 2 and 5 have one patch, the smaller slot goes first: 2 joins
        1 (at depth 2 its patch borders 4 and 5 once each and joins the larger, 4); 1, the
        root's only child, stays (inner); 5 joins 4, then 1 absorbs its lonely leaf 4 and
        the root absorbs 1: the root alone."""
        labels = np.array([[0] * 6, [1, 1, 1, 1, 1, 2], [4, 4, 5, 4, 4, 2]], np.int32)
        parent = np.array([-1, 0, 0, -1, 1, 1, -1, -1, -1, -1, -1, -1, -1], np.int32)
        depth = np.array([0, 1, 1, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0], np.int32)
        valid = parent >= 0
        valid[0] = True
        got = merge_small_leaves(labels, parent, depth, valid, (2, 3), 2)
        np.testing.assert_array_equal(np.asarray(got[0]), np.zeros((3, 6)))
        np.testing.assert_array_equal(np.flatnonzero(np.asarray(got[3])), [0])
        got = merge_small_leaves(labels, parent, depth, valid, (2, 3), 5)
        np.testing.assert_array_equal(np.flatnonzero(np.asarray(got[3])), [0])
        got = reference.merge_small_leaves(labels, parent, depth, valid, (2, 3), 2)
        np.testing.assert_array_equal(np.flatnonzero(got[3]), [0])


def test_partition_applies_the_merge():
    """merge_below > 1 gives the merge of the unmerged tree, and no small non-root leaf."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 10, 12, 8)).astype(np.float32)
    config = PartitionConfig(n_parts=30, levels=4, kmeans_restarts=2)
    plain = partition(feats, config, jax.random.key(1))
    leaf = np.asarray(plain.is_leaf & (plain.parent >= 0))
    slots = leaf.shape[1]
    areas = [np.bincount(np.asarray(plain.labels[b, -1]), minlength=slots)[leaf[b]] for b in (0, 1)]
    below = int(np.concatenate(areas).min()) + 1  # at least one leaf is merged
    merged = partition(feats, dataclasses.replace(config, merge_below=below), jax.random.key(1))
    for b in range(2):
        args = (np.asarray(a[b]) for a in (plain.labels, plain.parent, plain.depth, plain.valid))
        want = reference.merge_small_leaves(*args, plain.grid, below)
        got = (merged.labels, merged.parent, merged.depth, merged.valid, merged.is_leaf)
        for g, r in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g[b]), r)
        area = np.bincount(want[0][-1], minlength=want[3].size)
        assert np.all(area[want[4] & (want[1] >= 0)] >= below)
    assert merged.valid.sum() < plain.valid.sum()


def test_config_rejects_negative_merge_below():
    with pytest.raises(ValueError, match="merge_below"):
        PartitionConfig(merge_below=-1)
