"""Guided-filter refinement (hiseg_jax.crf.guided) against a plain NumPy guided filter that
fits the per-window affine model pixel by pixel (explicit windows, np.linalg.solve); the
choice of refinement (hiseg_jax.crf.refine)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import numpy as np
import pytest

from hiseg_jax.crf.dense_crf import CRFConfig, leaf_ancestors, lift_leaves
from hiseg_jax.crf.guided import (
    GuidedConfig,
    block_mean_matrix,
    box_mean,
    fast_guided_filter,
    guided_filter,
    guided_level_labels,
    linear_matrix,
)
from hiseg_jax.crf.refine import (
    DEFAULT_REFINEMENT,
    METHODS,
    refinement_method,
    refinement_of,
    refinement_settings,
)
from hiseg_jax.tree import upsample_labels


def _window(y: int, x: int, radius: int) -> tuple[slice, slice]:
    return slice(max(y - radius, 0), y + radius + 1), slice(max(x - radius, 0), x + radius + 1)


def _numpy_coefficients(
    guide: np.ndarray, source: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """He et al.'s window means of the affine coefficients, mean(a) [H, W, 3, K] and
    mean(b) [H, W, K], float64, one window at a time (clipped windows)."""
    h, w, k = source.shape
    a = np.zeros((h, w, 3, k))
    b = np.zeros((h, w, k))
    for y in range(h):
        for x in range(w):
            win = _window(y, x, radius)
            i = guide[win].reshape(-1, 3).astype(np.float64)
            p = source[win].reshape(-1, k).astype(np.float64)
            mi, mp = i.mean(0), p.mean(0)
            cov = (i - mi).T @ (i - mi) / len(i)
            cross = (i - mi).T @ (p - mp) / len(i)
            a[y, x] = np.linalg.solve(cov + eps * np.eye(3), cross)
            b[y, x] = mp - mi @ a[y, x]
    mean_a, mean_b = np.zeros_like(a), np.zeros_like(b)
    for y in range(h):
        for x in range(w):
            win = _window(y, x, radius)
            mean_a[y, x] = a[win].reshape(-1, 3, k).mean(0)
            mean_b[y, x] = b[win].reshape(-1, k).mean(0)
    return mean_a, mean_b


def _numpy_guided(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter, float64."""
    mean_a, mean_b = _numpy_coefficients(guide, source, radius, eps)
    return np.einsum("hwi,hwik->hwk", guide, mean_a) + mean_b


def _numpy_fast_guided(
    guide: np.ndarray, source: np.ndarray, radius: int, eps: float, s: int
) -> np.ndarray:
    """The fast guided filter, float64: s x s block means of the guide, coefficients there
    with radius max(1, round(r / s)), each coefficient interpolated (np.interp) between the
    block centres along rows then columns, applied to the full-resolution guide."""
    h, w = source.shape[:2]
    small = np.array(
        [
            [guide[y * s : (y + 1) * s, x * s : (x + 1) * s].mean((0, 1)) for x in range(w)]
            for y in range(h)
        ]
    )
    mean_a, mean_b = _numpy_coefficients(small, source, max(1, round(radius / s)), eps)
    coefficients = np.concatenate([mean_a.reshape(h, w, -1), mean_b], -1)
    centres = lambda n, full: (np.arange(n) * s + np.minimum(np.arange(n) * s + s, full) - 1) / 2
    rows, cols = centres(h, guide.shape[0]), centres(w, guide.shape[1])
    up = lambda v, c, n: np.interp(np.arange(n), c, v)
    coefficients = np.apply_along_axis(up, 0, coefficients, rows, guide.shape[0])
    coefficients = np.apply_along_axis(up, 1, coefficients, cols, guide.shape[1])
    k = source.shape[2]
    mean_a = coefficients[..., : 3 * k].reshape(*guide.shape[:2], 3, k)
    return np.einsum("hwi,hwik->hwk", guide, mean_a) + coefficients[..., 3 * k :]


def test_box_mean_matches_explicit_windows():
    x = np.random.default_rng(0).normal(size=(9, 7, 2)).astype(np.float32)
    want = np.zeros_like(x)
    for y in range(9):
        for c in range(7):
            want[y, c] = x[_window(y, c, 2)].mean((0, 1))
    np.testing.assert_allclose(box_mean(x, 2), want, rtol=1e-5, atol=1e-6)


