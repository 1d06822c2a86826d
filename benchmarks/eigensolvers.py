"""Stage-A eigensolvers side by side: top-k eigenpairs of the normalised minmax adjacency.

Compares scipy `eigh(subset_by_index, driver='evr')` (float32/float64), `jnp.linalg.eigh`
(float32) and `hiseg_jax.lanczos.lanczos_eigsh` (float32, dense matvec and low-rank matvec) at
a few step counts, in one process, on unit features shaped like ViT patch features (see
`synthetic_features`). Reports the best-of-R wall and process-CPU time of the solver alone
(operator already built; build times on separate rows) and, against the float64 matrix, the
largest residual ||A v - lambda v|| and the largest eigenvalue error over the k pairs.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/eigensolvers.py [--sizes 32 60] [--k 200]

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

from hiseg_jax import graph, lanczos  # noqa: E402


def synthetic_features(side: int, dim: int = 384, n_regions: int = 20, seed: int = 0) -> np.ndarray:
    """Unit features [side*side, dim] of a side x side patch grid: a shared direction, one
    prototype per Voronoi region, a smooth low-frequency field and a little iid noise. Its
    spectrum looks like section 8 of ALGORITHM.md: ~30-50 positive eigenvalues of A, the rest
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


def accuracy(a64: np.ndarray, exact: np.ndarray, evals: np.ndarray, evecs: np.ndarray) -> tuple:
    """(max residual ||A v - lambda v||, max |lambda - exact|) in float64, v normalised."""
    v = np.asarray(evecs, np.float64)
    v = v / np.linalg.norm(v, axis=0, keepdims=True)
    lam = np.sort(np.asarray(evals, np.float64))[::-1]
    res = np.linalg.norm(a64 @ v - v * np.asarray(evals, np.float64)[None, :], axis=0)
    return float(res.max()), float(np.abs(lam - exact).max())


def run_size(side: int, k: int, iters: list[int], repeats: int) -> list[dict]:
    x64 = synthetic_features(side)
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
    exact = w64.copy()
    rows.append(
        {"N": n, "solver": "scipy eigh evr f64", "time_s": t, "acc": accuracy(a64, exact, w64, v64)}
    )
    *t, (w, v) = best_time(lambda: scipy_evr(a32_np), repeats)
    rows.append(
        {"N": n, "solver": "scipy eigh evr f32", "time_s": t, "acc": accuracy(a64, exact, w, v)}
    )

    def jnp_topk(a: jax.Array) -> tuple[jax.Array, jax.Array]:
        w, v = jnp.linalg.eigh(a)
        return w[::-1][:k], v[:, ::-1][:, :k]

    jit_eigh = jax.jit(jnp_topk)
    *t, (w, v) = best_time(lambda: jit_eigh(a32), repeats)
    rows.append(
        {"N": n, "solver": "jnp.linalg.eigh f32", "time_s": t, "acc": accuracy(a64, exact, w, v)}
    )

    key = jax.random.key(0)
    for steps in iters:
        if steps > n:
            continue
        for name, op in (("dense", a32), ("low-rank", op32)):
            *t, (w, v, res) = best_time(
                lambda op=op, s=steps: lanczos.lanczos_eigsh(op, n, k, s, key), repeats
            )
            acc = accuracy(a64, exact, w, v)
            rows.append(
                {
                    "N": n,
                    "solver": f"lanczos {name} f32 {steps} steps",
                    "time_s": t,
                    "acc": acc,
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
    args = parser.parse_args()
    rows = []
    for side in args.sizes:
        rows += run_size(side, args.k, args.iters, args.repeats)
    platform = jax.devices()[0].platform
    print(f"load average at the end: {os.getloadavg()}; jax {jax.__version__}, {platform}")
    print(f"{'N':>5} {'solver':<34} {'wall s':>7} {'cpu s':>7} {'max resid':>9} {'max|dlam|':>9}")
    for r in rows:
        res, dlam = r.get("acc", (float("nan"), float("nan")))
        wall, cpu = r["time_s"]
        print(f"{r['N']:>5} {r['solver']:<34} {wall:>7.3f} {cpu:>7.3f} {res:>9.2e} {dlam:>9.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
