"""The Python API: `segment` end to end and its composable pieces."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from segment_cases import SIZE, SMALL, check_hierarchy

from hiseg_jax.api import (
    as_image_list,
    crf_level_labels,
    leaf_descriptors,
    patch_level_labels,
    segment,
    upsample_labels,
)
from hiseg_jax.crf.dense_crf import CRFConfig
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.tree import Tree


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

    def test_identity_and_bad_size(self):
        labels = np.arange(12, dtype=np.int32).reshape(3, 4)
        np.testing.assert_array_equal(upsample_labels(labels, (3, 4)), labels)
        with pytest.raises(ValueError, match="positive"):
            upsample_labels(labels, (0, 4))


def small_tree() -> tuple[Tree, np.ndarray]:
    """Two images on a 2 x 3 grid, M = 5 slots; returns the tree and features [2, 2, 3, 4]."""
    labels = np.array(
        [
            [[0] * 6, [1, 1, 2, 2, 2, 2], [1, 1, 3, 3, 4, 4]],
            [[0] * 6, [1, 2, 1, 2, 1, 2], [1, 2, 1, 2, 1, 2]],
        ],
        np.int32,
    )
    parent = np.array([[-1, 0, 0, 2, 2], [-1, 0, 0, -1, -1]], np.int32)
    depth = np.array([[0, 1, 1, 2, 2], [0, 1, 1, 0, 0]], np.int32)
    valid = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    is_leaf = np.array([[0, 1, 0, 1, 1], [0, 1, 1, 0, 0]], bool)
    tree = Tree(labels, parent, depth, is_leaf, valid, np.zeros((2, 6), np.int32), grid=(2, 3))
    features = np.random.default_rng(2).normal(size=(2, 2, 3, 4)).astype(np.float32)
    return tree, features


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


@pytest.mark.slow
def test_crf_level_labels_follow_the_tree():
    """A tiny image whose colours and features agree with the patch labels: the CRF keeps
    the labels (up to a pixel at borders) and every depth stays consistent with the tree."""
    tree, _ = small_tree()
    patch_levels = np.asarray(patch_level_labels(tree))[0]
    leaf = patch_levels[-1]
    directions = np.eye(8, dtype=np.float32)[[0, 1, 0, 2, 3]]
    features = directions[leaf] * 5.0 + 0.1
    palette = np.array([[0, 0, 0], [250, 0, 0], [0, 0, 0], [0, 250, 0], [0, 0, 250]], np.uint8)
    image = np.kron(palette[leaf], np.ones((8, 8, 1), np.uint8))
    levels = crf_level_labels(image, features, patch_levels, CRFConfig())
    chex.assert_shape(levels, (3, 16, 24))
    check_hierarchy(levels, *(np.asarray(a)[0] for a in (tree.parent, tree.depth, tree.valid)))
    nearest = np.asarray(upsample_labels(patch_levels, (16, 24)))
    assert (levels == nearest).mean() > 0.95


def test_as_image_list_accepts_and_rejects():
    gray = np.full((5, 7), 9, np.uint8)
    (rgb,) = as_image_list(gray)
    assert rgb.shape == (5, 7, 3) and (rgb == 9).all()
    batch = as_image_list(np.zeros((2, 4, 4, 3), np.float32) + 0.5)
    assert len(batch) == 2 and batch[0].dtype == np.uint8 and (batch[0] == 128).all()
    assert len(as_image_list([np.zeros((3, 3, 3), np.uint8), np.zeros((5, 2), np.uint8)])) == 2
    assert len(as_image_list(jnp.zeros((6, 6, 1), jnp.uint8))) == 1
    with pytest.raises(ValueError, match="RGBA"):
        as_image_list(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"image 1: float images must be finite and in \[0, 1\]"):
        as_image_list([np.zeros((2, 2, 3)), np.full((2, 2, 3), 2.0)])
    with pytest.raises(ValueError, match="empty"):
        as_image_list([])
    with pytest.raises(ValueError, match="int64"):
        as_image_list(np.zeros((2, 2, 3), np.int64))


def test_segment_rejects_bad_settings(tmp_path):
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown partition parameters"):
        segment(image, n_part=3)
    with pytest.raises(ValueError, match="not both"):
        segment(image, config=PartitionConfig(), levels=2)
    with pytest.raises(ValueError, match="batch_size"):
        segment(image, batch_size=0)
    with pytest.raises(ValueError, match="no such checkpoint"):
        segment(image, backbone=tmp_path / "absent.safetensors")


@pytest.fixture(scope="module")
def two_images() -> list[np.ndarray]:
    import skimage.data

    coffee = skimage.data.coffee()[:250, :333].astype(np.float32) / 255.0
    return [skimage.data.chelsea(), coffee]


@pytest.mark.weights
@pytest.mark.slow
def test_segment_real_images_of_different_sizes(default_checkpoint, two_images):
    result = segment(two_images, default_checkpoint, SIZE, batch_size=2, **SMALL)
    assert len(result) == 2
    tree = result.tree
    assert tree.grid == (SIZE // 14, SIZE // 14) and tree.labels.shape[:2] == (2, 4)
    patch_levels = np.asarray(patch_level_labels(tree))
    for b, image in enumerate(two_images):
        levels = result.level_labels[b]
        chex.assert_shape(levels, (4, *image.shape[:2]))
        np.testing.assert_array_equal(levels, upsample_labels(patch_levels[b], image.shape[:2]))
        rows = (np.asarray(a)[b] for a in (tree.parent, tree.depth, tree.valid))
        check_hierarchy(levels, *rows)
        assert len(np.unique(levels[-1])) > 1, "the real image was not split at all"
    leaves = np.asarray(tree.is_leaf)
    assert np.isfinite(result.leaf_descriptors).all()
    assert (np.abs(result.leaf_descriptors).sum(-1) > 0)[leaves].all()
    assert (result.leaf_descriptors[~leaves] == 0).all()

    swapped = segment(two_images[::-1], default_checkpoint, SIZE, batch_size=2, **SMALL)
    for b in range(2):
        np.testing.assert_array_equal(swapped.level_labels[1 - b], result.level_labels[b])
        np.testing.assert_allclose(
            swapped.leaf_descriptors[1 - b], result.leaf_descriptors[b], rtol=1e-5, atol=1e-5
        )


def test_package_exports_the_api_lazily():
    import hiseg_jax
    from hiseg_jax import api, images

    assert hiseg_jax.segment is api.segment and hiseg_jax.load_image is images.load_image
    with pytest.raises(AttributeError):
        hiseg_jax.no_such_name  # noqa: B018
