"""spectral.graph against a direct NumPy transcription of docs/method.md."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hiseg_jax.spectral import graph, synthetic

N, E = 48, 12


def np_adjacency(x, mask=None, kind="minmax", sigma=1.0, threshold=0.0):
    """Section 1 on the masked sub-matrix, scattered back into an N x N zero matrix."""
    x = np.asarray(x, np.float64)
    idx = np.arange(len(x)) if mask is None else np.flatnonzero(mask)
    u = x[idx] / np.maximum(np.linalg.norm(x[idx], axis=1, keepdims=True), 1e-12)
    d = np.maximum(0.0, 1.0 - u @ u.T)
    if kind == "minmax":
        w = 1.0 - (d - d.min()) / max(d.max() - d.min(), 1e-12)
    else:
        w = np.exp(-d / (2 * sigma**2))
    w = np.where(w >= threshold, w, 0.0)
    np.fill_diagonal(w, 0.0)
    out = np.zeros((len(x), len(x)))
    out[np.ix_(idx, idx)] = w
    return out


def np_normalized(w, mask, eps=1e-8):
    """(A, L, raw degrees) of the masked sub-graph; zero rows/columns outside the mask."""
    m = np.ones(len(w), bool) if mask is None else np.asarray(mask)
    w = np.where(m[:, None] & m[None, :], w, 0.0)
    raw = w.sum(1)
    s = np.where(m, 1.0 / np.sqrt(np.maximum(raw, eps)), 0.0)
    a = s[:, None] * w * s[None, :]
    lap = s[:, None] * (np.diag(raw) - w) * s[None, :]
    return a, lap, raw


def features(seed=0, shift=0.0, n=N, e=E):
    """Random features; shift > 0 adds a common direction (all cosines positive: c < 0)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, e))
    x[:, 0] += shift
    return x


def random_mask(seed, n=N, p=0.6):
    return np.random.default_rng(seed).random(n) < p


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("kind", ["minmax", "exp"])
@pytest.mark.parametrize("threshold", [0.0, 0.6])
@pytest.mark.parametrize("masked", [False, True])
def test_adjacency_matches_numpy(kind, threshold, masked):
    x = features(1)
    mask = random_mask(2) if masked else None
    got = graph.adjacency(
        jnp.asarray(x),
        None if mask is None else jnp.asarray(mask),
        kind=kind,
        sigma=0.7,
        threshold=threshold,
    )
    want = np_adjacency(x, mask, kind, 0.7, threshold)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got.dtype == jnp.float64
    if threshold > 0:
        unthresholded = np_adjacency(x, mask, kind, 0.7)
        assert np.any((unthresholded > 0) & (want == 0))  # the threshold zeroed something


def test_adjacency_float32_and_zero_features():
    x = features(3).astype(np.float32)
    x[5] = 0.0  # an all-zero feature row must not produce NaN
    got = graph.adjacency(jnp.asarray(x))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_adjacency(x), atol=2e-6)
    assert np.all(np.isfinite(got)) and np.all(np.diag(got) == 0)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("masked", [False, True])
def test_normalized_adjacency_and_laplacian(masked):
    mask = random_mask(4) if masked else None
    jmask = None if mask is None else jnp.asarray(mask)
    # A full matrix with nonzero masked-out rows: degrees must be recomputed on the sub-graph.
    w = np_adjacency(features(5))
    a, deg = graph.normalized_adjacency(jnp.asarray(w), jmask)
    lap = graph.normalized_laplacian(jnp.asarray(w), jmask)
    a_ref, lap_ref, raw = np_normalized(w, mask)
    np.testing.assert_allclose(a, a_ref, atol=1e-13)
    np.testing.assert_allclose(lap, lap_ref, atol=1e-13)
    m = np.ones(N, bool) if mask is None else mask
    np.testing.assert_allclose(deg, np.where(m, raw, 0.0), rtol=1e-13)
    assert np.all(np.asarray(a)[~m] == 0) and np.all(np.asarray(a)[:, ~m] == 0)
    assert np.all(np.asarray(lap)[~m] == 0) and np.all(np.asarray(lap)[:, ~m] == 0)


