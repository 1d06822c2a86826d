"""Dense CRF (hiseg_jax.crf.dense_crf) and its permutohedral lattice (hiseg_jax.crf.lattice).

References: Krähenbühl's C++ code (PyPI `pydensecrf2`, test-only; the tests that need it
skip without it) for the filter and the whole mean field; exact O(N^2) Gaussian sums for
the lattice's approximation error; PyTorch's antialiased bicubic resize for the unaries.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from segment_cases import check_hierarchy, small_tree

from hiseg_jax.crf.dense_crf import (
    ABSENT,
    CRFConfig,
    bicubic_matrix,
    crf_level_labels,
    dense_crf,
    gaussian_blur,
    lattice_capacities,
    leaf_unaries,
    mean_field,
    refine_leaves,
    refine_levels,
)
from hiseg_jax.crf.lattice import build_lattice, lattice_filter
from hiseg_jax.crf.reference import pydensecrf_marginals
from hiseg_jax.tree import patch_level_labels, upsample_labels

SIZE = 96  # every CRF test image is SIZE x SIZE with K labels, so compilations are shared
PATCH = 8
K = 6
EXACT = CRFConfig(spatial="exact")


# ---------------------------------------------------------------------------------------
# Helpers.


def _pixel_features(image: np.ndarray, sxy: float, srgb: float | None) -> np.ndarray:
    """pydensecrf's kernel features: (x, y) / sxy, then (r, g, b) / srgb if given."""
    h, w = image.shape[:2]
    y, x = np.mgrid[:h, :w].astype(np.float32)
    feats = [x / sxy, y / sxy]
    if srgb is not None:
        feats += [image[..., c].astype(np.float32) / srgb for c in range(3)]
    return np.stack(feats, -1).reshape(h * w, -1).astype(np.float32)


def _pydensecrf_filter(image: np.ndarray, x: np.ndarray, sxy: float, srgb: float | None):
    """pydensecrf's normalised filter N K N applied to x [H, W] (|x| < 1).

    One mean-field step on two labels with Q_0 = ((1 + x) / 2, (1 - x) / 2) and Potts weight
    1 gives log(Q_1[0] / Q_1[1]) = -(U_0 - U_1) + (N K N x): the filter's output is read
    back from the marginals.
    """
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    h, w = x.shape
    p0 = ((1 + x.ravel()) / 2).astype(np.float64)
    unary = np.stack([-np.log(p0), -np.log(1 - p0)]).astype(np.float32)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(unary)
    if srgb is None:
        crf.addPairwiseGaussian(sxy=sxy, compat=1)
    else:
        crf.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=np.array(image, order="C"), compat=1)
    q = np.array(crf.inference(1), np.float64)
    return (np.log(q[0]) - np.log(q[1]) + unary[0] - unary[1]).reshape(h, w)


_build = jax.jit(build_lattice, static_argnums=1)


@jax.jit
def _normalised_filter(lattice, values):
    norm = jax.lax.rsqrt(lattice_filter(lattice, jnp.ones((values.shape[0], 1))) + 1e-20)
    return norm * lattice_filter(lattice, norm * values)


def _normalised_lattice(features: np.ndarray, values: np.ndarray) -> np.ndarray:
    """N K N values with the lattice at full capacity N (d + 1)."""
    lattice = _build(jnp.asarray(features), features.shape[0] * (features.shape[1] + 1))
    return np.asarray(_normalised_filter(lattice, jnp.asarray(values, jnp.float32)))


def _exact_normalised(features: np.ndarray, values: np.ndarray) -> np.ndarray:
    f = features.astype(np.float64)
    kernel = np.exp(-0.5 * ((f[:, None] - f[None]) ** 2).sum(-1))
    norm = 1 / np.sqrt(kernel.sum(1, keepdims=True))
    return norm * (kernel @ (norm * values))


def _resize(image: np.ndarray, nearest: bool = False) -> np.ndarray:
    method = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((SIZE, SIZE), method))


def _astronaut() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's astronaut at SIZE^2 with a SLIC over-segmentation as 'ground truth'."""
    from skimage import data, segmentation

    image = _resize(data.astronaut())
    regions = segmentation.slic(image, n_segments=K, compactness=20, start_label=0)
    return image, regions


