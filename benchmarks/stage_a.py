"""Stage-A eigensolvers on real features: accuracy against float64 `numpy.linalg.eigh`, time.

For the first `--images` cached BSDS500 train images (`bsds_data.py`) at each `--size`,
A = D^-1/2 W D^-1/2 of the minmax graph is built in float64 from the features (the
reference's definitions) and diagonalised exactly; each float32 JAX solver then computes
the top K pairs from `graph.lowrank_operator` (never forming A) or, for the dense rows,
from the dense float32 A:
- `lanczos S`: `lanczos.lanczos_eigsh`, S steps (the default stage A's solver);
- `rayleigh-ritz`: Rayleigh-Ritz on span(B) of the N x (E + 1) factor, orthonormalised by
  two passes of Gram-matrix whitening (small (E + 1) x (E + 1) eigh, no QR);
- `rr + T davidson`: then T steps of Rayleigh-Ritz on [V, (A V - V Theta) / (Theta + D^-1)];
- `lobpcg I`: `jax.experimental.sparse.linalg.lobpcg_standard`, I iterations;
- `dense eigh`: `jnp.linalg.eigh` of the dense float32 A (the paper path off CPU).
Columns: sin of the largest principal angle between the solver's span and the exact top-K
space (`sin K`) and the exact top-m space, m = number of eigenvalues >= mu = mean(1 / deg)
(`sin m`: the meaningful top, docs/method.md section 8; the rest of the top K lies in the
near-degenerate bulk), the largest residual ||A v - theta v|| over the K pairs and the time
per image (min of `--repeats` runs, compile excluded; all solvers in one process, so compare
ratios). Worst image for the errors, mean for the time. `--stage-a` also times the whole
stage A (graph, embedding, k-means) of the default against `PartitionConfig.paper()`.

`--stability SETTING ...` (partition_sweep.py's NAME:FIELD=VALUE,... syntax) instead
partitions the first `--images` val images at each size as they are, with 1e-5 relative
noise on every feature, and times 1e20 and 1e-20, and counts the trees whose leaf partition
keeps an adjusted Rand index >= 0.95 to the unperturbed one (and the identical ones).

    .venv/bin/python benchmarks/stage_a.py --sizes 448 840 --images 3 --ks 16 24 32 48 64
    .venv/bin/python benchmarks/stage_a.py --sizes 448 --images 20 --stability default: \
        paper:@paper
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.sparse.linalg import lobpcg_standard

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bsds_data  # noqa: E402
from partition_sweep import parse_setting  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from hiseg_jax.precision import HIGHEST  # noqa: E402
from hiseg_jax.spectral import graph, lanczos, reference  # noqa: E402
from hiseg_jax.spectral import partition as jp  # noqa: E402
from hiseg_jax.spectral.config import PartitionConfig  # noqa: E402


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=HIGHEST)


def whiten(s: jax.Array, passes: int = 2, rtol: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """Orthonormal basis of span(s [N, m]) from eigh of the m x m Gram matrix (columns scaled
    to unit norm first; directions below rtol dropped): (q [N, m] orthonormal or zero
    columns, kept [m])."""
    q = s / jnp.maximum(jnp.linalg.norm(s, axis=0, keepdims=True), 1e-30)
    kept = jnp.ones((s.shape[1],), bool)
    for p in range(passes):
        e, u = jnp.linalg.eigh(_mm(q.T, q))
        kept = e > (rtol * e[-1] if p == 0 else 0.5)
        q = _mm(q, u * jnp.where(kept, jax.lax.rsqrt(jnp.where(kept, e, 1.0)), 0.0))
    return q, kept


def rayleigh_ritz(
    op: graph.LowRankOperator, q: jax.Array, kept: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """Top-k Ritz pairs of A on span(q): (theta [k] descending, v [N, k])."""
    h = _mm(q.T, graph.matmat(op, q))
    h = 0.5 * (h + h.T) + jnp.diag(jnp.where(kept, 0.0, -1e3))  # dropped directions last
    theta, c = jnp.linalg.eigh(h)
    return theta[::-1][:k], _mm(q, c[:, ::-1][:, :k])


@functools.partial(jax.jit, static_argnames=("k", "steps"))
def rr_davidson(op: graph.LowRankOperator, k: int, steps: int) -> tuple[jax.Array, jax.Array]:
    """Rayleigh-Ritz on span(B), then `steps` Davidson steps with the diagonal
    preconditioner (Theta + D^-1)^-1 (denominators floored at a tenth of min 1/deg)."""
    theta, v = rayleigh_ritz(op, *whiten(op.b), k)
    floor = 0.1 * jnp.min(jnp.where(op.deg > 0, op.dinv, jnp.inf))
    for _ in range(steps):
        r = graph.matmat(op, v) - v * theta[None, :]
        den = theta[None, :] + op.dinv[:, None]
        den = jnp.where(den >= 0, jnp.maximum(den, floor), jnp.minimum(den, -floor))
        theta, v = rayleigh_ritz(op, *whiten(jnp.concatenate([v, r / den], axis=1)), k)
    return theta, v


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def lobpcg(
    op: graph.LowRankOperator, k: int, iters: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x0 = jax.random.normal(key, (op.b.shape[0], k), op.b.dtype)
    theta, v, _ = lobpcg_standard(lambda x: graph.matmat(op, x), x0, m=iters)
    return theta, v


@functools.partial(jax.jit, static_argnames=("k", "steps"))
def lanczos_top(
    op: graph.LowRankOperator, k: int, steps: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    theta, v, _ = lanczos.lanczos_eigsh(op, op.b.shape[0], k, steps, key)
    return theta, v


@functools.partial(jax.jit, static_argnames=("k",))
def dense_top(a: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    theta, v = jnp.linalg.eigh(a)
    return theta[::-1][:k], v[:, ::-1][:, :k]


def solvers(ks_steps: tuple[float, ...], lobpcg_iters: int) -> dict[str, Callable]:
    """name -> f(op, dense_a, k, key) -> (theta [k], v [N, k])."""
    out = {}
    for mult in ks_steps:
        out[f"lanczos {mult:g}K"] = lambda op, a, k, key, m=mult: lanczos_top(
            op, k, min(int(m * k), op.b.shape[0]), key
        )
    out["rayleigh-ritz"] = lambda op, a, k, key: rr_davidson(op, k, 0)
    out["rr + 2 davidson"] = lambda op, a, k, key: rr_davidson(op, k, 2)
    out[f"lobpcg {lobpcg_iters}"] = lambda op, a, k, key: lobpcg(op, k, lobpcg_iters, key)
    out["dense eigh"] = lambda op, a, k, key: dense_top(a, k)
    return out


def exact(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Float64 (A [N, N], eigenvalues descending, eigenvectors, mu = mean 1 / deg)."""
    w = reference.reference_graph(x, PartitionConfig())
    a = reference.normalized_adjacency(w)
    evals, evecs = np.linalg.eigh(a)
    return a, evals[::-1], evecs[:, ::-1], float(np.mean(1.0 / w.sum(axis=1)))


