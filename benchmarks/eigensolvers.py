"""Stage-A eigensolvers side by side: top-k eigenpairs of the normalised minmax adjacency.

Compares scipy `eigh(subset_by_index, driver='evr')` (float32/float64), `dense_eigh` (stage
A's default), `jnp.linalg.eigh` (float32) and `spectral.lanczos.lanczos_eigsh` (float32, dense
matvec and low-rank matvec) at a few step counts, in one process, on unit features shaped
like ViT patch features (`synthetic_features`) or on real ones (`--features`). Reports the
best-of-R wall and process-CPU time of the solver alone (operator already built; build times
on separate rows) and, against the float64 matrix, the largest residual ||A v - lambda v||
and the largest eigenvalue error over the k pairs.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/eigensolvers.py [--sizes 32 60] [--k 200]
        [--features feats.npz] [--ritz 400:1 400:2 400:3]

`--ritz` adds Rayleigh-Ritz probes on subspaces built from A's structure (`structured_ritz`):
how large a subspace must be to match the dense float32 solvers' accuracy. Besides residuals
and eigenvalue errors, every row reports the sine of the largest principal angle between
the exact (float64) top-k/2 and top-k eigenspaces and the solver's span.

On a shared machine, compare single-threaded CPU times (multi-threaded BLAS spin-waits and
inflates both clocks under contention):

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 JAX_PLATFORMS=cpu \
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    .venv/bin/python benchmarks/eigensolvers.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
from scipy.ndimage import zoom  # noqa: E402

from hiseg_jax.spectral import dense_eigh, graph, lanczos  # noqa: E402


def synthetic_features(side: int, dim: int = 384, n_regions: int = 20, seed: int = 0) -> np.ndarray:
    """Unit features [side*side, dim] of a side x side patch grid: a shared direction, one
    prototype per Voronoi region, a smooth low-frequency field and a little iid noise. Its
    spectrum looks like docs/method.md section 8: ~30-50 positive eigenvalues of A, the rest
    in a bulk near -1/deg, gaps of 1e-8..1e-6 around index 200 at N = 3600."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    centres = rng.random((n_regions, 2))
    dist = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    region = np.argmin(dist, axis=-1)
    common = rng.normal(size=dim)
    common /= np.linalg.norm(common)
    protos = rng.normal(size=(n_regions, dim)) / np.sqrt(dim)
    field = rng.normal(size=(6, 6, dim)) / np.sqrt(dim)
    smooth = zoom(field, (side / 6, side / 6, 1), order=1)[:side, :side]
    noise = rng.normal(size=(side, side, dim)) / np.sqrt(dim)
    x = 0.8 * common + protos[region] + 0.4 * smooth + 0.15 * noise
    x = x.reshape(-1, dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """(best wall time, best process CPU time (all threads) of `repeats` calls after one
    warm-up call, the last result). On a shared machine the CPU time is the steadier one."""
    out = jax.block_until_ready(fn())
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(fn())
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu), out