def _voc(root, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A PASCAL VOC crop at SIZE^2 and its class map (palette colours -> 0..n-1)."""
    folder = root / "voc2012_samples"
    image = _resize(np.asarray(Image.open(folder / f"{name}_image.png").convert("RGB")))
    target = _resize(np.asarray(Image.open(folder / f"{name}_target.png").convert("RGB")), True)
    code = target.astype(np.int64) @ np.array([65536, 256, 1])
    return image, np.unique(code, return_inverse=True)[1].reshape(code.shape)


def _leaf_inputs(regions: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patch leaves (the region at each patch centre) and noisy one-hot patch features."""
    rng = np.random.default_rng(seed)
    leaves = regions[PATCH // 2 :: PATCH, PATCH // 2 :: PATCH]
    leaves = np.unique(leaves, return_inverse=True)[1].reshape(leaves.shape) % K
    onehot = np.eye(K)[leaves] + rng.normal(0, 0.35, (*leaves.shape, K))
    noise = rng.normal(0, 0.3, (*leaves.shape, 10))
    return np.concatenate([onehot, noise], -1).astype(np.float32), leaves


# ---------------------------------------------------------------------------------------
# Lattice.


@pytest.mark.parametrize(("sxy", "srgb"), [(1.0, None), (3.0, None), (67.0, 3.0)])
def test_lattice_reproduces_pydensecrf_filter(sxy, srgb):
    from skimage import data

    image = np.asarray(Image.fromarray(data.astronaut()).resize((40, 30), Image.BILINEAR))
    x = np.clip(np.random.default_rng(0).normal(0, 0.4, image.shape[:2]), -0.9, 0.9)
    ref = _pydensecrf_filter(image, x.astype(np.float32), sxy, srgb)
    ours = _normalised_lattice(_pixel_features(image, sxy, srgb), x.reshape(-1, 1))
    np.testing.assert_allclose(ours.reshape(ref.shape), ref, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize(("dim", "spread"), [(2, 4.0), (5, 4.0)])
def test_lattice_approximates_the_exact_gaussian(dim, spread):
    """The normalised filter of a smooth signal: the lattice's own approximation error."""
    rng = np.random.default_rng(dim)
    features = rng.normal(0, spread, (1200, dim)).astype(np.float32)  # 1200: shares compiles
    values = (np.sin(features[:, :1] / 3) + 1).astype(np.float32)
    ours, exact = _normalised_lattice(features, values), _exact_normalised(features, values)
    err = np.abs(ours - exact) / np.abs(exact).max()
    assert np.median(err) < 0.01
    assert err.max() < 0.1
    assert np.corrcoef(ours[:, 0], exact[:, 0])[0, 1] > 0.999


def test_lattice_capacity_drops_vertices_and_reports_count():
    features = jnp.asarray(np.random.default_rng(3).normal(0, 3, (1200, 5)), jnp.float32)
    full, small = _build(features, 1200 * 6), _build(features, 50)
    assert int(full.n_vertices) == int(small.n_vertices) > 50
    assert int(full.vertices.max()) == int(full.n_vertices) - 1
    assert int(small.vertices.max()) == 50  # the dropped ones point at the zero row
    out = np.asarray(_normalised_filter(small, jnp.ones((1200, 1))))
    assert np.all(np.isfinite(out)) and np.all(out >= 0)


def test_gaussian_blur_is_the_exact_sum():
    rng = np.random.default_rng(5)
    h, w, sxy = 9, 11, 1.3
    values = rng.random((h * w, 2)).astype(np.float32)
    pos = _pixel_features(np.zeros((h, w, 3), np.uint8), sxy, None)
    kernel = np.exp(-0.5 * ((pos[:, None] - pos[None]) ** 2).sum(-1))
    np.testing.assert_allclose(
        gaussian_blur(jnp.asarray(values), h, w, sxy), kernel @ values, atol=1e-5
    )


# ---------------------------------------------------------------------------------------
# Unaries.


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 23), (12, SIZE), (20, 7)])
def test_bicubic_matrix_matches_torch_antialiased_resize(n_in, n_out):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(n_in).normal(size=(3, n_in, 5)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=(n_out, 5), mode="bicubic", antialias=True
    )[0].numpy()
    np.testing.assert_allclose(
        np.einsum("Yy,cyx->cYx", bicubic_matrix(n_in, n_out), x), ref, atol=1e-5
    )


