"""Metrics throughput: the jitted JAX path vs the NumPy reference, same inputs, one process.

Synthetic but shaped like a real run: trees of about 400 nodes over 10 levels, built on a
60x60 patch grid by recursive Voronoi splits and upsampled to 840x840 pixels (DINOv2 /14 at
840 px); COCO-Stuff ground truth (its 205-node label space: 171 classes, 27
super-categories) as Voronoi regions of random classes with some ignored pixels; BSDS-style
ground truth with 5 annotators of ~30 segments each. Rows:
- `jax evaluate_batch`: host encode + validation (with / without the per-level consistency
  check) + the jitted program, per image of a batch;
- `jax jitted core`: the compiled program alone on inputs already on the device (deepest
  level only, no level check);
- `numpy reference`: `hiseg_jax.metrics.reference`, one image at a time.
Times are medians over `--repeats` after one warm-up (compilation) call.

    .venv/bin/python benchmarks/metrics.py --batch 8 --repeats 3 --ref-images 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.hierarchies import label_space, load_hierarchy
from hiseg_jax.metrics import TreePrediction, evaluate_batch, evaluate_bsds_batch
from hiseg_jax.metrics.reference import reference_bsds_image, reference_image_scores
from hiseg_jax.metrics.scores import bsds_scores, region_scores

GRID, SCALE, LEVELS, NODES, PER_LEVEL = 60, 14, 10, 401, 60


def voronoi(rng: np.random.Generator, mask: np.ndarray, k: int) -> np.ndarray:
    """Split the True cells of a grid mask into k Voronoi cells; returns labels in [0, k)."""
    cells = np.argwhere(mask)
    seeds = cells[rng.choice(len(cells), size=k, replace=False)]
    dist = ((cells[:, None, :] - seeds[None, :, :]) ** 2).sum(-1)
    out = np.full(mask.shape, -1)
    out[mask] = np.argmin(dist, axis=1)
    return out


def synthetic_tree(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A tree of NODES slots over LEVELS levels: at each level nodes of the previous level
    split into 2-3 Voronoi cells, at most PER_LEVEL new nodes per level; built on the patch
    grid, then upsampled to pixels."""
    labels = np.zeros((LEVELS + 1, GRID, GRID), np.int32)
    valid = np.zeros(NODES, bool)
    depth = np.zeros(NODES, np.int32)
    parent = np.full(NODES, -1, np.int32)
    valid[0], next_id, frontier = True, 1, [0]
    for level in range(1, LEVELS + 1):
        labels[level] = labels[level - 1]
        grown: list[int] = []
        for node in rng.permutation(frontier):
            mask = labels[level] == node
            k = int(rng.integers(2, 4))
            if len(grown) + k > PER_LEVEL or next_id + k > NODES or mask.sum() < 2 * k:
                continue
            children = np.arange(next_id, next_id + k)
            next_id += k
            labels[level][mask] = children[voronoi(rng, mask, k)[mask]]
            valid[children], depth[children], parent[children] = True, level, node
            grown += children.tolist()
        frontier = grown
    pixels = labels.repeat(SCALE, 1).repeat(SCALE, 2)
    return pixels, valid, depth, parent


def synthetic_gt(
    rng: np.random.Generator, values: np.ndarray, regions: int, ignore_value: int
) -> np.ndarray:
    """Voronoi regions of random raw values at pixel resolution, ~2% ignored pixels."""
    cells = voronoi(rng, np.ones((GRID, GRID), bool), regions)
    raw = rng.choice(values, size=regions)[cells].repeat(SCALE, 0).repeat(SCALE, 1)
    return np.where(rng.random(raw.shape) < 0.02, ignore_value, raw)


def timed(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref-images", type=int, default=2, help="images for the reference")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    space = label_space(load_hierarchy("cocostuff"))
    trees = [synthetic_tree(rng) for _ in range(args.batch)]
    pred = TreePrediction(*(np.stack(x) for x in zip(*trees, strict=True)))
    raw_gt = np.stack(
        [synthetic_gt(rng, space.keys[space.targets >= 0], 15, 255) for _ in range(args.batch)]
    )
    segs = np.stack(
        [[synthetic_gt(rng, np.arange(1, 31), 30, -1) for _ in range(5)] for _ in range(args.batch)]
    ).astype(np.int32)
    gt = space.encode(raw_gt)
    nodes = pred.node_valid.sum(1)
    print(
        f"{jax.devices()[0].platform} ({os.cpu_count()} cores), batch {args.batch} of "
        f"{GRID * SCALE}x{GRID * SCALE}, trees of {nodes.min()}-{nodes.max()} nodes over "
        f"{LEVELS} levels; COCO-Stuff space of {space.num_nodes} GT nodes"
    )

    device_pred = TreePrediction(
        jnp.asarray(pred.level_labels[:, -1:]), *(jnp.asarray(x) for x in pred[1:])
    )
    anc, sets, thr = jnp.asarray(space.ancestor), jnp.asarray(space.region_sets), jnp.float32(0)
    device_gt, device_segs = jnp.asarray(gt), jnp.asarray(segs)
    rows = {
        "semantic+covering: jax evaluate_batch (level check on)": timed(
            lambda: evaluate_batch(pred, raw_gt, space), args.repeats
        )
        / args.batch,
        "semantic+covering: jax evaluate_batch (level check off)": timed(
            lambda: evaluate_batch(pred, raw_gt, space, check_levels=False), args.repeats
        )
        / args.batch,
        "semantic+covering: jax jitted core": timed(
            lambda: region_scores(
                device_pred, device_gt, anc, sets, thr, num_labels=space.num_nodes, steps=LEVELS
            ),
            args.repeats,
        )
        / args.batch,
        "semantic+covering: numpy reference": timed(
            lambda: [
                reference_image_scores(*t, gt[b], space.parent, space.region_sets)
                for b, t in enumerate(trees[: args.ref_images])
            ],
            1,
            warm_up=False,
        )
        / args.ref_images,
        "bsds (5 annotators): jax evaluate_bsds_batch (level check on)": timed(
            lambda: evaluate_bsds_batch(pred, segs, 31), args.repeats
        )
        / args.batch,
        "bsds (5 annotators): jax jitted core": timed(
            lambda: bsds_scores(device_pred, device_segs, num_regions=31, steps=LEVELS),
            args.repeats,
        )
        / args.batch,
        "bsds (5 annotators): numpy reference": timed(
            lambda: [
                reference_bsds_image(*t, segs[b], 31)
                for b, t in enumerate(trees[: args.ref_images])
            ],
            1,
            warm_up=False,
        )
        / args.ref_images,
    }
    width = max(map(len, rows))
    print(f"{'path':<{width}} | {'ms/image':>9} | {'images/s':>8}")
    for name, seconds in rows.items():
        print(f"{name:<{width}} | {1e3 * seconds:9.1f} | {1 / seconds:8.2f}")


if __name__ == "__main__":
    main()
