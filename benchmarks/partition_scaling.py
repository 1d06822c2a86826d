"""Partitioner time per stage over N, side by side with the NumPy reference (issue 13).

For each input size (default 448, 840, 1120, 1792 px: N = 1024, 3600, 6400, 16384; P = 200)
it prints the seconds per image of every stage (graph statistics, stage-A embedding, stage-A
k-means, part graph, stage B), of the whole partitioner in one jit (B = 1) and per image of a
batch, the ratio reference / JAX, then the exponent b of a least-squares fit t ~ N^b of each
profile over the sizes, and the process's peak resident memory.

Profiles (`--profiles`):
- `default`: `PartitionConfig()`: the top 48 eigenvectors of A by block Lanczos on the
  low-rank operator, coordinates, lattice-started k-means, graph statistics by
  farthest-pair search.
- `lanczos`: the previous default, the top 32 by single-vector Lanczos (96 steps).
- `paper`: `PartitionConfig.paper()`, the authors' stage A: dense top-P eigenvectors, 10
  k-means++ restarts, exact graph statistics. Runs up to `--paper-max` patches.
The reference (NumPy/SciPy, the authors' settings) runs up to `--reference-max` patches.

Features: the first `--images` BSDS500 val images through the default backbone, from the
`bsds_data.py` cache in `--cache-dir` (computed and saved there when missing: minutes per
image at 1792 px). Without the data or checkpoint: synthetic planted hierarchies.
Compile time is excluded; each figure is the fastest of `--repeats` runs (a shared machine
is noisy: read the ratios, measured in one process).

    .venv/bin/python benchmarks/partition_scaling.py [--sizes 448 840 1120 1792] [--images 2]
        [--cache-dir DIR] [--profiles default lanczos paper] [--reference-max 6400] [--batch 4]

Peak memory of one compiled batch, in a fresh process (ru_maxrss, whole process):

    .venv/bin/python benchmarks/partition_scaling.py --memory default --sizes 1792 --batch 8
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bsds_data  # noqa: E402

from hiseg_jax.paths import default_checkpoint_path  # noqa: E402
from hiseg_jax.spectral import graph, reference, synthetic
from hiseg_jax.spectral import partition as jp  # noqa: E402
from hiseg_jax.spectral.config import PartitionConfig  # noqa: E402

SHARED = bsds_data.SHARED
STAGES = ("graph stats", "embedding", "k-means", "part graph", "stage B")
PROFILES = {
    "default": PartitionConfig(),
    "lanczos": PartitionConfig(stage_a_solver="lanczos", stage_a_k=32, lanczos_iters=96),
    "paper": PartitionConfig.paper(),
}


# ------------------------------------------------------------------------------------------
# Features.


def load_features(size: int, count: int, cache_dir: Path) -> tuple[np.ndarray, str]:
    """float32 [count, h, w, E]: BSDS500 val through the default backbone (`bsds_data.py`,
    cached in `cache_dir`), else synthetic planted hierarchies."""
    if default_checkpoint_path().is_file() and (SHARED / "bsds500").is_dir():
        _, x = bsds_data.bsds_features("val", count, size, cache_dir, SHARED)
        return x, f"BSDS500 val, {bsds_data.BACKBONE}"
    grid = (size // 14, size // 14)
    feats = [synthetic.planted_hierarchy(s, grid=grid, dim=384)[0] for s in range(count)]
    return np.stack(feats), "synthetic planted hierarchy (no checkpoint or data)"


# ------------------------------------------------------------------------------------------
# The JAX profiles, stage by stage and whole.


def stage_functions(config: PartitionConfig, grid: tuple[int, int]) -> dict[str, Callable]:
    """The stages of a profile, each jitted on its own, chained as in `partition`."""

    def stats(x):
        return jp.affinity(x, config)

    def embed(a, key):
        return jp.spectral_embedding(a, config, key, grid)

    def parts_of(emb, key):
        return jp.parts_of(emb, config, key, grid).astype(jnp.int32)

    def part_graph(x, parts, a):
        if isinstance(a, graph.LowRankOperator):
            return jp.part_graph(x, parts, config, a)
        return jp.part_graph(x, parts, config)

    def stage_b(w_p, parts, key):
        sizes = jax.ops.segment_sum(jnp.ones_like(parts), parts, num_segments=config.n_parts)
        return jp.stage_b(w_p, config, key, sizes > 0)

    return {
        "graph stats": jax.jit(stats),
        "embedding": jax.jit(embed),
        "k-means": jax.jit(parts_of),
        "part graph": jax.jit(part_graph),
        "stage B": jax.jit(stage_b),
    }


def whole_function(config: PartitionConfig) -> Callable[[np.ndarray], jax.Array]:
    """Features [B, h, w, E] -> node-validity [B, M] of the whole partitioner, one jit."""
    return lambda f: jp.partition(f, config).valid


def profile_config(profile: str, args: argparse.Namespace) -> PartitionConfig:
    """The profile's config with the command line's stage-B solver and node chunk, if given."""
    given = {"stage_b_solver": args.stage_b_solver, "node_chunk": args.chunk}
    return dataclasses.replace(
        PROFILES[profile], **{k: v for k, v in given.items() if v is not None}
    )


def timed(fn: Callable, *args: object) -> tuple[object, float]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def best_of(repeats: int, fn: Callable, *args: object) -> tuple[object, float]:
    """(result, fastest time) of `repeats` calls after one warm-up (compile) call."""
    out = jax.block_until_ready(fn(*args))
    return out, min(timed(fn, *args)[1] for _ in range(repeats))


def jax_times(profile: str, feats: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    """Mean over images of each stage's time, 'total' (one jit, B = 1), 'batch' (per image
    of a batch of args.batch) and 'nodes'."""
    config = profile_config(profile, args)
    count, h, w, e = feats.shape
    fns = stage_functions(config, (h, w))
    whole = whole_function(config)
    key = jax.random.key(0)
    rows = []
    for i in range(count):
        x = jnp.asarray(feats[i].reshape(h * w, e))
        t = {}
        a, t["graph stats"] = best_of(args.repeats, fns["graph stats"], x)
        emb, t["embedding"] = best_of(args.repeats, fns["embedding"], a, key)
        parts, t["k-means"] = best_of(args.repeats, fns["k-means"], emb, key)
        w_p, t["part graph"] = best_of(args.repeats, fns["part graph"], x, parts, a)
        tree, t["stage B"] = best_of(args.repeats, fns["stage B"], w_p, parts, key)
        t["nodes"] = float(tree.valid.sum())
        t["total"] = best_of(args.repeats, whole, feats[i : i + 1])[1]
        rows.append(t)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    batch = np.resize(feats, (args.batch, h, w, e))
    out["batch"] = best_of(args.repeats, whole, batch)[1] / args.batch
    return out


def reference_times(feats: np.ndarray) -> dict[str, float]:
    """Mean stage times of the NumPy reference (authors' settings) over images [B, h, w, E]."""
    config = PartitionConfig.paper()
    rows = []
    for f in feats:
        x = f.reshape(-1, f.shape[-1])
        t = {}
        w, t["graph stats"] = timed(reference.reference_graph, x, config)
        emb, t["embedding"] = timed(reference.stage_a_embedding, w, config.n_parts, config.eps)
        parts, t["k-means"] = timed(reference.stage_a_parts, emb, config, 0)
        n_used = int(parts.max()) + 1
        w_p, t["part graph"] = timed(reference.part_graph, w, parts, n_used)
        nodes, t["stage B"] = timed(reference.reference_stage_b, w_p, config, 0)
        t["nodes"] = float(len(nodes))
        t["total"] = sum(t[s] for s in STAGES)
        rows.append(t)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# ------------------------------------------------------------------------------------------
# Reports.


def print_size(n: int, results: dict[str, dict[str, float]], count: int, batch: int) -> None:
    print(f"\nN = {n}, P = 200, {count} images; seconds per image, and reference / JAX")
    names = list(results)
    print(f"{'stage':<18}" + "".join(f"{name:>12}" for name in names))
    ref = results.get("reference")
    for row in (*STAGES, "total", "batch", "nodes"):
        label = {"total": "total (one jit)", "batch": f"batch B={batch}"}.get(row, row)
        line = f"{label:<18}"
        for name in names:
            value = results[name].get(row)
            line += f"{'-':>12}" if value is None else f"{value:>12.3f}"
        if ref is not None and row != "nodes":
            ratios = []
            for name in names:
                if name == "reference" or row not in results[name]:
                    continue
                base = ref["total" if row == "batch" else row]
                ratios.append(f"{name} {base / results[name][row]:.1f}x")
            line += "   " + ", ".join(ratios)
        print(line)


def print_exponents(table: dict[int, dict[str, dict[str, float]]]) -> None:
    """Least-squares slope of log t over log N per profile and stage (sizes where measured)."""
    print("\nfitted exponent b of t ~ N^b (least squares over the sizes measured)")
    names = sorted({name for per in table.values() for name in per})
    for name in names:
        ns = [n for n in sorted(table) if name in table[n]]
        if len(ns) < 2:
            continue
        parts = []
        for row in (*STAGES, "total", "batch"):
            if row not in table[ns[0]][name]:
                continue
            ts = [table[n][name][row] for n in ns]
            slope = np.polyfit(np.log(ns), np.log(np.maximum(ts, 1e-9)), 1)[0]
            parts.append(f"{row} {slope:.2f}")
        print(f"{name} (N = {', '.join(map(str, ns))}): " + ", ".join(parts))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB


def memory_run(args: argparse.Namespace) -> None:
    """One compiled batch of args.batch images at each size; time and the peak RSS."""
    for size in args.sizes:
        feats, source = load_features(size, 1, args.cache_dir)
        _, h, w, e = feats.shape
        batch = np.broadcast_to(feats[:1], (args.batch, h, w, e)).copy()
        config = profile_config(args.memory, args)
        whole = whole_function(config)
        _, first = timed(whole, batch)
        _, again = timed(whole, batch)
        print(
            f"{args.memory}: N = {h * w}, batch {args.batch} ({source}): first call (compile "
            f"+ run) {first:.1f} s, run {again:.1f} s ({again / args.batch:.2f} s/image), "
            f"peak RSS {peak_rss_gib():.2f} GiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[448, 840, 1120, 1792])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=bsds_data.CACHE_DIR, help="features")
    parser.add_argument(
        "--profiles", nargs="+", choices=sorted(PROFILES), default=["default", "paper"]
    )
    parser.add_argument(
        "--reference-max", type=int, default=6400, help="largest N of the reference"
    )
    parser.add_argument("--paper-max", type=int, default=3600, help="largest N of 'paper'")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stage-b-solver", choices=("eigh", "lanczos"), help="override")
    parser.add_argument("--chunk", type=int, help="override node_chunk")
    parser.add_argument("--memory", choices=sorted(PROFILES), help="peak memory of one batch")
    args = parser.parse_args()
    print(f"devices: {jax.devices()}, CPU affinity: {sorted(os.sched_getaffinity(0))}")
    if args.memory:
        memory_run(args)
        return
    for name in args.profiles:
        changed = {
            f.name: getattr(PROFILES[name], f.name)
            for f in dataclasses.fields(PartitionConfig)
            if getattr(PROFILES[name], f.name) != getattr(PartitionConfig(), f.name)
        }
        print(f"profile {name}: PartitionConfig({changed or ''})")
    table = {}
    for size in args.sizes:
        feats, source = load_features(size, args.images, args.cache_dir)
        n = feats.shape[1] * feats.shape[2]
        print(f"\nfeatures at {size} px: {source}", flush=True)
        results = {}
        if n <= args.reference_max:
            results["reference"] = reference_times(feats)
        for name in args.profiles:
            if name == "paper" and n > args.paper_max:
                continue
            results[name] = jax_times(name, feats, args)
        table[n] = results
        print_size(n, results, len(feats), args.batch)
        print(f"peak RSS so far {peak_rss_gib():.2f} GiB", flush=True)
    print_exponents(table)


if __name__ == "__main__":
    main()
