"""The Python API: `segment` end to end and its composable pieces."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from segment_cases import SIZE, SMALL, check_hierarchy

from hiseg_jax.api import as_image_list, segment
from hiseg_jax.models.vit import ViT, ViTConfig
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.tree import patch_level_labels, upsample_labels


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
    with pytest.raises(ValueError, match="not a refinement: 'guided'"):
        segment(image, backbone=tmp_path / "absent.safetensors", refine="guided")


@pytest.fixture(scope="module")
def two_images() -> list[np.ndarray]:
    import skimage.data

    coffee = skimage.data.coffee()[:250, :333].astype(np.float32) / 255.0
    return [skimage.data.chelsea(), coffee]


@pytest.mark.weights
@pytest.mark.slow
def test_segment_real_images_of_different_sizes(default_checkpoint, two_images):
    """Without a refinement (`refine=None`) the pixel maps are the patch labels upsampled."""
    common = dict(batch_size=2, refine=None, **SMALL)
    result = segment(two_images, default_checkpoint, SIZE, **common)
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

    swapped = segment(two_images[::-1], default_checkpoint, SIZE, **common)
    for b in range(2):
        np.testing.assert_array_equal(swapped.level_labels[1 - b], result.level_labels[b])
        np.testing.assert_allclose(
            swapped.leaf_descriptors[1 - b], result.leaf_descriptors[b], rtol=1e-5, atol=1e-5
        )


def test_package_exports_the_api_lazily():
    import hiseg_jax
    from hiseg_jax import api, images

    assert hiseg_jax.segment is api.segment and hiseg_jax.load_image is images.load_image
    assert hiseg_jax.GuidedConfig() == api.DEFAULT_REFINEMENT
    assert hiseg_jax.CRFConfig().n_iter == 10
    with pytest.raises(AttributeError):
        hiseg_jax.no_such_name  # noqa: B018


def test_an_image_result_does_not_depend_on_its_batch():
    """Every batch, the last one too, is padded to `batch_size` (one compiled shape): the
    same image alone (a padded batch of 4), last of five (the padded second batch) and in a
    full batch of 4 gets bit-identical trees, label maps (the default refinement's) and leaf
    descriptors."""
    tiny = ViT(
        ViTConfig("dinov2", 4, 32, 2, 2, 64, layer_scale=True, posemb_grid=8), rngs=nnx.Rngs(0)
    )
    rng = np.random.default_rng(3)
    pictures = [rng.integers(0, 256, (20 + 3 * i, 28, 3), dtype=np.uint8) for i in range(5)]
    for picture in pictures:
        picture[: picture.shape[0] // 2] //= 4  # a dark half: structure to split on
    config = PartitionConfig(n_parts=12, levels=3, kmeans_restarts=2, kmeans_max_iter=50)
    image = pictures[4]
    alone = segment([image], tiny, 32, batch_size=4, config=config, features="tokens")
    last = segment(pictures, tiny, 32, batch_size=4, config=config, features="tokens")
    full = segment(
        [pictures[0], image, *pictures[1:3]],
        tiny,
        32,
        batch_size=4,
        config=config,
        features="tokens",
    )
    assert int(alone.tree.valid.sum()) > 1
    for result, b in ((last, 4), (full, 1)):
        chex.assert_trees_all_equal(result.tree[b], alone.tree[0])
        np.testing.assert_array_equal(result.level_labels[b], alone.level_labels[0])
        np.testing.assert_array_equal(result.leaf_descriptors[b], alone.leaf_descriptors[0])


def test_degenerate_images_are_one_node_and_named_in_a_warning():
    """A 1 x 1 image (smaller than a patch: upsampled, with a warning), a constant grey and a
    black image: one colour, no structure, so a single-node tree and a warning naming each;
    a picture with structure in the same batch is split and gets no warning."""
    tiny = ViT(
        ViTConfig("dinov2", 4, 32, 2, 2, 64, layer_scale=True, posemb_grid=8), rngs=nnx.Rngs(0)
    )
    config = PartitionConfig(n_parts=12, levels=3, kmeans_restarts=2, kmeans_max_iter=50)
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 256, (26, 28, 3), dtype=np.uint8)
    picture[:13] //= 4
    images = [
        np.full((1, 1, 3), (200, 30, 90), np.uint8),
        np.full((50, 60, 3), 128, np.uint8),
        np.zeros((40, 40), np.uint8),
        picture,
    ]
    with pytest.warns(UserWarning) as caught:
        result = segment(images, tiny, 32, batch_size=4, config=config, features="tokens")
    assert [int(v.sum()) for v in result.tree.valid[:3]] == [1, 1, 1]
    assert int(result.tree.valid[3].sum()) > 1
    for labels in result.level_labels[:3]:
        assert (labels == 0).all()
    messages = [str(w.message) for w in caught]
    plain = "all its pixels have one colour: no structure to split, a single-node tree"
    assert messages == [
        "image 0: 1 x 1 pixels is smaller than one 4 x 4 patch: upsampled to 32 x 32 like "
        "every image",
        f"image 0: {plain}",
        f"image 1: {plain}",
        f"image 2: {plain}",
    ]
