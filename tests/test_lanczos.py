"""hiseg_jax.spectral.lanczos (single-vector and block) against numpy.linalg.eigh of the
(masked sub-)matrix."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hiseg_jax.spectral import graph
from hiseg_jax.spectral.lanczos import block_lanczos_eigsh, lanczos_eigsh

KEY = jax.random.key(0)
# One configuration (plus float64) for most tests: each new one costs a ~2 s compile.
N, K, STEPS = 200, 11, 100
ALL = jnp.ones(N, bool)
# Block Lanczos (stage A's "block" solver): 12 blocks of 8, about the Krylov size of STEPS.
BLOCK, BLOCKS = 8, 12


def gapped_matrix(n=N, top=(10.0, 9.0, 8.0, 7.0, 6.0, 5.0), seed=0):
    """Symmetric matrix with the given well separated top eigenvalues over a bulk in [-1, 1]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = np.concatenate([top, rng.uniform(-1, 1, n - len(top))])
    return (q * lam) @ q.T


def planted_graph(n=N, blocks=5, seed=0):
    """Part-graph-like weights: dense within planted blocks, sparse and weak across."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, blocks, n)
    w = rng.random((n, n)) * np.where(lab[:, None] == lab[None], 0.8, 0.05)
    w = np.triu(w, 1)
    return w + w.T


def sub_eigh(a, mask):
    """Descending eigenpairs of the masked sub-matrix, eigenvectors scattered to length n."""
    idx = np.flatnonzero(mask)
    lam, v = np.linalg.eigh(np.asarray(a, np.float64)[np.ix_(idx, idx)])
    full = np.zeros((len(mask), len(idx)))
    full[idx] = v[:, ::-1]
    return lam[::-1], full


def assert_same_vectors(got, want, atol):
    """Columns equal up to sign."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    sign = np.sign(np.sum(got * want, axis=0))
    np.testing.assert_allclose(got * sign, want, atol=atol)


SOLVERS = {
    "lanczos": lambda a: lanczos_eigsh(a, N, K, STEPS, KEY, ALL),
    "block": lambda a: block_lanczos_eigsh(a, K, BLOCK, BLOCKS, KEY),
}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_gapped_random_matrix(dtype, tol, solver):
    with jax.enable_x64(dtype == np.float64):
        a = gapped_matrix().astype(dtype)
        evals, evecs, res = SOLVERS[solver](jnp.asarray(a))
        assert evals.dtype == dtype and evecs.shape == (N, K) and res.shape == (K,)
        lam, v = sub_eigh(a, np.ones(N, bool))
        np.testing.assert_allclose(evals[:6], lam[:6], atol=tol * 10)
        assert_same_vectors(evecs[:, :6], v[:, :6], atol=tol)
        assert np.max(res[:6]) < tol * 10
        np.testing.assert_allclose(np.asarray(evecs).T @ np.asarray(evecs), np.eye(K), atol=tol)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 1e-5)])
def test_planted_part_graph_with_masks(dtype, tol):
    """Stage-B-like sub-graphs, masks of 1 node to all 200: the spectrum of the masked
    sub-matrix, no spurious eigenvalue from masked nodes, no NaN."""
    n, k, steps = N, K, STEPS
    with jax.enable_x64(dtype == np.float64):
        w = planted_graph().astype(dtype)
        rng = np.random.default_rng(1)
        for size in (1, 2, 3, 4, 7, 30, 120, 200):
            mask = np.zeros(n, bool)
            mask[rng.choice(n, size, replace=False)] = True
            a, _ = graph.normalized_adjacency(jnp.asarray(w), jnp.asarray(mask))
            evals, evecs, res = lanczos_eigsh(a, n, k, steps, KEY, jnp.asarray(mask))
            assert (
                np.all(np.isfinite(evals))
                and np.all(np.isfinite(evecs))
                and np.all(np.isfinite(res))
            )
            lam, v = sub_eigh(a, mask)
            have = min(k, size)
            np.testing.assert_allclose(evals[:have], lam[:have], atol=tol)
            assert np.max(res) < tol * 10
            assert np.all(np.asarray(evecs)[~mask] == 0)
            # Surplus slots sort last, below every eigenvalue, with zero vectors.
            assert np.all(np.asarray(evals)[have:] < lam[-1])
            assert np.all(np.asarray(evecs)[:, have:] == 0)
            # Eigenvectors where the gap to both neighbours is clear.
            gaps = np.abs(np.diff(np.concatenate([[np.inf], lam[: have + 1], [-np.inf]])))
            clear = [i for i in range(have) if min(gaps[i], gaps[i + 1]) > 1e-2]
            assert_same_vectors(np.asarray(evecs)[:, clear], v[:, clear], atol=tol * 1e3)
            if size == 200:
                assert len(clear) >= 4  # the planted blocks' eigenvectors were compared


