"""Top-k eigenvectors of dense symmetric matrices, the cheapest exact way per platform.

Stage A needs only the top P = 200 of N = 1024..6400 eigenpairs of A. XLA's `eigh` computes
all N of them on every backend (its `subset_by_index` is TPU-only). On CPU, LAPACK's subset
driver (`syevr`, MRRR) finds just the top k after the same tridiagonal reduction, 1.6x faster
than the full `eigh` at N = 3600, k = 200 (README, "Stage-A eigensolver"); it is reached
through a host callback, which moves no data between devices on CPU.
Elsewhere (GPU, TPU) the full device `eigh` runs and is sliced. Both are float32 LAPACK-class
solvers with residuals ~1e-6; docs/method.md section 8 explains why neither is exact around
index k, and the README's quality table shows that both meet the reference's covering.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg


def _host_top(a: np.ndarray, k: int) -> np.ndarray:
    """LAPACK `syevr` top-k eigenvectors of a [..., N, N] (ascending eigenvalues): [..., N, k].

    A matrix with a non-finite entry gets NaN vectors, as the device `eigh` would give.
    """
    a = np.asarray(a)
    n = a.shape[-1]
    flat = a.reshape(-1, n, n)
    out = np.full((flat.shape[0], n, k), np.nan, dtype=a.dtype)
    for i, m in enumerate(flat):
        if np.isfinite(m).all():
            out[i] = scipy.linalg.eigh(
                m, subset_by_index=(n - k, n - 1), driver="evr", check_finite=False
            )[1]
    return out.reshape(*a.shape[:-2], n, k)


def _full_top(a: jax.Array, k: int) -> jax.Array:
    return jnp.linalg.eigh(a)[1][..., -k:]


def _subset_top(a: jax.Array, k: int) -> jax.Array:
    shape = jax.ShapeDtypeStruct((*a.shape[:-1], k), a.dtype)
    return jax.pure_callback(functools.partial(_host_top, k=k), shape, a, vmap_method="expand_dims")


def top_eigenvectors(a: jax.Array, k: int, *, subset: bool = True) -> jax.Array:
    """Eigenvectors of the k largest eigenvalues of symmetric a [N, N], ascending: [N, k].

    subset=True uses LAPACK's subset driver when the program runs on CPU and the full
    device `eigh` on other platforms; subset=False always runs the full `eigh`. jit- and
    vmap-safe.
    """
    n = a.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if not subset:
        return _full_top(a, k)
    return jax.lax.platform_dependent(
        a,
        cpu=functools.partial(_subset_top, k=k),
        default=functools.partial(_full_top, k=k),
    )