def test_degrees_clamped_for_isolated_nodes():
    w = np.zeros((4, 4))
    w[0, 1] = w[1, 0] = 0.5
    deg = graph.degrees(jnp.asarray(w, jnp.float32), eps=1e-3)
    np.testing.assert_allclose(deg, [0.5, 0.5, 1e-3, 1e-3], rtol=1e-6)
    a, _ = graph.normalized_adjacency(jnp.asarray(w, jnp.float32), eps=1e-3)
    assert np.all(np.isfinite(a)) and np.all(np.asarray(a)[2:] == 0)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("shift", [0.0, 8.0])  # min cosine < 0 (c > 0) and > 0 (c < 0)
@pytest.mark.parametrize("masked", [False, True])
def test_lowrank_operator_float64(shift, masked):
    x = features(6, shift)
    mask = random_mask(7) if masked else None
    jmask = None if mask is None else jnp.asarray(mask)
    a_dense, deg = graph.normalized_adjacency(graph.adjacency(jnp.asarray(x), jmask), jmask)
    op = graph.lowrank_operator(jnp.asarray(x), jmask, block=20)  # 20 does not divide N
    assert op.b.shape == (N, E + 1) and op.w.shape == (E + 1,) and op.dinv.shape == (N,)
    assert (op.w[0] < 0) == (shift > 0)
    np.testing.assert_allclose(graph.to_dense(op), a_dense, atol=1e-12)
    np.testing.assert_allclose(op.deg, deg, rtol=1e-10)
    v = np.random.default_rng(8).normal(size=(N, 3))
    np.testing.assert_allclose(
        graph.matmat(op, jnp.asarray(v)), np.asarray(a_dense) @ v, atol=1e-10
    )
    np.testing.assert_allclose(
        graph.matvec(op, jnp.asarray(v[:, 0])), np.asarray(a_dense) @ v[:, 0], atol=1e-10
    )
    np.testing.assert_allclose(op(jnp.asarray(v[:, 1])), np.asarray(a_dense) @ v[:, 1], atol=1e-10)
    if masked:
        out = np.asarray(graph.matmat(op, jnp.asarray(v)))
        assert np.all(out[~mask] == 0) and np.all(np.asarray(op.b)[~mask] == 0)


def test_lowrank_operator_float32_with_zero_row():
    x = features(9, 1.0)
    x[3] = 0.0
    mask = random_mask(10)
    mask[3] = True
    a_ref, _, _ = np_normalized(np_adjacency(x, mask), mask)
    op = graph.lowrank_operator(jnp.asarray(x, jnp.float32), jnp.asarray(mask))
    v = np.random.default_rng(11).normal(size=N)
    got = np.asarray(graph.matvec(op, jnp.asarray(v, jnp.float32)), np.float64)
    want = a_ref @ v
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    np.testing.assert_allclose(graph.to_dense(op), a_ref, atol=1e-6)


