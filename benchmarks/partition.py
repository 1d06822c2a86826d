"""Per-image time of the JAX partitioner vs the NumPy reference, on the same features.

For each input size (default 448 px -> N = 1024 and 840 px -> N = 3600, P = 200) it prints
the stage split (graph, eigensolver, k-means, stage B incl. the part graph), the total of
the single-jit `partition` for one image, the batch throughput for B = 8, and the ratio
reference / JAX. Features come from the default backbone on BSDS500 val images when the
checkpoint and `../shared/data` exist, else from `synthetic.planted_hierarchy`.

    .venv/bin/python benchmarks/partition.py [--images 4] [--sizes 448 840]

JAX runs each profile of `--profile` (default: the authors' settings with each stage-A
solver, and a fast profile with a single k-means restart); the reference always runs the
authors' settings. Compile time is excluded (one warm-up call per jitted function). On a
loaded machine XLA's CPU thread pool stalls on every small op: pin the process for stable
figures (`OMP_WAIT_POLICY=PASSIVE taskset -c 0 ...`), the reference then runs on the same
core.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from partition_quality import parse_variant  # benchmarks/ is on sys.path when run as a script

from hiseg_jax.paths import DEFAULT_BACKBONE, default_checkpoint_path
from hiseg_jax.spectral import partition as jp
from hiseg_jax.spectral import reference, synthetic
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.weights.checkpoint import load_backbone

SHARED = Path(
    os.environ.get("HISEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def load_features(size: int, count: int) -> tuple[np.ndarray, str]:
    """float32 [count, h, w, E] features of BSDS500 val images, or synthetic ones."""
    from hiseg_jax import features, images

    files = sorted((SHARED / "bsds500" / "images" / "val").glob("*.jpg"))[:count]
    if files and default_checkpoint_path().is_file():
        model = load_backbone(default_checkpoint_path())
        batch = features.preprocess([images.load_image(f) for f in files], size, model.config)
        out = [
            np.asarray(features.extract_features(model, batch[i : i + 1]))
            for i in range(len(batch))
        ]
        return np.concatenate(out), f"BSDS500 val, {DEFAULT_BACKBONE}"
    grid = (size // 14, size // 14)
    feats = [synthetic.planted_hierarchy(s, grid=grid, dim=384)[0] for s in range(count)]
    return np.stack(feats), "synthetic planted hierarchy (no checkpoint or data)"


def timed(fn: Callable, *args: object) -> tuple[object, float]:
    """(result, seconds) with JAX results blocked on."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def reference_times(x: np.ndarray, config: PartitionConfig) -> tuple[dict[str, float], int]:
    """Stage times of the reference on one image [N, E], and its node count."""
    t = {}
    w, t["graph"] = timed(reference.reference_graph, x, config)
    emb, t["eigensolver"] = timed(reference.stage_a_embedding, w, config.n_parts, config.eps)
    parts, t["k-means"] = timed(reference.stage_a_parts, emb, config, 0)

    def stage_b() -> list:
        return reference.reference_stage_b(
            reference.part_graph(w, parts, int(parts.max()) + 1), config, 0
        )

    nodes, t["stage B"] = timed(stage_b)
    return t, len(nodes)


def jax_functions(config: PartitionConfig) -> dict[str, Callable]:
    """The JAX stages, each jitted on its own (config bound)."""

    def stage_b(x: jax.Array, parts: jax.Array, key: jax.Array) -> jp.StageB:
        sizes = jax.ops.segment_sum(np.ones(parts.shape, np.int32), parts, config.n_parts)
        w_p = jp.part_graph(x, parts, config)
        return jp.stage_b(w_p, config, key, sizes > 0)

    return {
        "graph": jax.jit(lambda x: jp.affinity(x, config)),
        "eigensolver": jax.jit(lambda a, key: jp.spectral_embedding(a, config, key)),
        "k-means": jax.jit(lambda emb, key: jp.parts_of(emb, config, key)),
        "stage B": jax.jit(stage_b),
    }


def jax_times(fns: dict[str, Callable], x: np.ndarray) -> tuple[dict[str, float], int]:
    """Stage times of the separately jitted JAX stages on one image [N, E]."""
    key = jax.random.key(0)
    t = {}
    a, t["graph"] = timed(fns["graph"], x)
    emb, t["eigensolver"] = timed(fns["eigensolver"], a, key)
    parts, t["k-means"] = timed(fns["k-means"], emb, key)
    tree, t["stage B"] = timed(fns["stage B"], x, parts, key)
    return t, int(tree.valid.sum())


