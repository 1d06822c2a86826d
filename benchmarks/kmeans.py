"""Stage-A k-means (k = P = 200 on row-normalised eigenvectors): hiseg_jax vs scikit-learn.

Both with k-means++, n_init=10, max_iter=600, tol=1e-6, on the same float32 embedding (top-k
eigenvectors of the synthetic features of `benchmarks/eigensolvers.py`, rows normalised).
Reports wall and process-CPU time (after one warm-up/compile call) and the inertia.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/kmeans.py [--sizes 32 60] [--k 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from sklearn.cluster import KMeans

from hiseg_jax.spectral import graph
from hiseg_jax.spectral.kmeans import kmeans

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eigensolvers import synthetic_features  # noqa: E402


def embedding(side: int, k: int) -> np.ndarray:
    """Row-normalised top-k eigenvectors [side^2, k] of the normalised minmax adjacency."""
    x = jnp.asarray(synthetic_features(side), jnp.float32)
    a = np.asarray(graph.normalized_adjacency(graph.adjacency(x))[0])
    n = a.shape[0]
    _, v = scipy.linalg.eigh(a, subset_by_index=[n - k, n - 1], driver="evr")
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def timed(fn, *args):
    """(wall s, process CPU s, fn(*args)) with JAX results waited for."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 60], help="grid sides")
    parser.add_argument("--k", type=int, default=200)
    args = parser.parse_args()
    run = jax.jit(lambda x, key: kmeans(x, args.k, key, k_max=args.k))
    sk = KMeans(args.k, n_init=10, max_iter=600, tol=1e-6, random_state=0)
    print(f"{'N':>5} {'method':<26} {'wall s':>7} {'cpu s':>7} {'inertia':>10}")
    for side in args.sizes:
        v = embedding(side, args.k)
        n = len(v)
        w, c, _ = timed(run, jnp.asarray(v), jax.random.key(0))
        print(f"{n:>5} {'hiseg_jax compile+run':<26} {w:>7.2f} {c:>7.2f}")
        w, c, res = timed(run, jnp.asarray(v), jax.random.key(1))
        print(f"{n:>5} {'hiseg_jax run':<26} {w:>7.2f} {c:>7.2f} {float(res.inertia):>10.3f}")
        w, c, fit = timed(sk.fit, v)
        print(f"{n:>5} {'sklearn KMeans':<26} {w:>7.2f} {c:>7.2f} {fit.inertia_:>10.3f}")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
