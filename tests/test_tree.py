"""The Tree pytree and its helpers, on a hand-built batch of two trees."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hiseg_jax import tree as T


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
