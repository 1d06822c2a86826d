"""Tree quality of the JAX partitioner vs the NumPy reference on BSDS500 val (issue 3).

Features: the default backbone at 448 px (N = 1024 patches). The reference runs with three
seeds (0, 1, 2): their spread (max - min of the dataset means) is what stage-A k-means seeds
alone change. The JAX partitioner passes when its area-weighted covering (Best) and its
NMCovering are each >= the reference's mean minus that spread. Scores are at the patch grid
(GT nearest-sampled at patch centres), with the project's metrics (`eval_scoring`).

    .venv/bin/python benchmarks/partition_quality.py [--images 100] [--cache feats.npz]
        [--variant NAME:FIELD=VALUE,...]   (extra JAX configs, e.g. fast:kmeans_restarts=1)

`quality_table` is also used by tests/test_partition_realdata.py on a few images.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from hiseg_jax import eval_scoring, reference
from hiseg_jax.config import PartitionConfig
from hiseg_jax.metrics import TreePrediction
from hiseg_jax.partition import partition

SHARED = Path(
    os.environ.get("HISEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
SIZE = 448
SEEDS = (0, 1, 2)


def bsds_val(shared: Path, count: int) -> tuple[list[str], list[np.ndarray]]:
    """Ids and human segmentations int32 [A, H, W] (ids from 1) of the first val images."""
    from hiseg_jax.datasets.bsds500 import read_bsds_mat

    root = shared / "bsds500"
    ids = sorted(p.stem for p in (root / "images" / "val").glob("*.jpg"))[:count]
    return ids, [read_bsds_mat(root / "groundTruth" / "val" / f"{i}.mat") for i in ids]


def bsds_features(shared: Path, ids: Sequence[str], cache: Path | None) -> np.ndarray:
    """float32 [B, 32, 32, E] default-backbone features of the val images (cached if asked)."""
    if cache is not None and cache.is_file():
        data = np.load(cache)
        if list(data["ids"][: len(ids)]) == list(ids):
            return data["x"][: len(ids)]
    from hiseg_jax import features, images

    model = features.load_default_backbone()
    folder = shared / "bsds500" / "images" / "val"
    out = []
    for start in range(0, len(ids), 4):
        imgs = [images.load_image(folder / f"{i}.jpg") for i in ids[start : start + 4]]
        out.append(
            np.asarray(
                features.extract_features(model, features.preprocess(imgs, SIZE, model.config))
            )
        )
    x = np.concatenate(out)
    if cache is not None:
        np.savez(cache, x=x, ids=np.asarray(ids))
    return x


def reference_results(feats: np.ndarray, config: PartitionConfig, seed: int) -> list:
    """`reference.reference_partition` of every image of features [B, h, w, E]."""
    return [reference.reference_partition(f, config, seed) for f in feats]


def reference_prediction(
    results: Sequence, config: PartitionConfig, grid: tuple[int, int]
) -> TreePrediction:
    """Reference trees in the Metrics contract (node ids = breadth-first order)."""
    slots = 1 + config.levels * config.n_parts
    labels = np.zeros((len(results), config.levels + 1, *grid), np.int32)
    valid = np.zeros((len(results), slots), bool)
    depth = np.zeros((len(results), slots), np.int32)
    parent = np.full((len(results), slots), -1, np.int32)
    for b, res in enumerate(results):
        labels[b] = res.level_labels(config.levels).reshape(config.levels + 1, *grid)
        for m, node in enumerate(res.nodes):
            valid[b, m], depth[b, m], parent[b, m] = True, node.depth, node.parent
    return TreePrediction(labels, valid, depth, parent)


def jax_prediction(feats: np.ndarray, config: PartitionConfig, batch: int = 8) -> TreePrediction:
    """JAX trees of features [B, h, w, E] in the Metrics contract (fixed-size batches)."""
    batch = min(batch, len(feats))
    parts = []
    for start in range(0, len(feats), batch):
        chunk = feats[start : start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        tree = jax.tree.map(np.asarray, partition(padded, config, jax.random.key(0)))
        count = len(chunk)
        parts.append(
            (tree.labels[:count], tree.valid[:count], tree.depth[:count], tree.parent[:count])
        )
    labels, valid, depth, parent = (np.concatenate(a) for a in zip(*parts, strict=True))
    h, w = feats.shape[1:3]
    return TreePrediction(labels.reshape(*labels.shape[:2], h, w), valid, depth, parent)


def scores(
    pred: TreePrediction, segmentations: Sequence[np.ndarray], batch: int = 8
) -> dict[str, float]:
    """Dataset means: Best (area-weighted covering), NMCovering and tree node count."""
    grid = pred.level_labels.shape[2:]
    targets = [eval_scoring.bsds_targets(s, grid) for s in segmentations]
    annotators = max(eval_scoring.BSDS_ANNOTATORS, *(t.shape[0] for t in targets))
    pad = [
        np.concatenate([t, np.full((annotators - len(t), *grid), -1, np.int32)]) for t in targets
    ]
    records = []
    for start in range(0, len(pad), batch):
        part = TreePrediction(*(a[start : start + batch] for a in pred))
        segs = np.stack(pad[start : start + batch])
        records += eval_scoring.score_bsds(part, segs, len(segs))
    nm = eval_scoring.bsds_nm_covering(records)
    return dict(
        best=float(np.mean([r["best"] for r in records])),
        nm=nm["nm_covering"],
        nodes=nm["mean_nodes"],
    )


def quality_table(
    feats: np.ndarray,
    segmentations: Sequence[np.ndarray],
    config: PartitionConfig,
    variants: dict[str, PartitionConfig] | None = None,
    log: Callable[[str], None] = print,
    references: dict[int, list] | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of the reference (one row per seed) and of JAX (one row per config).

    `references` may hold already computed `reference_results` per seed.
    """
    grid = feats.shape[1:3]
    rows = {}
    for seed in SEEDS:
        start = time.perf_counter()
        results = (references or {}).get(seed) or reference_results(feats, config, seed)
        rows[f"reference seed {seed}"] = scores(
            reference_prediction(results, config, grid), segmentations
        )
        log(f"reference seed {seed}: {time.perf_counter() - start:.0f} s")
    for name, cfg in {"jax": config, **(variants or {})}.items():
        start = time.perf_counter()
        rows[name] = scores(jax_prediction(feats, cfg), segmentations)
        log(f"{name}: {time.perf_counter() - start:.0f} s")
    return rows