def test_leaf_unaries_match_the_authors_recipe():
    """Upsample the features themselves (torch), normalise, dot with descriptors, softmax."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(2, 5, 6, 12)).astype(np.float32)
    leaves = rng.integers(0, 3, (2, 5, 6))  # leaf 3 of n_leaves = 4 never occurs
    logits = np.asarray(leaf_unaries(feats, leaves, 4, (17, 23)))
    assert logits.shape == (2, 17, 23, 4)
    for b in range(2):
        up = torch.nn.functional.interpolate(
            torch.from_numpy(feats[b]).permute(2, 0, 1)[None].double(),
            size=(17, 23),
            mode="bicubic",
            antialias=True,
        )[0].permute(1, 2, 0)
        up = torch.nn.functional.normalize(up, dim=-1).numpy()
        desc = np.stack([feats[b][leaves[b] == k].mean(0) for k in range(3)])
        desc /= np.linalg.norm(desc, axis=1, keepdims=True)
        prob = torch.softmax(torch.from_numpy(up @ desc.T / 0.1), -1).numpy()
        np.testing.assert_allclose(logits[b, ..., :3], np.log(np.maximum(prob, 1e-5)), atol=2e-4)
        assert np.all(logits[b, ..., 3] == ABSENT)


# ---------------------------------------------------------------------------------------
# Mean field against pydensecrf on real images.


@pytest.fixture(scope="module")
def scenes(request):
    """(images [B, S, S, 3], logits [B, S, S, K], regions): the astronaut, plus two VOC
    crops when the shared data is there."""
    picked = [_astronaut()]
    try:
        root = request.getfixturevalue("shared_data")
        picked += [_voc(root, name) for name in ("114", "166")]
    except pytest.skip.Exception:
        pass
    images, logits = [], []
    for i, (image, regions) in enumerate(picked):
        feats, leaves = _leaf_inputs(regions, i)
        images.append(image)
        logits.append(np.asarray(leaf_unaries(feats, leaves, K, (SIZE, SIZE))))
    return np.stack(images), np.stack(logits)


@pytest.fixture(scope="module")
def batched_q(scenes):
    images, logits = scenes
    return np.asarray(dense_crf(logits, images))


@pytest.fixture(scope="module")
def exact_q(scenes):
    images, logits = scenes
    return np.asarray(dense_crf(logits, images, config=EXACT))


def test_mean_field_matches_pydensecrf(scenes, batched_q):
    images, logits = scenes
    for image, logit, q in zip(images, logits, batched_q, strict=True):
        pytest.importorskip("pydensecrf.densecrf")
        ref = pydensecrf_marginals(logit, image, CRFConfig())
        agree = np.mean(q.argmax(-1) == ref.argmax(-1))
        changed = np.mean(ref.argmax(-1) != logit.argmax(-1))
        assert changed > 0.005, "the CRF should move some boundaries, or the test proves nothing"
        assert agree >= 0.99, agree
        np.testing.assert_allclose(q, ref, atol=5e-3)


def test_exact_spatial_kernel_is_close_to_the_lattice(exact_q, batched_q):
    assert np.mean(exact_q.argmax(-1) == batched_q.argmax(-1)) >= 0.99


def test_batched_equals_per_image(scenes, batched_q):
    images, logits = scenes
    for b in range(len(images)):
        np.testing.assert_allclose(dense_crf(logits[b], images[b]), batched_q[b], atol=1e-6)


def test_capacities_hold_every_vertex_and_overflow_is_reported(scenes):
    images, logits = scenes
    spatial, bilateral = lattice_capacities(images, EXACT)
    quarter = SIZE * SIZE // 4
    assert spatial == 1 and bilateral % quarter == 0 and (bilateral // quarter).bit_count() == 1
    # Capacity 1 cannot hold a simplex's six vertices: Q degrades, the counts say so.
    run = jax.jit(mean_field, static_argnames=("config", "capacities"))
    q, counts = run(
        logits, images.astype(np.float32), jnp.ones((len(images), K), bool), EXACT, (1, 1)
    )
    counts = np.asarray(counts)[:, 1]
    assert np.all(counts > 1) and np.all(np.isfinite(q))
    assert counts.max() <= bilateral and (bilateral == quarter or 2 * counts.max() > bilateral)
    assert (
        lattice_capacities(images, CRFConfig())[0]
        == _build(jnp.asarray(_pixel_features(images[0], 1.0, None)), 1).n_vertices
    )


class TestJit(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_equals_no_jit(self):
        rng = np.random.default_rng(11)
        logits = jnp.asarray(np.log(rng.dirichlet(np.ones(3), (1, 12, 14))), jnp.float32)
        images = jnp.asarray(rng.integers(0, 256, (1, 12, 14, 3)), jnp.float32)
        mask = jnp.asarray([[True, True, False]])
        config = CRFConfig(n_iter=3, spatial="exact")  # the bilateral lattice is still in
        run = self.variant(mean_field, static_argnames=("config", "capacities"))
        capacities = lattice_capacities(images, config)
        q, _ = run(logits, images, mask, config, capacities)
        ref, _ = jax.jit(mean_field, static_argnames=("config", "capacities"))(
            logits, images, mask, config, capacities
        )
        np.testing.assert_allclose(q, ref, atol=1e-6)
        chex.assert_shape(q, (1, 12, 14, 3))
        assert np.all(np.asarray(q[..., 2]) == 0)


# ---------------------------------------------------------------------------------------
# Degenerate labels and bad input.


def test_single_label_and_absent_labels_give_no_nan(scenes):
    images, logits = scenes
    image = images[0]
    one = dense_crf(np.zeros((SIZE, SIZE, 1), np.float32), image, config=EXACT)
    np.testing.assert_array_equal(one, 1.0)
    masked = np.array([True, False, True, False, False, False])
    logit = logits[0].copy()
    logit[..., 3] = -np.inf
    q = np.asarray(dense_crf(logit, image, masked))
    assert np.all(np.isfinite(q))
    assert np.all(q[..., ~masked] == 0)
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("logits", "image", "mask", "match"),
    [
        (np.full((4, 5, 2), np.nan), np.zeros((4, 5, 3)), None, "NaN"),
        (np.zeros((4, 5, 2)), np.zeros((4, 6, 3)), None, "image must be"),
        (np.zeros((4, 5, 2)), np.full((4, 5, 3), 300.0), None, r"\[0, 255\]"),
        (np.zeros((4, 5, 2)), np.zeros((4, 5, 3)), np.array([False, False]), "at least one"),
        (np.full((4, 5, 2), -np.inf), np.zeros((4, 5, 3)), None, "at least one"),
        (np.zeros((4, 5, 2)), np.zeros((4, 5, 3)), np.array([1, 0]), "bool"),
        (np.zeros((5, 2)), np.zeros((5, 3)), None, "dims"),
    ],
)
def test_dense_crf_rejects_bad_input(logits, image, mask, match):
    with pytest.raises(ValueError, match=match):
        dense_crf(logits, image, mask)


def test_config_and_unaries_reject_bad_settings():
    with pytest.raises(ValueError, match="spatial"):
        CRFConfig(spatial="grid")
    with pytest.raises(ValueError, match="bilateral_srgb"):
        CRFConfig(bilateral_srgb=0)
    feats = np.zeros((3, 4, 5), np.float32)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        leaf_unaries(feats, np.full((3, 4), 2), 2, (6, 8))
    with pytest.raises(ValueError, match="disagree"):
        leaf_unaries(feats, np.zeros((3, 5), int), 2, (6, 8))


# ---------------------------------------------------------------------------------------
# Refinement of a tree's levels.


def test_refine_levels_keeps_the_tree_nested():
    image, regions = _astronaut()
    feats, leaves = _leaf_inputs(regions, 0)
    # A 3-level tree over the K leaves: root 0; two halves 1, 2; leaves get ids 10 + leaf.
    leaf_ids = 10 + leaves
    levels = np.stack([np.zeros_like(leaves), 1 + (leaves >= K // 2), leaf_ids])
    out = np.asarray(refine_levels(feats, levels, image, n_leaves=K))
    assert out.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(out[0], 0)
    assert set(np.unique(out[2])) <= set(np.unique(leaf_ids))
    np.testing.assert_array_equal(out[1], 1 + (out[2] - 10 >= K // 2))
    np.testing.assert_array_equal(refine_leaves(feats, leaf_ids, image, n_leaves=K), out[2])
    # The refined leaves are the CRF's argmax over the leaves' unaries.
    logits = leaf_unaries(feats, leaves, K, (SIZE, SIZE))
    np.testing.assert_array_equal(out[2] - 10, np.argmax(dense_crf(logits, image), -1))
    with pytest.raises(ValueError, match="n_leaves"):
        refine_levels(feats, levels, image, n_leaves=1)


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