def accuracy(
    a64: np.ndarray, exact: np.ndarray, exact_v: np.ndarray, evals: np.ndarray, evecs: np.ndarray
) -> tuple:
    """(max residual ||A v - lambda v||, max |lambda - exact|, sin of the largest angle between
    the exact top-k/2 and top-k subspaces and span(v)) in float64, v normalised."""
    v = np.asarray(evecs, np.float64)
    v = v / np.linalg.norm(v, axis=0, keepdims=True)
    lam = np.sort(np.asarray(evals, np.float64))[::-1]
    res = np.linalg.norm(a64 @ v - v * np.asarray(evals, np.float64)[None, :], axis=0)
    q = np.linalg.qr(v)[0]
    sines = [
        float(np.linalg.norm(u - q @ (q.T @ u), 2))
        for u in (exact_v[:, : exact_v.shape[1] // 2], exact_v)
    ]
    return float(res.max()), float(np.abs(lam - exact).max()), *sines


def structured_ritz(
    a64: np.ndarray, op: graph.LowRankOperator, k: int, lam_k: float, n_local: int, shifts: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Rayleigh-Ritz for A = B diag(w) B^T - D^-1 on a subspace built from its structure
    (float64 NumPy; an accuracy probe, not a fast solver): the coordinate vectors of the
    `n_local` highest-degree patches (the bulk eigenvectors localise there, docs/method.md
    section 8) plus B and, on the other rows, (lambda_j + D^-1)^-1 B at `shifts` values
    lambda_j spread over [lambda_k, 0] (one shift: 0), lambda_k the exact k-th largest
    eigenvalue. Returns (top-k values, vectors, subspace size)."""
    b, dinv = np.asarray(op.b, np.float64), np.asarray(op.dinv, np.float64)
    n = b.shape[0]
    local = np.argsort(dinv)[:n_local]
    rest = np.ones(n, bool)
    rest[local] = False
    blocks = [np.eye(n)[:, local], b]
    for lam in np.linspace(lam_k, 0.0, shifts) if shifts > 1 else np.zeros(shifts):
        blocks.append(np.where(rest[:, None], b / (lam + dinv)[:, None], 0.0))
    q = np.linalg.qr(np.concatenate(blocks, axis=1))[0]
    w, y = np.linalg.eigh(q.T @ a64 @ q)
    return w[::-1][:k], (q @ y)[:, ::-1][:, :k], q.shape[1]


def run_size(
    x64: np.ndarray, k: int, iters: list[int], repeats: int, ritz: list[tuple[int, int]]
) -> list[dict]:
    n = x64.shape[0]
    x32 = jnp.asarray(x64, jnp.float32)
    rows: list[dict] = []

    def dense_a(x: jax.Array) -> jax.Array:
        return graph.normalized_adjacency(graph.adjacency(x))[0]

    build_dense, build_low = jax.jit(dense_a), jax.jit(graph.lowrank_operator)
    *t_dense, a32 = best_time(lambda: build_dense(x32), repeats)
    *t_low, op32 = best_time(lambda: build_low(x32), repeats)
    rows.append({"N": n, "solver": "build dense A (jit, f32)", "time_s": t_dense})
    rows.append({"N": n, "solver": "build low-rank op (jit, f32)", "time_s": t_low})
    a64 = np.asarray(dense_a(jnp.asarray(x64)))
    a32_np = np.asarray(a32)
    subset = [n - k, n - 1]

    def scipy_evr(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, v = scipy.linalg.eigh(a, subset_by_index=subset, driver="evr")
        return w[::-1], v[:, ::-1]

    *t, (w64, v64) = best_time(lambda: scipy_evr(a64), repeats)
    exact, exact_v = w64.copy(), np.asarray(v64)

    def acc(w: np.ndarray, v: np.ndarray) -> tuple:
        return accuracy(a64, exact, exact_v, w, v)

    rows.append({"N": n, "solver": "scipy eigh evr f64", "time_s": t, "acc": acc(w64, v64)})
    *t, (w, v) = best_time(lambda: scipy_evr(a32_np), repeats)
    rows.append({"N": n, "solver": "scipy eigh evr f32", "time_s": t, "acc": acc(w, v)})
    jit_subset = jax.jit(lambda a: dense_eigh.top_eigenvectors(a, k)[:, ::-1])
    *t, v = best_time(lambda: jit_subset(a32), repeats)
    v = np.asarray(v, np.float64)
    w = np.sum(v * (a64 @ v), axis=0)  # Rayleigh quotients
    rows.append({"N": n, "solver": "dense_eigh.top_eigenvectors", "time_s": t, "acc": acc(w, v)})

    def jnp_topk(a: jax.Array) -> tuple[jax.Array, jax.Array]:
        w, v = jnp.linalg.eigh(a)
        return w[::-1][:k], v[:, ::-1][:, :k]

    jit_eigh = jax.jit(jnp_topk)
    *t, (w, v) = best_time(lambda: jit_eigh(a32), repeats)
    rows.append({"N": n, "solver": "jnp.linalg.eigh f32", "time_s": t, "acc": acc(w, v)})
    op64 = graph.lowrank_operator(jnp.asarray(x64))
    for n_local, shifts in ritz:
        w, v, dim = structured_ritz(a64, op64, k, float(exact[-1]), n_local, shifts)
        rows.append(
            {
                "N": n,
                "solver": f"structured Ritz f64, {n_local}+{shifts} ({dim} dims)",
                "time_s": (float("nan"), float("nan")),
                "acc": acc(w, v),
            }
        )

    key = jax.random.key(0)
    for steps in iters:
        if steps > n:
            continue
        for name, op in (("dense", a32), ("low-rank", op32)):
            *t, (w, v, res) = best_time(
                lambda op=op, s=steps: lanczos.lanczos_eigsh(op, n, k, s, key), repeats
            )
            rows.append(
                {
                    "N": n,
                    "solver": f"lanczos {name} f32 {steps} steps",
                    "time_s": t,
                    "acc": acc(w, v),
                    "reported_max_residual": float(np.max(res)),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[32, 60], help="grid sides (N = side^2)"
    )
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--iters", type=int, nargs="+", default=[250, 400, 600, 800])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument(
        "--features", help="features .npz (x [B, h, w, E]): its first image instead of --sizes"
    )
    parser.add_argument(
        "--ritz",
        nargs="*",
        default=[],
        metavar="LOCAL:SHIFTS",
        help="structured Rayleigh-Ritz probes, e.g. 400:2 (float64, accuracy only)",
    )
    args = parser.parse_args()
    ritz = [tuple(int(v) for v in spec.split(":")) for spec in args.ritz]
    if args.features:
        x = np.load(args.features)["x"][0]
        inputs = [x.reshape(-1, x.shape[-1]).astype(np.float64)]
    else:
        inputs = [synthetic_features(side) for side in args.sizes]
    rows = []
    for x64 in inputs:
        rows += run_size(x64, args.k, args.iters, args.repeats, ritz)
    platform = jax.devices()[0].platform
    print(f"load average at the end: {os.getloadavg()}; jax {jax.__version__}, {platform}")
    print(
        f"{'N':>5} {'solver':<44} {'wall s':>7} {'cpu s':>7} {'max resid':>9} {'max|dlam|':>9} "
        f"{'sin k/2':>8} {'sin k':>8}"
    )
    for r in rows:
        res, dlam, sin_half, sin_k = r.get("acc", (float("nan"),) * 4)
        wall, cpu = r["time_s"]
        print(
            f"{r['N']:>5} {r['solver']:<44} {wall:>7.3f} {cpu:>7.3f} {res:>9.2e} {dlam:>9.2e} "
            f"{sin_half:>8.1e} {sin_k:>8.1e}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
