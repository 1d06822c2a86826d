"""The Tree pytree and its helpers, on hand-built batches of two trees; its label maps
(per patch, upsampled per pixel) and leaf descriptors."""

from __future__ import annotations

import json
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from segment_cases import small_tree

from hiseg_jax import tree as T
from hiseg_jax.tree import leaf_descriptors, patch_level_labels, upsample_labels


@pytest.fixture(scope="module")
def tree() -> T.Tree:
    """B = 2, grid 2x3 (N = 6), L = 2, P = 3 (M = 7 slots).

    Image 0: root -> {1: patches 0-2, 2: patches 3-5}; 1 -> {4: 0-1, 5: 2}; 2 stops.
    Image 1: the root alone.
    """
    labels = np.zeros((2, 3, 6), np.int32)
    labels[0, 1] = [1, 1, 1, 2, 2, 2]
    labels[0, 2] = [4, 4, 5, 2, 2, 2]
    parent = np.array([[-1, 0, 0, -1, 1, 1, -1], [-1] * 7], np.int32)
    depth = np.array([[0, 1, 1, 0, 2, 2, 0], [0] * 7], np.int32)
    valid = np.array([[1, 1, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0]], bool)
    is_leaf = np.array([[0, 0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0]], bool)
    parts = np.array([[0, 0, 1, 2, 2, 2], [0, 1, 2, 0, 1, 2]], np.int32)
    return T.Tree(*map(jnp.asarray, (labels, parent, depth, is_leaf, valid, parts)), grid=(2, 3))


def test_shape_properties(tree):
    assert tree.batch_size == 2
    assert tree.levels == 2


