"""Masked, fixed-step Lanczos for the largest eigenpairs of a symmetric operator, and its
block form for stage A (`block_lanczos_eigsh`, no mask: one product per block of vectors).

One static-shape program (a `lax.fori_loop` of `num_iter` steps, then a dense eigh of the
num_iter x num_iter tridiagonal matrix T), so it jit-compiles once and vmaps over operators,
masks and keys: stage B runs it on every node's sub-graph of the part graph at once.

Design choices (docs/method.md section 7):
- Node mask P: the start vector, every product and every basis vector are zero outside the
  mask, so the Krylov space lives in range(P) and the Ritz values are those of the masked
  sub-matrix P A P restricted to range(P): masked nodes never appear as eigenvalues and the
  matrix is never copied or sliced.
- Three-term recurrence, then full re-orthogonalisation against the whole basis by classical
  Gram-Schmidt, repeated once when the pass cancelled a lot (DGKS criterion, "twice is
  enough"). A step BREAKS DOWN when the second pass cancels as much again (the new direction
  is numerically inside the basis) or when beta < breakdown_tol * ||A|| (||A|| estimated by
  the largest ||A q_j|| seen). On breakdown the basis RESTARTS with
  a random masked vector orthogonal to the basis (T gets beta = 0 there, a new diagonal
  block): this is how repeated eigenvalues (disconnected sub-graphs) get all their copies.
  When even the restart vector lies in the basis, the masked space is exhausted (basis size =
  mask size): the remaining steps are inactive (zero vectors).
- Inactive steps get a diagonal entry in T below every Ritz value (Gershgorin lower bound of
  the active part minus 1) and zero Ritz vectors. So when k exceeds the number of available
  eigenpairs (min(num_iter, mask size)), the surplus slots hold that finite sentinel value,
  zero eigenvectors and residual 0: no NaN, and they sort last.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.precision import HIGHEST
from hiseg_jax.spectral import graph

DGKS = 0.5**0.5  # re-orthogonalise when a Gram-Schmidt pass keeps less than this fraction
Operator = Any  # a dense [n, n] array or a callable v [n] -> A v [n] (e.g. a pytree with __call__)


def _is_array(x: object) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _as_matvec(op: Operator, n: int, dtype: Any) -> tuple[Callable[[jax.Array], jax.Array], Any]:
    """The operator as a matvec function and its floating dtype (checked on the host)."""
    if _is_array(op):
        if op.shape != (n, n):
            raise ValueError(f"dense operator must have shape ({n}, {n}), got {op.shape}")
        if not jnp.issubdtype(op.dtype, jnp.floating):
            raise ValueError(f"dense operator must be floating point, got {op.dtype}")
        matrix = jnp.asarray(op)
        return (
            lambda v: jnp.matmul(matrix, v, precision=HIGHEST)
        ), matrix.dtype if dtype is None else dtype
    if not callable(op):
        raise ValueError(f"operator must be an [n, n] array or a callable, got {type(op).__name__}")
    if dtype is None:
        leaves = [x for x in jax.tree.leaves(op) if _is_array(x)]
        leaves = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
        dtype = jnp.result_type(*leaves) if leaves else jnp.result_type(float)
    out = jax.eval_shape(op, jax.ShapeDtypeStruct((n,), dtype))
    if out.shape != (n,):
        raise ValueError(f"operator maps [{n}] to {list(out.shape)}, expected [{n}]")
    return op, dtype


def _project_out(basis: jax.Array, v: jax.Array) -> jax.Array:
    """v minus its projection on the rows of basis [m, n] (zero rows are harmless)."""
    coef = jnp.matmul(basis, v, precision=HIGHEST)
    return v - jnp.matmul(coef, basis, precision=HIGHEST)


def _orthogonalize(basis: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Classical Gram-Schmidt against the rows of basis, with a second pass only when the first
    cancelled more than 1 - 1/sqrt(2) of v (DGKS criterion; twice is enough). Returns (v', ok),
    ok False when v is numerically inside the span (the second pass cancelled as much again)."""
    v1 = _project_out(basis, v)
    n1 = jnp.linalg.norm(v1)

    def again(_: None) -> tuple[jax.Array, jax.Array]:
        v2 = _project_out(basis, v1)
        return v2, jnp.linalg.norm(v2) > DGKS * n1

    def once(_: None) -> tuple[jax.Array, jax.Array]:
        return v1, n1 > 0

    return jax.lax.cond(n1 < DGKS * jnp.linalg.norm(v), again, once, None)


