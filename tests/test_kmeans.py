"""hiseg_jax.spectral.kmeans against scikit-learn's KMeans and the Lloyd fixed-point property."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from hiseg_jax.spectral import kmeans as km
from hiseg_jax.spectral.kmeans import kmeans

# One shape for every test (each new shape or static setting costs a compile).
N, D, K_MAX = 240, 4, 8
KEY = jax.random.key(0)


def blobs(std=0.4, centers=5, seed=0):
    x, y = make_blobs(N, n_features=D, centers=centers, cluster_std=std, random_state=seed)
    return x.astype(np.float32), y


def hard_data(seed=1):
    """Overlapping anisotropic cloud: many local optima."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(N, D)) * [3.0, 2.0, 1.0, 0.5]).astype(np.float32)


def sklearn_kmeans(x, k):
    return KMeans(k, init="k-means++", n_init=10, max_iter=600, tol=1e-6, random_state=0).fit(x)


def assert_lloyd_fixed_point(x, res, mask=None):
    """Every valid point sits at its nearest center, every center is its cluster's mean."""
    x = np.asarray(x, np.float64)
    labels, centers = np.asarray(res.labels), np.asarray(res.centers, np.float64)
    valid = np.ones(len(x), bool) if mask is None else mask
    used = np.unique(labels[valid])
    d = ((x[valid, None, :] - centers[None, used, :]) ** 2).sum(-1)
    np.testing.assert_allclose(
        d.min(1),
        d[np.arange(valid.sum()), np.searchsorted(used, labels[valid])],
        rtol=1e-4,
        atol=1e-4,
    )
    for c in used:
        np.testing.assert_allclose(centers[c], x[valid & (labels == c)].mean(0), atol=1e-4)
    inertia = ((x[valid] - centers[labels[valid]]) ** 2).sum()
    np.testing.assert_allclose(res.inertia, inertia, rtol=1e-4)


def test_well_separated_blobs_same_partition_as_sklearn():
    x, y = blobs()
    res = kmeans(jnp.asarray(x), 5, KEY, k_max=K_MAX)
    assert (
        res.labels.dtype == jnp.int32
        and res.centers.shape == (K_MAX, D)
        and res.inertia.shape == ()
    )
    assert adjusted_rand_score(sklearn_kmeans(x, 5).labels_, res.labels) == 1.0
    assert adjusted_rand_score(y, res.labels) == 1.0
    assert np.all(np.asarray(res.centers)[5:] == 0)
    assert_lloyd_fixed_point(x, res)


@pytest.mark.parametrize("k", [3, 8])
def test_hard_data_inertia_close_to_sklearn(k):
    x = hard_data()
    res = kmeans(jnp.asarray(x), k, KEY, k_max=K_MAX)
    ours, theirs = float(res.inertia), sklearn_kmeans(x, k).inertia_
    assert ours <= 1.02 * theirs, (ours, theirs)
    assert len(np.unique(res.labels)) == k
    assert_lloyd_fixed_point(x, res)


def test_traced_k_under_vmap():
    x = jnp.asarray(hard_data(2))
    ks = jnp.array([2, 3, 5, 8])
    keys = jax.random.split(KEY, 4)
    batched = jax.jit(jax.vmap(lambda k, key: kmeans(x, k, key, k_max=K_MAX)))(ks, keys)
    for i, k in enumerate(np.asarray(ks)):
        labels = np.asarray(batched.labels[i])
        assert set(np.unique(labels)) == set(range(k))  # exactly k non-empty clusters
        assert np.all(np.asarray(batched.centers[i])[k:] == 0)
        one = kmeans(x, int(k), keys[i], k_max=K_MAX)
        np.testing.assert_array_equal(labels, one.labels)
        np.testing.assert_allclose(batched.inertia[i], one.inertia, rtol=1e-5)


def test_mask_respected():
    x, _ = blobs(seed=3)
    mask = np.random.default_rng(4).random(N) < 0.6
    res = kmeans(jnp.asarray(x), 4, KEY, k_max=K_MAX, mask=jnp.asarray(mask))
    assert np.all(np.asarray(res.labels)[~mask] == -1) and np.all(np.asarray(res.labels)[mask] >= 0)
    assert_lloyd_fixed_point(x, res, mask)
    moved = x.copy()
    moved[~mask] = 1e4  # masked-out points must not influence anything
    again = kmeans(jnp.asarray(moved), 4, KEY, k_max=K_MAX, mask=jnp.asarray(mask))
    np.testing.assert_array_equal(again.labels, res.labels)
    np.testing.assert_allclose(again.centers, res.centers, atol=1e-4)


def test_deterministic_for_a_key():
    x = jnp.asarray(hard_data(5))
    a = kmeans(x, 6, KEY, k_max=K_MAX)
    b = kmeans(x, 6, KEY, k_max=K_MAX)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centers, b.centers)


def test_duplicates_and_more_clusters_than_distinct_points():
    x = np.repeat(np.array([[0.0] * D, [1.0] * D, [5.0] * D], np.float32), N // 3, axis=0)
    res = kmeans(jnp.asarray(x), 6, KEY, k_max=K_MAX)
    assert np.all(np.isfinite(res.centers)) and np.isfinite(res.inertia)
    assert float(res.inertia) == 0.0
    labels = np.asarray(res.labels)
    assert labels.min() >= 0 and labels.max() < 6
    assert adjusted_rand_score(np.repeat(np.arange(3), N // 3), labels) == 1.0
    # Fewer valid points than k: still finite.
    few = np.zeros(N, bool)
    few[:2] = True
    res = kmeans(jnp.asarray(hard_data()), 5, KEY, k_max=K_MAX, mask=jnp.asarray(few))
    assert np.all(np.isfinite(res.centers)) and np.isfinite(res.inertia)
    assert set(np.asarray(res.labels)[:2]) <= set(range(5)) and np.all(
        np.asarray(res.labels)[2:] == -1
    )


def test_empty_cluster_relocated_to_farthest_point():
    x = jnp.asarray([[0.0], [0.1], [10.0], [3.0]])
    weight = jnp.ones(4)
    labels = jnp.asarray([0, 0, 0, 0], jnp.int32)
    dist = jnp.asarray([0.0, 0.01, 100.0, 9.0])
    centers = jnp.asarray([[0.0], [7.0], [8.0]])
    live = jnp.asarray([True, True, False])
    new = jax.jit(km.update_centers)(x, weight, labels, dist, centers, live)
    # Cluster 1 was empty: it takes point 2 (farthest), which leaves cluster 0; dead cluster 2
    # keeps its center.
    np.testing.assert_allclose(new, [[(0.0 + 0.1 + 3.0) / 3], [10.0], [8.0]], rtol=1e-6)


def test_bad_input_raises():
    x = jnp.zeros((10, 2))
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, 9, KEY, k_max=8)
    with pytest.raises(ValueError, match="k_max"):
        kmeans(x, 1, KEY, k_max=0)
    with pytest.raises(ValueError, match="points must be"):
        kmeans(jnp.zeros(10), 2, KEY, k_max=4)
    with pytest.raises(ValueError, match="mask"):
        kmeans(x, 2, KEY, k_max=4, mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="tol"):
        kmeans(x, 2, KEY, k_max=4, tol=-1.0)