STAGES = ("graph", "eigensolver", "k-means", "stage B")
PROFILES = (
    "eigh:stage_a_solver=eigh",
    "lanczos:stage_a_solver=lanczos",
    "fast:stage_a_solver=lanczos,kmeans_restarts=1",
)


def jax_profile(
    feats: np.ndarray, config: PartitionConfig, args: argparse.Namespace
) -> tuple[dict[str, float], float]:
    """Mean stage times, 'total' (single-jit `partition`, B = 1) and nodes; batch s/image."""
    count, h, w, e = feats.shape
    flat = feats.reshape(count, h * w, e)
    fns = jax_functions(config)

    def whole(f: np.ndarray) -> jax.Array:
        return jp.partition(f, config).labels

    batch = np.resize(feats, (args.batch, h, w, e))
    jax.block_until_ready((jax_times(fns, flat[0]), whole(feats[:1]), whole(batch)))  # compile
    times = {s: [] for s in (*STAGES, "total", "nodes")}
    for i in range(count):
        t, n = jax_times(fns, flat[i])
        for s in STAGES:
            times[s].append(t[s])
        times["nodes"].append(n)
        times["total"].append(timed(whole, feats[i : i + 1])[1])
    return {s: float(np.mean(v)) for s, v in times.items()}, timed(whole, batch)[1] / args.batch


def run_size(
    feats: np.ndarray, profiles: dict[str, PartitionConfig], args: argparse.Namespace
) -> None:
    count, h, w, e = feats.shape
    flat = feats.reshape(count, h * w, e)
    config = PartitionConfig()
    ref = {s: [] for s in (*STAGES, "nodes")}
    for i in range(count):  # all reference runs first: no OpenMP threads spinning during JAX
        t, n = reference_times(flat[i], config)
        for s in STAGES:
            ref[s].append(t[s])
        ref["nodes"].append(n)
    ref = {s: float(np.mean(v)) for s, v in ref.items()}
    ref["total"] = sum(ref[s] for s in STAGES)
    results = {name: jax_profile(feats, cfg, args) for name, cfg in profiles.items()}

    print(
        f"\nN = {h * w} ({h}x{w} patches), P = {config.n_parts}, {count} images, "
        f"stage B solver {args.stage_b_solver}, chunk {args.chunk}; seconds per image "
        f"and reference / JAX"
    )
    header = f"{'stage':<20}{'reference':>10}"
    for name in profiles:
        header += f"{name:>12}{'x':>7}"
    print(header)
    rows = [*STAGES, "total", "batch"]
    labels = {"total": "total (one jit)", "batch": f"batch B={args.batch}"}
    for row in rows:
        r = ref["total" if row == "batch" else row]
        line = f"{labels.get(row, row):<20}{r:>10.3f}"
        for stats, batch_time in results.values():
            j = batch_time if row == "batch" else stats[row]
            line += f"{j:>12.3f}{r / j:>7.1f}"
        print(line)
    line = f"{'nodes per tree':<20}{ref['nodes']:>10.1f}"
    for stats, _ in results.values():
        line += f"{stats['nodes']:>12.1f}{'':>7}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[448, 840])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--profile", action="append", help=f"JAX config name:field=value,... (default {PROFILES})"
    )
    parser.add_argument(
        "--stage-b-solver",
        choices=("eigh", "lanczos"),
        default="eigh",
        help="PartitionConfig.stage_b_solver of every profile",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=PartitionConfig.node_chunk,
        help="PartitionConfig.node_chunk of every profile",
    )
    args = parser.parse_args()
    stage_b = {"stage_b_solver": args.stage_b_solver, "node_chunk": args.chunk}
    profiles = {
        name: dataclasses.replace(config, **stage_b)
        for name, config in (parse_variant(p) for p in (args.profile or PROFILES))
    }
    print(f"devices: {jax.devices()}, CPU affinity: {sorted(os.sched_getaffinity(0))}")
    for size in args.sizes:
        feats, source = load_features(size, args.images)
        print(f"features: {source}")
        run_size(feats, profiles, args)


if __name__ == "__main__":
    main()