def sin_angle(v: np.ndarray, exact_v: np.ndarray) -> float:
    """sin of the largest principal angle between span(v) and span(exact_v) [N, m]."""
    q, _ = np.linalg.qr(v)
    smallest = np.linalg.svd(exact_v.T @ q, compute_uv=False).min()
    return float(np.sqrt(max(0.0, 1.0 - smallest**2)))


def timed(fn: Callable, repeats: int) -> tuple[object, float]:
    out = jax.block_until_ready(fn())
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return out, best


def accuracy_rows(
    feats: np.ndarray, ks: list[int], methods: dict[str, Callable], repeats: int
) -> list[dict]:
    """Per (K, method): worst-image errors and mean time over the images [B, h, w, E]."""
    rows: dict[tuple[int, str], dict] = {}
    for x in feats.reshape(feats.shape[0], -1, feats.shape[-1]):
        a64, evals, evecs, mu = exact(x)
        m = int(np.sum(evals >= mu))
        op = graph.lowrank_operator(jnp.asarray(x))
        a32 = jnp.asarray(a64, jnp.float32)
        for k in ks:
            for name, fn in methods.items():
                (theta, v), seconds = timed(
                    lambda f=fn, k=k, op=op, a=a32: f(op, a, k, jax.random.key(0)), repeats
                )
                theta, v = np.asarray(theta, np.float64), np.asarray(v, np.float64)
                res = np.linalg.norm(a64 @ v - v * theta[None, :], axis=0).max()
                row = rows.setdefault(
                    (k, name),
                    dict(k=k, method=name, sin_k=0.0, sin_m=0.0, res=0.0, seconds=[], m=[]),
                )
                row["sin_k"] = max(row["sin_k"], sin_angle(v, evecs[:, :k]))
                if m <= k:
                    row["sin_m"] = max(row["sin_m"], sin_angle(v[:, :m], evecs[:, :m]))
                row["res"] = max(row["res"], float(res))
                row["seconds"].append(seconds)
                row["m"].append(m)
    return list(rows.values())