def _unit(v: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(v)
    return v / jnp.where(norm > 0, norm, 1.0)


def lanczos_eigsh(
    op: Operator,
    n: int,
    k: int,
    num_iter: int,
    key: jax.Array,
    mask: jax.Array | None = None,
    *,
    breakdown_tol: float | None = None,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-k (largest algebraic) eigenpairs of a symmetric operator by `num_iter` Lanczos steps.

    op: dense [n, n] (only its masked sub-matrix is used) or a callable v [n] -> A v [n]
    (pass pytree operators such as `graph.LowRankOperator` as arguments, not closures, so
    jit does not constant-fold them); key: PRNG key (start and restart vectors);
    mask: bool [n] or None; breakdown_tol: relative beta threshold, default 8 * dtype eps
    (~1e-6 in float32); dtype: of a callable operator, default from its float leaves.
    Needs 1 <= k <= num_iter <= n. Returns (evals [k] descending, evecs [n, k] orthonormal,
    zero outside the mask, sign fixed so the largest-magnitude entry is positive,
    residuals [k] = ||P A v - lambda v||); slots past the available pairs: see module doc.
    """
    for name, val in (("n", n), ("k", k), ("num_iter", num_iter)):
        if not isinstance(val, int | np.integer) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if not k <= num_iter <= n:
        raise ValueError(f"need k <= num_iter <= n, got k={k}, num_iter={num_iter}, n={n}")
    if mask is not None and mask.shape != (n,):
        raise ValueError(f"mask must have shape ({n},), got {mask.shape}")
    _, dtype = _as_matvec(op, n, dtype)
    tol = 8 * float(jnp.finfo(dtype).eps) if breakdown_tol is None else float(breakdown_tol)
    if not 0 <= tol < 1:
        raise ValueError(f"breakdown_tol must be in [0, 1), got {breakdown_tol}")
    leaves = jax.tree.leaves(op)
    if leaves and all(_is_array(x) for x in leaves):
        return _lanczos_jit(op, key, mask, tol, n=n, k=k, num_iter=num_iter, dtype=dtype)
    return _lanczos(op, key, mask, tol, n=n, k=k, num_iter=num_iter, dtype=dtype)


def _lanczos(
    op: Operator,
    key: jax.Array,
    mask: jax.Array | None,
    tol: float,
    *,
    n: int,
    k: int,
    num_iter: int,
    dtype: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`lanczos_eigsh` after the host-side checks."""
    matvec, _ = _as_matvec(op, n, dtype)
    m = jnp.ones((n,), dtype) if mask is None else mask.astype(dtype)
    key_start, key_restart = jax.random.split(key)

    def masked_op(v: jax.Array) -> jax.Array:
        return m * matvec(v).astype(dtype)

    q0 = _unit(m * jax.random.normal(key_start, (n,), dtype))
    basis = jnp.zeros((num_iter + 1, n), dtype).at[0].set(q0)
    alpha = jnp.zeros((num_iter,), dtype)
    beta = jnp.zeros((num_iter,), dtype)
    active = jnp.zeros((num_iter + 1,), bool).at[0].set(jnp.any(q0 != 0))

    def step(j: int, carry: tuple) -> tuple:
        basis, alpha, beta, active, anorm = carry
        q = basis[j]
        aq = masked_op(q)
        anorm = jnp.maximum(anorm, jnp.linalg.norm(aq))
        a_j = jnp.dot(q, aq, precision=HIGHEST)
        alpha = alpha.at[j].set(a_j)
        prev = jnp.where(j > 0, beta[j - 1], 0.0) * basis[j - 1]  # row -1 is still zero at j = 0
        w, ok = _orthogonalize(basis, aq - a_j * q - prev)
        b = jnp.linalg.norm(w)
        ok = ok & (b > tol * anorm)

        def restart(_: None) -> tuple[jax.Array, jax.Array]:
            r = m * jax.random.normal(jax.random.fold_in(key_restart, j), (n,), dtype)
            r, found = _orthogonalize(basis, r)
            return _unit(r), found

        def extend(_: None) -> tuple[jax.Array, jax.Array]:
            return w / jnp.where(ok, b, 1.0), jnp.array(True)

        nxt, found = jax.lax.cond(ok, extend, restart, None)
        live = active[j] & found
        basis = basis.at[j + 1].set(jnp.where(live, nxt, 0.0))
        beta = beta.at[j].set(jnp.where(ok & live, b, 0.0))
        active = active.at[j + 1].set(live)
        return basis, alpha, beta, active, anorm

    init = (basis, alpha, beta, active, jnp.zeros((), dtype))
    basis, alpha, beta, active, _ = jax.lax.fori_loop(0, num_iter, step, init)
    basis, active = basis[:num_iter], active[:num_iter]

    off = jnp.abs(beta[:-1])
    radius = jnp.pad(off, (0, 1)) + jnp.pad(off, (1, 0))  # Gershgorin radii of T
    lower = jnp.min(jnp.where(active, alpha - radius, jnp.inf))
    sentinel = jnp.where(jnp.any(active), lower, 0.0) - 1.0
    diag = jnp.where(active, alpha, sentinel)
    tri = jnp.diag(diag) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    theta, s = jnp.linalg.eigh(tri)
    evals = theta[::-1][:k]
    evecs = jnp.matmul(basis.T, s[:, ::-1][:, :k], precision=HIGHEST)  # [n, k]

    peak = jnp.take_along_axis(evecs, jnp.argmax(jnp.abs(evecs), axis=0)[None], axis=0)
    evecs = evecs * jnp.where(peak < 0, -1.0, 1.0).astype(dtype)
    av = jax.vmap(masked_op, in_axes=1, out_axes=1)(evecs)
    residuals = jnp.linalg.norm(av - evecs * evals[None, :], axis=0)
    return evals, evecs, residuals


_lanczos_jit = jax.jit(_lanczos, static_argnames=("n", "k", "num_iter", "dtype"))


def _orthonormal_block(basis: jax.Array, block: jax.Array, tol: float) -> jax.Array:
    """The columns of block [n, p] made orthonormal to basis [n, m] and to each other.

    Block classical Gram-Schmidt twice against the basis (two matmuls, whatever p), modified
    Gram-Schmidt twice inside the block, then once more against the basis (the in-block
    combinations can lift rounding). A column left with less than `tol` of its norm lies in
    the span already: it becomes zero (no factorization, so it jit-compiles to matmuls).
    """
    for _ in range(2):
        block = block - jnp.matmul(
            basis, jnp.matmul(basis.T, block, precision=HIGHEST), precision=HIGHEST
        )
    norms = jnp.linalg.norm(block, axis=0)
    cols = []
    for i in range(block.shape[1]):
        c = block[:, i]
        for _ in range(2):
            for prev in cols:
                c = c - jnp.dot(prev, c, precision=HIGHEST) * prev
        size = jnp.linalg.norm(c)
        keep = size > tol * jnp.maximum(norms[i], jnp.finfo(block.dtype).tiny)
        cols.append(jnp.where(keep, c / jnp.where(keep, size, 1.0), 0.0))
    block = jnp.stack(cols, axis=1)
    return block - jnp.matmul(
        basis, jnp.matmul(basis.T, block, precision=HIGHEST), precision=HIGHEST
    )


@functools.partial(jax.jit, static_argnames=("k", "block", "steps"))
def block_lanczos_eigsh(
    op: Any, k: int, block: int, steps: int, key: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-k eigenpairs of a symmetric operator from a block Krylov space of `steps` blocks.

    op: a dense [n, n] array or a `graph.LowRankOperator` (applied by `graph.matmat`).
    Each step multiplies a whole block of `block` vectors, so a low-rank operator's factor
    is read 2 * steps times instead of 2 * steps * block (the single-vector recurrence is
    bound by that memory traffic); every block is re-orthogonalised against the whole basis
    (`_orthonormal_block`), and the Ritz pairs come from Q^T (A Q) with the products A Q kept
    from the steps (no extra pass). Columns lost to breakdown are zero and get a Ritz value
    below every other one (as in `lanczos_eigsh`), so they sort last.
    Returns (evals [k] descending, evecs [n, k] orthonormal, sign fixed as in `lanczos_eigsh`,
    residuals [k] = ||A v - lambda v||).
    """
    n = op.shape[0] if _is_array(op) else op.b.shape[0]
    dtype = op.dtype if _is_array(op) else op.b.dtype
    width = steps * block
    if not 1 <= k <= width:
        raise ValueError(f"need 1 <= k <= steps * block, got k={k}, steps * block={width}")
    tol = 1e-4  # a column keeping < 1e-4 of its norm after projection is in the span

    def apply(v: jax.Array) -> jax.Array:
        if _is_array(op):
            return jnp.matmul(op, v, precision=HIGHEST)
        return graph.matmat(op, v)

    basis = jnp.zeros((n, width + block), dtype)
    start = jax.random.normal(key, (n, block), dtype)
    basis = basis.at[:, :block].set(_orthonormal_block(basis, start, tol))
    products = jnp.zeros((n, width), dtype)

    def step(j: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        basis, products = carry
        q = jax.lax.dynamic_slice_in_dim(basis, j * block, block, axis=1)
        aq = apply(q)
        products = jax.lax.dynamic_update_slice_in_dim(products, aq, j * block, axis=1)
        nxt = _orthonormal_block(basis, aq, tol)
        basis = jax.lax.dynamic_update_slice_in_dim(basis, nxt, (j + 1) * block, axis=1)
        return basis, products

    basis, products = jax.lax.fori_loop(0, steps, step, (basis, products))
    basis = basis[:, :width]
    t = jnp.matmul(basis.T, products, precision=HIGHEST)
    t = 0.5 * (t + t.T)
    active = jnp.linalg.norm(basis, axis=0) > 0.5
    sentinel = -jnp.max(jnp.sum(jnp.abs(t), axis=1)) - 1.0  # below every Ritz value
    t = t + jnp.diag(jnp.where(active, 0.0, sentinel))
    theta, s = jnp.linalg.eigh(t)
    evals, s = theta[::-1][:k], s[:, ::-1][:, :k]
    evecs = jnp.matmul(basis, s, precision=HIGHEST)
    peak = jnp.take_along_axis(evecs, jnp.argmax(jnp.abs(evecs), axis=0)[None], axis=0)
    sign = jnp.where(peak < 0, -1.0, 1.0).astype(dtype)
    residual = jnp.matmul(products, s, precision=HIGHEST) - evecs * evals[None, :]
    return evals, evecs * sign, jnp.linalg.norm(residual, axis=0)