def test_node_mask(tree):
    np.testing.assert_array_equal(T.node_mask(tree, 0, 1), [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(T.node_mask(tree, 0, 5), [[0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(T.node_mask(tree, 0, 2), [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(T.node_mask(tree, 1, 0), np.ones((2, 3), bool))
    assert not T.node_mask(tree, 0, 3).any()  # an unused slot is empty
    assert not T.node_mask(tree, 1, 1).any()


def test_level_maps_and_leaves(tree):
    np.testing.assert_array_equal(T.level_map(tree, 0), np.zeros((2, 2, 3)))
    np.testing.assert_array_equal(T.level_map(tree, 1)[0], [[1, 1, 1], [2, 2, 2]])
    np.testing.assert_array_equal(T.leaves(tree)[0], [[4, 4, 5], [2, 2, 2]])
    np.testing.assert_array_equal(T.leaves(tree), T.level_map(tree, 2))
    # Every leaf id in the map is flagged a leaf.
    leaf_ids = np.unique(np.asarray(T.leaves(tree)[0]))
    assert np.asarray(tree.is_leaf[0])[leaf_ids].all()


def test_num_nodes(tree):
    np.testing.assert_array_equal(T.num_nodes(tree), [5, 1])


def test_to_json(tree):
    out = T.to_json(tree, 0)
    json.dumps(out)  # JSON-able
    assert (out["id"], out["depth"], out["area"], out["parts"]) == (0, 0, 6, [0, 1, 2])
    assert [c["id"] for c in out["children"]] == [1, 2]
    one, two = out["children"]
    assert (one["area"], one["parts"]) == (3, [0, 1])
    assert [(c["id"], c["area"], c["depth"]) for c in one["children"]] == [(4, 2, 2), (5, 1, 2)]
    assert two["children"] == [] and two["area"] == 3
    assert T.to_json(tree, 1) == {
        "id": 0,
        "depth": 0,
        "parts": [0, 1, 2],
        "area": 6,
        "children": [],
    }


def test_indexing_and_unbatch(tree):
    first = tree[0]
    assert first.labels.shape == (1, 3, 6) and first.grid == (2, 3)
    np.testing.assert_array_equal(tree[-1].valid, tree.valid[1:])
    parts = T.unbatch(tree)
    assert len(parts) == 2
    for b, single in enumerate(parts):
        for name in ("labels", "parent", "depth", "is_leaf", "valid", "parts"):
            np.testing.assert_array_equal(getattr(single, name)[0], getattr(tree, name)[b])


def test_is_a_pytree_with_static_grid(tree):
    leaves, treedef = jax.tree.flatten(tree)
    assert len(leaves) == 6  # grid is metadata, not a leaf
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.grid == (2, 3)
    count = jax.jit(T.num_nodes)(tree)  # passes through jit as an argument
    np.testing.assert_array_equal(count, [5, 1])


# --- label maps and leaf descriptors ----------------------------------------------------


def nearest_reference(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel centre (y + 1/2, x + 1/2) mapped onto the stretched patch grid, by loops."""
    h, w = labels.shape[-2:]
    out = np.empty(labels.shape[:-2] + (height, width), labels.dtype)
    for y in range(height):
        for x in range(width):
            out[..., y, x] = labels[..., int((y + 0.5) * h / height), int((x + 0.5) * w / width)]
    return out


class UpsampleTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(((37, 50),), ((4, 6),), ((3, 2),), ((17, 29),))
    def test_matches_reference(self, out_hw):
        labels = np.random.default_rng(0).integers(0, 50, size=(3, 4, 6)).astype(np.int32)
        upsample = self.variant(upsample_labels, static_argnums=1)
        out = np.asarray(upsample(labels, out_hw))
        chex.assert_shape(out, (3, *out_hw))
        np.testing.assert_array_equal(out, nearest_reference(labels, *out_hw))

    def test_vmap_over_images(self):
        labels = np.random.default_rng(1).integers(0, 9, size=(2, 3, 4, 6)).astype(np.int32)
        out = jax.vmap(lambda a: upsample_labels(a, (10, 7)))(labels)
        np.testing.assert_array_equal(out, nearest_reference(labels, 10, 7))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(((14, 7), (37, 50)), ((4, 3), (17, 29)), ((5, 1), (9, 40)))
    def test_overlapping_patches_take_the_nearest_patch_centre(self, patch_stride, out_hw):
        """Reference: each pixel centre, stretched over the input p + s (h - 1) pixels tall,
        takes the patch centre p / 2 + s i nearest to it (exact fractions; ties go to the
        later patch, as the pixel at a boundary between two equal cells at overlap 1)."""
        labels = np.random.default_rng(2).integers(0, 50, size=(3, 4, 6)).astype(np.int32)
        upsample = self.variant(upsample_labels, static_argnums=(1, 2))
        out = np.asarray(upsample(labels, out_hw, patch_stride))
        p, s = patch_stride

        def nearest(pixels: int, cells: int) -> list[int]:
            centres = [Fraction(p, 2) + s * i for i in range(cells)]
            span = p + s * (cells - 1)
            index = []
            for y in range(pixels):
                u = (y + Fraction(1, 2)) * span / pixels
                gaps = [abs(u - c) for c in centres]
                index.append(max(i for i, g in enumerate(gaps) if g == min(gaps)))
            return index

        rows, cols = nearest(out_hw[0], 4), nearest(out_hw[1], 6)
        np.testing.assert_array_equal(out, labels[:, rows][:, :, cols])
        np.testing.assert_array_equal(
            upsample_labels(labels, out_hw, (p, p)), upsample_labels(labels, out_hw)
        )

    def test_identity_and_bad_size(self):
        labels = np.arange(12, dtype=np.int32).reshape(3, 4)
        np.testing.assert_array_equal(upsample_labels(labels, (3, 4)), labels)
        with pytest.raises(ValueError, match="positive"):
            upsample_labels(labels, (0, 4))
        with pytest.raises(ValueError, match=r"1 <= stride <= patch, got \(7, 14\)"):
            upsample_labels(labels, (6, 8), (7, 14))


def test_leaf_descriptors_are_leaf_means():
    tree, features = small_tree()
    out = np.asarray(leaf_descriptors(features, tree))
    chex.assert_shape(out, (2, 5, 4))
    flat = features.reshape(2, 6, 4)
    for b in range(2):
        for m in range(5):
            expected = (
                flat[b][tree.labels[b, -1] == m].mean(0) if tree.is_leaf[b, m] else np.zeros(4)
            )
            np.testing.assert_allclose(out[b, m], expected, rtol=1e-6, atol=1e-6)


def test_patch_level_labels_shape():
    tree, _ = small_tree()
    levels = np.asarray(patch_level_labels(tree))
    chex.assert_shape(levels, (2, 3, 2, 3))
    np.testing.assert_array_equal(levels[0, 2], [[1, 1, 3], [3, 4, 4]])
