"""Effect of the bfloat16 backbone on the trees, measured on real images (BSDS500 val).

The same images go through the compiled pipeline with the backbone in float32 and in
bfloat16 (params and activations; features cast back to float32 before the graph), with
BSDS covering computed inside the step (`engine.metric.bsds_metric`), and once more in float32
with another PRNG key: the control, showing how much the trees move for reasons that
have nothing to do with precision (k-means seeding). Reported per run: BSDS covering
(Best: every tree node; ODS: best single level over the dataset; OIS: best level per
image), NMCovering against each annotator (mean over annotators, then images; flat GT,
every node a candidate), nodes per tree, stream time; and against the float32 run: the
paired per-image difference of Best and NMCovering (mean +- standard error), relative
feature error, adjusted Rand index of the stage-A parts and of the leaves.

    .venv/bin/python benchmarks/bf16_effect.py --images 16 --size 448 --batch 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from sklearn.metrics import adjusted_rand_score

from hiseg_jax.datasets.bsds500 import read_bsds_mat
from hiseg_jax.engine.batches import Item
from hiseg_jax.engine.metric import bsds_metric
from hiseg_jax.engine.step import make_step
from hiseg_jax.engine.stream import stream
from hiseg_jax.hierarchies.labelspace import flat_label_space
from hiseg_jax.images import load_image
from hiseg_jax.metrics import evaluate_batch
from hiseg_jax.metrics.regions import TreePrediction
from hiseg_jax.paths import default_checkpoint_path
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.tree import patch_level_labels, upsample_labels
from hiseg_jax.weights.checkpoint import load_backbone

BSDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds500"
RESULTS = Path(__file__).resolve().parent / "results"
NUM_REGIONS = 256  # BSDS val has at most 208 segments per annotation


def items(count: int) -> list[Item]:
    paths = sorted((BSDS / "images" / "val").glob("*.jpg"))[:count]
    if not paths:
        raise SystemExit(f"no BSDS500 val images under {BSDS}")
    return [
        Item(p.stem, load_image(p), read_bsds_mat(BSDS / "groundTruth" / "val" / f"{p.stem}.mat"))
        for p in paths
    ]


def nm_covering(tree: Any, index: int, segs: np.ndarray, space: Any) -> float:
    """NMCovering of one tree against each annotator (flat GT), mean over annotators."""
    pixels = np.asarray(upsample_labels(patch_level_labels(tree[index]), segs.shape[1:]))
    pred = TreePrediction(
        pixels,
        tree.valid[index : index + 1],
        tree.depth[index : index + 1],
        tree.parent[index : index + 1],
    )
    values = [
        float(evaluate_batch(pred, seg[None] - 1, space, check_levels=False).nm_covering[0, 0])
        for seg in segs
    ]
    return float(np.mean(values))


def run(
    dtype: str, seed: int, data: list[Item], size: int, batch: int, config: PartitionConfig
) -> dict:
    model = load_backbone(default_checkpoint_path())
    step = make_step(model, size, config, dtype=dtype, metric=bsds_metric(NUM_REGIONS))
    space = flat_label_space(NUM_REGIONS)
    by_name = {item.name: item for item in data}
    out: dict[str, dict] = {}
    start = time.perf_counter()
    first = None
    key = jax.random.key(seed)
    for batch_result in stream(step, data, batch_size=batch, key=key, with_features=True):
        first = first or time.perf_counter()
        result = batch_result.output
        for b, name in enumerate(batch_result.names):
            out[name] = {
                "best": float(result.scores.best[b]),
                "levels": np.asarray(result.scores.levels[b]).tolist(),
                "nodes": int(result.scores.n_nodes[b]),
                "nm_covering": nm_covering(result.tree, b, by_name[name].target, space),
                "parts": np.asarray(result.tree.parts[b]),
                "leaves": np.asarray(result.tree.labels[b, -1]),
                "features": np.asarray(result.features[b]),
            }
    seconds = time.perf_counter() - start
    return {"images": out, "seconds": seconds, "seconds_after_first": time.perf_counter() - first}


def summary(images: dict[str, dict]) -> dict[str, float]:
    levels = np.asarray([v["levels"] for v in images.values()])
    return {
        "best": float(np.mean([v["best"] for v in images.values()])),
        "ods": float(levels.mean(axis=0).max()),
        "ois": float(levels.max(axis=1).mean()),
        "nm_covering": float(np.mean([v["nm_covering"] for v in images.values()])),
        "nodes": float(np.mean([v["nodes"] for v in images.values()])),
    }


def compare(base: dict[str, dict], other: dict[str, dict]) -> dict[str, float]:
    """`other` vs `base` (same images): paired differences, feature error, ARIs."""
    names = sorted(base)
    out: dict[str, float] = {}
    for metric in ("best", "nm_covering"):
        diff = np.asarray([other[n][metric] - base[n][metric] for n in names])
        out[f"{metric}_diff"] = float(diff.mean())
        out[f"{metric}_diff_se"] = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    out["feature_rel_error"] = float(
        np.mean(
            [
                np.linalg.norm(other[n]["features"] - base[n]["features"])
                / np.linalg.norm(base[n]["features"])
                for n in names
            ]
        )
    )
    for field in ("parts", "leaves"):
        out[f"{field}_ari"] = float(
            np.mean([adjusted_rand_score(base[n][field], other[n][field]) for n in names])
        )
    out["identical_trees"] = int(
        sum(
            np.array_equal(base[n]["leaves"], other[n]["leaves"])
            and np.array_equal(base[n]["parts"], other[n]["parts"])
            for n in names
        )
    )
    return out


RUNS = {
    "float32": ("float32", 0),
    "bfloat16": ("bfloat16", 0),
    "float32, key 1 (control)": ("float32", 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    data = items(args.images)
    config = PartitionConfig()
    runs = {
        name: run(dtype, seed, data, args.size, args.batch, config)
        for name, (dtype, seed) in RUNS.items()
    }
    base = runs["float32"]["images"]
    table = {name: summary(r["images"]) for name, r in runs.items()}
    diffs = {name: compare(base, r["images"]) for name, r in runs.items() if name != "float32"}
    print(
        f"BSDS500 val, first {len(base)} images, {args.size} px, batch {args.batch}, "
        f"P = {config.n_parts}, levels = {config.levels}\n"
    )
    print(
        "| run | BSDS Best | ODS | OIS | NMCovering | nodes/img | stream s (total, "
        "after 1st batch) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in table.items():
        r = runs[name]
        print(
            f"| {name} | {row['best']:.4f} | {row['ods']:.4f} | {row['ois']:.4f} | "
            f"{row['nm_covering']:.4f} | {row['nodes']:.1f} | {r['seconds']:.0f}, "
            f"{r['seconds_after_first']:.0f} |"
        )
    print(
        "\n| vs float32 | Best diff | NMCovering diff | feature rel. error | ARI parts | "
        "ARI leaves | identical trees |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, d in diffs.items():
        print(
            f"| {name} | {d['best_diff']:+.4f} +- {d['best_diff_se']:.4f} | "
            f"{d['nm_covering_diff']:+.4f} +- {d['nm_covering_diff_se']:.4f} | "
            f"{d['feature_rel_error']:.4f} | {d['parts_ari']:.3f} | {d['leaves_ari']:.3f} | "
            f"{d['identical_trees']}/{len(base)} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bf16_effect.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "summary": table,
                "compare": diffs,
                "per_image": {
                    name: {
                        n: {
                            k: v
                            for k, v in r["images"][n].items()
                            if k in ("best", "levels", "nodes", "nm_covering")
                        }
                        for n in base
                    }
                    for name, r in runs.items()
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