def verdict(rows: dict[str, dict[str, float]], name: str) -> dict[str, tuple[float, bool]]:
    """Per metric: (JAX minus the bar, passed) with bar = reference mean - seed spread."""
    ref = [rows[f"reference seed {s}"] for s in SEEDS]
    out = {}
    for metric in ("best", "nm"):
        values = [r[metric] for r in ref]
        bar = float(np.mean(values)) - (max(values) - min(values))
        out[metric] = (rows[name][metric] - bar, rows[name][metric] >= bar)
    return out


def parse_variant(text: str) -> tuple[str, PartitionConfig]:
    """'name:field=value,...' -> (name, PartitionConfig with those fields)."""
    name, _, assignments = text.partition(":")
    fields = {f.name: f.type for f in dataclasses.fields(PartitionConfig)}
    kwargs = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown PartitionConfig field {key!r}")
        default = getattr(PartitionConfig(), key)
        kwargs[key] = type(default)(value)
    return name, PartitionConfig(**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=None, help="features .npz to reuse")
    parser.add_argument("--variant", action="append", default=[], help="name:field=value,...")
    args = parser.parse_args()
    ids, segmentations = bsds_val(SHARED, args.images)
    feats = bsds_features(SHARED, ids, args.cache)
    config = PartitionConfig()
    variants = dict(parse_variant(v) for v in args.variant)
    rows = quality_table(feats, segmentations, config, variants)
    print(
        f"\nBSDS500 val, {len(ids)} images, {SIZE} px (N = {feats.shape[1] * feats.shape[2]}), "
        f"P = {config.n_parts}, patch-grid scores"
    )
    print(f"{'method':<22}{'Best':>8}{'NMCov':>8}{'nodes':>8}")
    for name, r in rows.items():
        print(f"{name:<22}{r['best']:>8.4f}{r['nm']:>8.4f}{r['nodes']:>8.1f}")
    for name in ("jax", *variants):
        v = verdict(rows, name)
        print(
            f"{name}: "
            + ", ".join(
                f"{m} {d:+.4f} vs bar ({'pass' if ok else 'FAIL'})" for m, (d, ok) in v.items()
            )
        )


if __name__ == "__main__":
    main()