def test_repeated_eigenvalue_of_disconnected_graph():
    """Three disconnected components: eigenvalue 1 of A three times. Single-vector Lanczos
    only sees all copies because of the restart on breakdown."""
    w = planted_graph(seed=2)
    lab = np.random.default_rng(2).integers(0, 3, N)
    w = np.where(lab[:, None] == lab[None], 1.0 + w, 0.0)
    np.fill_diagonal(w, 0.0)
    a, _ = graph.normalized_adjacency(jnp.asarray(w, jnp.float32))
    evals, _, res = lanczos_eigsh(a, N, K, STEPS, KEY, ALL)
    lam, _ = sub_eigh(a, np.ones(N, bool))
    np.testing.assert_allclose(evals, lam[:K], atol=1e-5)
    np.testing.assert_allclose(evals[:3], 1.0, atol=1e-5)
    assert np.max(res) < 1e-4


def test_empty_mask_and_steps_beyond_mask_size():
    a = jnp.asarray(gapped_matrix(), jnp.float32)
    evals, evecs, res = lanczos_eigsh(a, N, K, STEPS, KEY, jnp.zeros(N, bool))
    assert (
        np.all(np.isfinite(evals))
        and np.all(np.asarray(evecs) == 0)
        and np.all(np.asarray(res) == 0)
    )


def test_vmap_over_masks_equals_loop():
    n, k, steps = N, K, STEPS
    a = jnp.asarray(planted_graph(), jnp.float32)
    rng = np.random.default_rng(3)
    masks = np.zeros((5, n), bool)
    for i, size in enumerate((2, 3, 25, 90, 200)):
        masks[i, rng.choice(n, size, replace=False)] = True
    keys = jax.random.split(KEY, 5)

    def solve(m, key):
        adj, _ = graph.normalized_adjacency(a, m)
        return lanczos_eigsh(adj, n, k, steps, key, m)

    batched = jax.jit(jax.vmap(solve))(jnp.asarray(masks), keys)
    for i in range(5):
        one = solve(jnp.asarray(masks[i]), keys[i])
        for got, want in zip(batched, one, strict=True):
            np.testing.assert_allclose(got[i], want, atol=2e-5)