class TestGuidedFilter(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        run = self.variant(guided_filter, static_argnums=(2, 3))
        for radius, eps in ((1, 1e-3), (3, 1e-2)):
            rng = np.random.default_rng(radius)
            guide = rng.uniform(size=(12, 10, 3)).astype(np.float32)
            guide[:, 5:] += 0.5 * guide[:, 5:]  # an edge
            source = rng.dirichlet(np.ones(4), size=(12, 10)).astype(np.float32)
            want = _numpy_guided(guide, source, radius, eps)
            np.testing.assert_allclose(run(guide, source, radius, eps), want, atol=2e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_fast_filter_matches_numpy(self):
        """Subsample 2 and 3 on sizes that do and do not divide into whole blocks."""
        run = self.variant(fast_guided_filter, static_argnums=(2, 3, 4))
        for (height, width), s in (((12, 10), 2), ((13, 11), 3)):
            rng = np.random.default_rng(s)
            guide = rng.uniform(size=(height, width, 3)).astype(np.float32)
            guide[:, width // 2 :] += 0.5 * guide[:, width // 2 :]
            small = (-(-height // s), -(-width // s))
            source = rng.dirichlet(np.ones(4), size=small).astype(np.float32)
            want = _numpy_fast_guided(guide, source, 4, 1e-2, s)
            np.testing.assert_allclose(run(guide, source, 4, 1e-2, s), want, atol=2e-4)


@pytest.mark.parametrize("n, s", [(12, 3), (13, 3), (7, 1), (5, 8)])
def test_resampling_matrices(n, s):
    """Block means of s pixels (the last block shorter) and linear interpolation between the
    block centres (np.interp, constant beyond the end centres)."""
    x = np.random.default_rng(n).normal(size=n)
    down = block_mean_matrix(n, s)
    want = [x[i : i + s].mean() for i in range(0, n, s)]
    np.testing.assert_allclose(down @ x, want, rtol=1e-5, atol=1e-6)
    v = x[: down.shape[0]]
    centres = [(i + min(i + s, n) - 1) / 2 for i in range(0, n, s)]
    np.testing.assert_allclose(
        linear_matrix(n, s) @ v, np.interp(np.arange(n), centres, v), atol=1e-6
    )


def test_guided_filter_moves_a_label_border_onto_the_colour_edge():
    """A one-hot split 3 pixels off a sharp colour edge snaps to the edge (r = 8); with a
    flat guide the filter is a box blur and the split stays where it was."""
    guide = np.zeros((16, 24, 3), np.float32)
    guide[:, 8:] = 1.0
    labels = (np.arange(24) >= 11)[None, :].repeat(16, 0)
    source = np.eye(2, dtype=np.float32)[labels.astype(int)]
    out = np.asarray(guided_filter(guide, source, 8, 1e-3)).argmax(-1)
    np.testing.assert_array_equal(out, (np.arange(24) >= 8)[None, :].repeat(16, 0))
    flat = np.asarray(guided_filter(np.zeros_like(guide), source, 8, 1e-3)).argmax(-1)
    np.testing.assert_array_equal(flat, labels)


def test_leaf_ancestors_round_trip():
    levels = np.array([[[[0, 0], [0, 0]], [[1, 1], [2, 2]], [[5, 6], [2, 2]]]], np.int32)
    compact, ancestors = leaf_ancestors(levels, 4)
    assert compact.shape == (1, 2, 2) and ancestors.shape == (1, 3, 4)
    np.testing.assert_array_equal(lift_leaves(ancestors, compact), levels)
    assert (ancestors[0, :, 3] == -1).all()


@pytest.mark.parametrize("source, subsample", [("unaries", 1), ("labels", 1), ("unaries", 3)])
def test_guided_level_labels_keep_the_tree(source, subsample):
    """Pixel labels are node ids of the tree: each pixel's ids at every level are those of
    one leaf's patches, and a flat image leaves the nearest upsampling nearly unchanged."""
    rng = np.random.default_rng(1)
    leaves = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, 0), 4, 1)
    levels = np.stack([np.zeros_like(leaves), np.where(leaves < 2, 1, 2), leaves + 3])
    features = rng.normal(size=(8, 8, 5)).astype(np.float32)
    features += 3 * np.eye(5, dtype=np.float32)[leaves]
    image = np.full((40, 40, 3), 128, np.uint8)
    config = GuidedConfig(radius=3, source=source, subsample=subsample)
    out = guided_level_labels(image, jax.numpy.asarray(features), levels, config)
    assert out.shape == (3, 40, 40) and out.dtype == np.int32
    pairs = {tuple(levels[:, y, x]) for y in range(8) for x in range(8)}
    assert {tuple(out[:, y, x]) for y in range(40) for x in range(40)} <= pairs
    nearest = np.asarray(upsample_labels(levels, (40, 40)))
    assert (out == nearest).mean() > 0.9


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="radius"):
        GuidedConfig(radius=0)
    with pytest.raises(ValueError, match="source"):
        GuidedConfig(source="crf")
    with pytest.raises(ValueError, match="subsample must be >= 1"):
        GuidedConfig(subsample=0)


def test_refinement_choice_and_its_record():
    """Every method name gives its default settings and back; the guided filter is the
    default; settings files record the method beside the fields; anything else is refused."""
    assert GuidedConfig() == DEFAULT_REFINEMENT and METHODS == ("guided", "crf", "none")
    for method in METHODS:
        assert refinement_method(refinement_of(method)) == method
    assert refinement_of("none") is None and refinement_of("crf") == CRFConfig()
    assert refinement_settings(None) == {"method": "none"}
    record = refinement_settings(GuidedConfig(radius=3))
    assert record == {"method": "guided", **dataclasses.asdict(GuidedConfig(radius=3))}
    with pytest.raises(ValueError, match="refinement must be one of"):
        refinement_of("bilateral")
    with pytest.raises(ValueError, match="not a refinement"):
        refinement_method("guided")