def stage_a_times(feats: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds per image of the whole stage A (jitted `partition.stage_a`), default vs paper."""
    grid = feats.shape[1:3]
    out = {}
    for name, config in (("default", PartitionConfig()), ("paper", PartitionConfig.paper())):
        fn = jax.jit(lambda x, key, c=config: jp.stage_a(x, c, key, grid)[0])
        times = []
        for x in feats.reshape(feats.shape[0], -1, feats.shape[-1]):
            times.append(timed(lambda x=x, f=fn: f(jnp.asarray(x), jax.random.key(0)), repeats)[1])
        out[name] = float(np.mean(times))
    return out


def stability(feats: np.ndarray, settings: list[str], batch: int = 4) -> list[str]:
    """Markdown rows: per setting and perturbation, trees with leaf ARI >= 0.95 / identical.

    Every batch of `batch` images runs at the same shape (a short last one padded)."""
    rng = np.random.default_rng(0)
    inputs = {
        "1e-5 noise": feats * (1 + 1e-5 * rng.standard_normal(feats.shape)).astype(np.float32),
        "x 1e20": (feats.astype(np.float64) * 1e20).astype(np.float32),
        "x 1e-20": (feats.astype(np.float64) * 1e-20).astype(np.float32),
    }
    rows = []
    for name, config in (parse_setting(s) for s in settings):

        def leaves(x: np.ndarray, config: PartitionConfig = config) -> np.ndarray:
            out = []
            for start in range(0, len(x), batch):
                chunk = x[start : start + batch]
                pad = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
                tree = jp.partition(pad, config, jax.random.key(0))
                out.append(np.asarray(tree.labels[: len(chunk), -1]))
            return np.concatenate(out)

        base = leaves(feats)
        cells = []
        for x in inputs.values():
            other = leaves(x)
            ari = np.array([adjusted_rand_score(a, b) for a, b in zip(base, other, strict=True)])
            same = int(sum(np.array_equal(a, b) for a, b in zip(base, other, strict=True)))
            cells.append(f"{int((ari >= 0.95).sum())} / {same} (min {ari.min():.2f})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return ["| setting | " + " | ".join(inputs) + " |", "|---" * (len(inputs) + 1) + "|", *rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[448, 840])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    parser.add_argument(
        "--lanczos",
        type=float,
        nargs="+",
        default=[2.0, 3.0],
        help="Lanczos steps as multiples of K",
    )
    parser.add_argument("--lobpcg-iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stage-a", action="store_true", help="also time the whole stage A")
    parser.add_argument("--stability", nargs="+", default=None, help="NAME:FIELD=VALUE,...")
    args = parser.parse_args()
    if args.stability:
        for size in args.sizes:
            _, feats = bsds_data.bsds_features("val", args.images, size)
            print(
                f"\nBSDS500 val, first {len(feats)} images, {size} px: trees with leaf ARI "
                ">= 0.95 / identical trees, of the unperturbed ones (min ARI)"
            )
            print("\n".join(stability(feats, args.stability)))
        return
    methods = solvers(tuple(args.lanczos), args.lobpcg_iters)
    for size in args.sizes:
        _, feats = bsds_data.bsds_features("train", args.images, size)
        n = feats.shape[1] * feats.shape[2]
        rows = accuracy_rows(feats, args.ks, methods, args.repeats)
        ms = sorted({m for r in rows for m in r["m"]})
        print(
            f"\nN = {n} ({size} px), {len(feats)} BSDS500 train images, meaningful m = {ms}; "
            "errors: worst image, time: mean"
        )
        print("| K | solver | sin K | sin m | max residual | ms |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['k']} | {r['method']} | {r['sin_k']:.1e} | {r['sin_m']:.1e} | "
                f"{r['res']:.1e} | {1e3 * np.mean(r['seconds']):.0f} |"
            )
        if args.stage_a:
            t = stage_a_times(feats, args.repeats)
            print(
                f"stage A alone (graph + embedding + k-means), s/image: default "
                f"{t['default']:.3f}, paper {t['paper']:.3f} ({t['paper'] / t['default']:.1f}x)"
            )


if __name__ == "__main__":
    main()
