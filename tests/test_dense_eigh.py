"""spectral.dense_eigh: the CPU subset driver and the full eigh give the same top-k subspace."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.spectral.dense_eigh import top_eigenvectors

N, K = 60, 6


def gapped(seed: int) -> np.ndarray:
    """float32 [N, N] symmetric, top K eigenvalues 10..5 well above a bulk in [-1, 1]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(N, N)))
    lam = np.concatenate([rng.uniform(-1, 1, N - K), np.arange(5.0, 5.0 + K)])
    return ((q * lam) @ q.T).astype(np.float32)


def aligned(v: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """v with each column's sign matched to ref's (eigenvectors are defined up to sign)."""
    return v * np.sign(np.sum(v * ref, axis=0, keepdims=True))


class TopEigenvectorsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_subset_matches_numpy_batched(self) -> None:
        a = np.stack([gapped(0), gapped(1)])
        fn = self.variant(jax.vmap(lambda m: top_eigenvectors(m, K)))
        got = np.asarray(fn(jnp.asarray(a)))
        chex.assert_shape(got, (2, N, K))
        for m, v in zip(a, got, strict=True):
            ref = np.linalg.eigh(m.astype(np.float64))[1][:, -K:]
            np.testing.assert_allclose(aligned(v, ref), ref, atol=2e-5)

    def test_subset_equals_full(self) -> None:
        a = jnp.asarray(gapped(2))
        sub = np.asarray(jax.jit(lambda m: top_eigenvectors(m, K))(a))
        full = np.asarray(jax.jit(lambda m: top_eigenvectors(m, K, subset=False))(a))
        np.testing.assert_allclose(aligned(sub, full), full, atol=2e-5)

    def test_non_finite_matrix_gives_nan(self) -> None:
        a = gapped(3)
        a[4, 7] = np.nan
        assert np.isnan(np.asarray(jax.jit(lambda m: top_eigenvectors(m, K))(a))).all()

    def test_k_out_of_range(self) -> None:
        with pytest.raises(ValueError, match="k must be in"):
            top_eigenvectors(jnp.zeros((4, 4)), 5)


def test_unknown_solver_named() -> None:
    with pytest.raises(ValueError, match="stage_a_solver"):
        PartitionConfig(stage_a_solver="arpack")  # type: ignore[arg-type]
