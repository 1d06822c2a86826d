"""Time the NumPy reference partitioner per stage on planted hierarchies.

Usage: .venv/bin/python benchmarks/reference_timing.py [--grids 32 60] [--parts 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.spectral.reference import (
    RefResult,
    flatten_features,
    part_graph,
    reference_graph,
    reference_stage_b,
    stage_a_embedding,
    stage_a_parts,
)
from hiseg_jax.spectral.synthetic import planted_hierarchy


def time_stages(side: int, n_parts: int, seed: int) -> dict[str, float]:
    """Seconds per stage of the reference pipeline on a side x side planted grid."""
    # 12 leaves x 16 private directions + 21 group directions >= n_parts informative
    # eigenvectors, so stage A is not fed the degenerate bulk (docs/method.md section 8).
    feats, groups = planted_hierarchy(seed, grid=(side, side), dim=256, leaf_dims=16)
    cfg = PartitionConfig(n_parts=n_parts)
    x, _ = flatten_features(feats)
    t = [time.perf_counter()]
    w = reference_graph(x, cfg)
    t.append(time.perf_counter())
    emb = stage_a_embedding(w, cfg.n_parts, cfg.eps)
    t.append(time.perf_counter())
    parts = stage_a_parts(emb, cfg, seed)
    t.append(time.perf_counter())
    nodes = reference_stage_b(part_graph(w, parts, int(parts.max()) + 1), cfg, seed)
    t.append(time.perf_counter())
    names = ("graph", "eigh", "kmeans", "stage_b")
    out = {name: b - a for name, a, b in zip(names, t[:-1], t[1:], strict=True)}
    out["total"] = t[-1] - t[0]
    masks = RefResult(parts, nodes, None).node_masks()
    out["nodes"] = len(nodes)
    out["min_iou"] = min(((masks & g).sum(1) / (masks | g).sum(1)).max() for _, g in groups)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 60])
    parser.add_argument("--parts", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with threadpool_limits(args.threads):
        for side in args.grids:
            runs = [time_stages(side, args.parts, seed) for seed in range(args.repeats)]
            best = {k: float(np.min([r[k] for r in runs])) for k in runs[0]}
            times = ", ".join(
                f"{k} {best[k]:.2f}s" for k in ("graph", "eigh", "kmeans", "stage_b", "total")
            )
            print(
                f"{side}x{side} N={side * side} P={args.parts}: {times} (best of "
                f"{args.repeats}); nodes {[r['nodes'] for r in runs]}, planted groups' "
                f"min IoU {[round(float(r['min_iou']), 3) for r in runs]}"
            )


if __name__ == "__main__":
    main()