def test_gram_extremes_blocked():
    x = features(12)
    mask = random_mask(13)
    g = x @ x.T
    pair = mask[:, None] & mask[None, :]
    got = graph.gram_extremes(jnp.asarray(x, jnp.float32), jnp.asarray(mask), block=7)
    np.testing.assert_allclose(got, [g[pair].min(), g[pair].max()], rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gram_min_search_finds_the_minimum_of_structured_features(seed, masked):
    """Planted patch features (a few directions plus noise, like a backbone's): the farthest
    pair search returns the exact minimum of the Gram matrix (on real features too: see
    tests/test_partition_realdata.py)."""
    x, _ = synthetic.planted_hierarchy(seed, grid=(24, 24), dim=96)
    u = graph.normalize_rows(jnp.asarray(x.reshape(-1, 96), jnp.float32))
    mask = jnp.asarray(random_mask(seed, n=u.shape[0])) if masked else None
    exact = graph.gram_extremes(u, mask)[0]
    np.testing.assert_allclose(graph.gram_min_search(u, mask), exact, atol=1e-6)


def test_gram_min_search_returns_a_pair_at_or_above_the_minimum():
    """Isotropic points (no structure, the search's worst case): the result is the inner
    product of an actual pair, hence >= the minimum; an empty mask gives +inf."""
    u = graph.normalize_rows(jnp.asarray(features(15, n=300, e=16), jnp.float32))
    g = np.asarray(u @ u.T)
    found = float(graph.gram_min_search(u, directions=2, rounds=1))
    assert found >= g.min() - 1e-6 and np.isclose(g, found, atol=1e-6).any()
    assert graph.gram_min_search(u, jnp.zeros(300, bool)) == np.inf


@pytest.mark.usefixtures("x64")
def test_lowrank_operator_gram_min_search():
    x = features(16, 1.0)
    mask = jnp.asarray(random_mask(17))
    exact = graph.lowrank_operator(jnp.asarray(x), mask)
    search = graph.lowrank_operator(jnp.asarray(x), mask, gram_min="search")
    np.testing.assert_allclose(graph.to_dense(search), graph.to_dense(exact), atol=1e-12)
    with pytest.raises(ValueError, match="gram_min"):
        graph.lowrank_operator(jnp.asarray(x), gram_min="approx")


def test_empty_mask_gives_zeros_not_nan():
    x = jnp.asarray(features(14), jnp.float32)
    empty = jnp.zeros(N, bool)
    w = graph.adjacency(x, empty)
    a, deg = graph.normalized_adjacency(w, empty)
    op = graph.lowrank_operator(x, empty)
    for arr in (w, a, deg, op.b, op.dinv, graph.matvec(op, jnp.ones(N))):
        assert np.all(np.asarray(arr) == 0)


def np_mean_ncut(w, labels, k):
    """The reference's formula: (1/k) sum_c diag(I^T (D - W) I) / max(diag(I^T D I), 1e-12)."""
    ind = np.eye(k)[labels]
    d = np.diag(w.sum(1))
    return np.sum(np.diag(ind.T @ (d - w) @ ind) / np.maximum(np.diag(ind.T @ d @ ind), 1e-12)) / k


@pytest.mark.usefixtures("x64")
def test_mean_ncut_matches_reference_formula():
    rng = np.random.default_rng(15)
    w = np_adjacency(features(16))
    mask = random_mask(17)
    labels = rng.integers(0, 4, N)
    sub = np.ix_(mask, mask)
    want = np_mean_ncut(w[sub], labels[mask], 4)
    got = graph.mean_ncut(
        jnp.asarray(w), jnp.asarray(np.where(mask, labels, 99)), 6, jnp.asarray(mask), k=4
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # An empty cluster contributes 0 but still counts in the divisor (reference behaviour).
    two = np.where(np.arange(N) < N // 2, 0, 1)
    want2 = np_mean_ncut(w, two, 2) * 2 / 3
    np.testing.assert_allclose(
        graph.mean_ncut(jnp.asarray(w), jnp.asarray(two), 3), want2, rtol=1e-12
    )


def test_vmap_over_masks_equals_loop():
    x = jnp.asarray(features(18), jnp.float32)
    masks = jnp.asarray(np.stack([random_mask(s) for s in range(3)]))
    batched = jax.jit(jax.vmap(lambda m: graph.lowrank_operator(x, m).dinv))(masks)
    for i in range(3):
        np.testing.assert_allclose(batched[i], graph.lowrank_operator(x, masks[i]).dinv, rtol=1e-6)
    dense = jax.vmap(lambda m: graph.adjacency(x, m))(masks)
    for i in range(3):
        np.testing.assert_array_equal(dense[i], graph.adjacency(x, masks[i]))


def test_bad_input_raises():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="kind"):
        graph.adjacency(x, kind="knn")
    with pytest.raises(ValueError, match="sigma"):
        graph.adjacency(x, kind="exp", sigma=0.0)
    with pytest.raises(ValueError, match="features must be"):
        graph.adjacency(jnp.ones(4))
    with pytest.raises(ValueError, match="mask"):
        graph.lowrank_operator(x, jnp.ones(5, bool))
    with pytest.raises(ValueError, match="square"):
        graph.degrees(jnp.ones((3, 4)))