class TestJitEquality(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        a = jnp.asarray(gapped_matrix(), jnp.float32)
        mask = jnp.asarray(np.random.default_rng(4).random(N) < 0.7)
        solve = self.variant(lambda a, m, key: lanczos_eigsh(a, N, K, STEPS, key, m))
        evals, evecs, res = solve(a, mask, KEY)
        want = lanczos_eigsh(a, N, K, STEPS, KEY, mask)
        chex.assert_shape((evals, evecs, res), ((K,), (N, K), (K,)))
        for got, ref in zip((evals, evecs, res), want, strict=True):
            np.testing.assert_allclose(got, ref, atol=1e-5)


def test_operator_paths_equal_dense():
    """LowRankOperator (pytree) and a plain closure (traced inside the caller's jit, the way
    to pass one) give the dense matrix's answer."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(5).normal(size=(N, 6)))
        mask = jnp.asarray(np.random.default_rng(6).random(N) < 0.8)
        op = graph.lowrank_operator(x, mask)
        dense = graph.to_dense(op)
        want = lanczos_eigsh(dense, N, K, STEPS, KEY, mask)
        closure = jax.jit(lambda d, m: lanczos_eigsh(lambda v: d @ v, N, K, STEPS, KEY, m))
        for got in (lanczos_eigsh(op, N, K, STEPS, KEY, mask), closure(dense, mask)):
            for g, ref in zip(got, want, strict=True):
                np.testing.assert_allclose(g, ref, atol=1e-10)


def test_bad_input_raises():
    a = jnp.eye(5)
    with pytest.raises(ValueError, match="num_iter"):
        lanczos_eigsh(a, 5, 3, 2, KEY)
    with pytest.raises(ValueError, match="num_iter"):
        lanczos_eigsh(a, 5, 3, 6, KEY)
    with pytest.raises(ValueError, match="shape"):
        lanczos_eigsh(jnp.eye(4), 5, 2, 3, KEY)
    with pytest.raises(ValueError, match="mask"):
        lanczos_eigsh(a, 5, 2, 3, KEY, jnp.ones(4, bool))
    with pytest.raises(ValueError, match="maps"):
        lanczos_eigsh(lambda v: v[:3], 5, 2, 3, KEY)
    with pytest.raises(ValueError, match="positive int"):
        lanczos_eigsh(a, 5, 0, 3, KEY)


def test_block_repeated_eigenvalue_and_low_rank_breakdown():
    """Three disconnected components (eigenvalue 1 three times: a block sees all copies at
    once), and an operator of rank 3 whose Krylov space is exhausted after one block: the
    lost columns sort last with zero vectors, no NaN."""
    w = planted_graph(seed=2)
    lab = np.random.default_rng(2).integers(0, 3, N)
    w = np.where(lab[:, None] == lab[None], 1.0 + w, 0.0)
    np.fill_diagonal(w, 0.0)
    a, _ = graph.normalized_adjacency(jnp.asarray(w, jnp.float32))
    evals, _, res = block_lanczos_eigsh(a, K, BLOCK, BLOCKS, KEY)
    lam, _ = sub_eigh(a, np.ones(N, bool))
    np.testing.assert_allclose(evals[:8], lam[:8], atol=1e-5)  # K = 11 reaches the bulk
    np.testing.assert_allclose(evals[:3], 1.0, atol=1e-5)
    assert np.max(res[:8]) < 1e-4
    u = np.random.default_rng(7).normal(size=(N, 3))
    low = jnp.asarray(u @ np.diag([3.0, 2.0, 1.0]) @ u.T / N, jnp.float32)
    evals, evecs, res = block_lanczos_eigsh(low, K, BLOCK, 3, KEY)
    lam, _ = sub_eigh(low, np.ones(N, bool))
    np.testing.assert_allclose(evals[:3], lam[:3], rtol=1e-5)
    chex.assert_tree_all_finite((evals, evecs, res))
    np.testing.assert_allclose(evals[3:], 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(evecs).T @ np.asarray(evecs), np.eye(K), atol=1e-5)


def test_block_low_rank_operator_and_vmap_equal_dense():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(5).normal(size=(N, 6)))
        op = graph.lowrank_operator(x)
        want = block_lanczos_eigsh(graph.to_dense(op), K, BLOCK, BLOCKS, KEY)
        for g, ref in zip(block_lanczos_eigsh(op, K, BLOCK, BLOCKS, KEY), want, strict=True):
            np.testing.assert_allclose(g, ref, atol=1e-10)
        ops = jax.tree.map(lambda t: jnp.stack([t, t[::-1]]), op)
        batched = jax.vmap(lambda o: block_lanczos_eigsh(o, K, BLOCK, BLOCKS, KEY))(ops)
        for g, ref in zip(batched, want, strict=True):
            np.testing.assert_allclose(g[0], ref, atol=1e-10)
