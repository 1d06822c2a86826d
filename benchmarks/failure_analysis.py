"""Where the default trees lose BSDS500 covering: per-image scores, oracle bounds, pictures.

Every image of a split runs through the default features and partition (PRNG key `--key`,
cached default-backbone features of `bsds_data.py`, batches of 8) and the default refinement, and
its nodes are scored as `hiseg evaluate` scores BSDS500 (Best: area-weighted covering of
each human segment by its best node, mean over annotators). Beside Best, three oracle
coverings split the loss by stage. Each takes a partition of the image into candidate pieces,
gives every piece to the human segment it overlaps most, and scores the unions that result
(a near upper bound of any grouping of those pieces):

- grid:   every patch of the grid is a piece (the loss of patch quantisation);
- parts:  stage A's P parts (the loss of stage A: what any stage B could reach);
- leaves: the tree's refined leaves (the loss of stage B's stopping: what any grouping of
          these leaves could reach).

Best below "leaves" is grouping (the tree's nodes are unions of its leaves, but not the
right unions); "leaves" below "parts" is stage B stopping too early or cutting across
segments; "parts" below "grid" is stage A. The script writes `<out>/failures.md` (means,
correlations, the worst images), `<out>/scatter.png` (per-image Best against the leaves
oracle and the number of human segments) and `<out>/worst.jpg` (the worst images: image,
one annotator's segments, the tree level of the image's OIS, the refined leaves).

    .venv/bin/python benchmarks/failure_analysis.py --split val --images 100 --out docs/failures
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bsds_data  # noqa: E402

from hiseg_jax.crf.guided import GuidedConfig, guided_level_labels  # noqa: E402
from hiseg_jax.evaluation import scoring as eval_scoring  # noqa: E402
from hiseg_jax.features import (  # noqa: E402
    DEFAULT_FEATURES,
    DEFAULT_SIZE,
)
from hiseg_jax.pictures import region_colors, render_level  # noqa: E402
from hiseg_jax.spectral.config import PartitionConfig  # noqa: E402
from hiseg_jax.spectral.partition import partition  # noqa: E402
from hiseg_jax.tree import upsample_labels  # noqa: E402

BATCH = 8


def covering_by_nodes(gt: np.ndarray, node_maps: np.ndarray) -> float:
    """Area-weighted covering of the segments of `gt` int [H, W] (ids >= 0; < 0 ignored) by
    the regions of any of the maps `node_maps` int [K, H, W] (a region = (map, id))."""
    keep = gt >= 0
    seg = gt[keep]
    sizes = np.bincount(seg)
    best = np.zeros(sizes.size)
    for labels in node_maps:
        region = np.unique(labels[keep], return_inverse=True)[1]
        count = int(region.max()) + 1
        inter = np.bincount(seg * count + region, minlength=sizes.size * count)
        inter = inter.reshape(sizes.size, count)
        union = sizes[:, None] + np.bincount(region, minlength=count)[None, :] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        best = np.maximum(best, iou.max(axis=1))
    return float((sizes * best).sum() / sizes.sum())


def majority_partition(gt: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """int [H, W]: every piece of `pieces` int [H, W] relabelled as the segment of `gt` it
    overlaps most (ignored pixels of gt do not vote)."""
    keep = gt >= 0
    piece = np.unique(pieces, return_inverse=True)[1].reshape(pieces.shape)
    count, segs = int(piece.max()) + 1, int(gt.max()) + 1
    votes = np.bincount(piece[keep] * segs + gt[keep], minlength=count * segs)
    return votes.reshape(count, segs).argmax(axis=1)[piece]


def image_record(
    gts: np.ndarray, levels: np.ndarray, pieces: dict[str, np.ndarray]
) -> dict[str, float]:
    """Best of the tree `levels` int [L + 1, H, W] and the oracle covering of each piece map,
    means over the annotators `gts` int [A, H, W] (ids from 0). As `hiseg evaluate`, Best
    leaves the root out (level 0) unless it is the only node (then level 1 is the root)."""
    record = dict(best=np.mean([covering_by_nodes(g, levels[1:]) for g in gts]))
    for name, map_ in pieces.items():
        record[f"{name}_oracle"] = np.mean(
            [covering_by_nodes(g, majority_partition(g, map_)[None]) for g in gts]
        )
    record["segments"] = float(np.mean([len(np.unique(g[g >= 0])) for g in gts]))
    record["n_leaves"] = float(len(np.unique(levels[-1])))
    return record


def analyse(split: str, count: int, key: int) -> tuple[list[dict], dict]:
    """Per-image records and, for the pictures, each image's arrays."""
    config, refine = PartitionConfig(), GuidedConfig()
    ids, feats = bsds_data.spec_features(split, count, DEFAULT_SIZE, DEFAULT_FEATURES)
    segs = bsds_data.segmentations(split, ids)
    images = bsds_data.load_images(split, ids)
    records, arrays = [], {}
    t0 = time.perf_counter()
    for start in range(0, len(ids), BATCH):
        chunk = feats[start : start + BATCH]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], BATCH - len(chunk), 0)])
        tree = jax.tree.map(np.asarray, partition(padded, config, jax.random.key(key)))
        pred, _ = eval_scoring.compact_tree(tree)
        for b in range(len(chunk)):
            i = start + b
            image, gts = images[i], np.asarray(segs[i], np.int32) - 1
            hw = image.shape[:2]
            levels = guided_level_labels(image, chunk[b], pred.level_labels[b], refine)
            grid = np.arange(np.prod(tree.grid)).reshape(tree.grid)
            parts = tree.parts[b].reshape(tree.grid)
            pieces = {
                "grid": np.asarray(upsample_labels(grid, hw)),
                "parts": np.asarray(upsample_labels(parts, hw)),
                "leaves": levels[-1],
            }
            record = dict(name=ids[i]) | image_record(gts, levels, pieces)
            per_level = [np.mean([covering_by_nodes(g, lv[None]) for g in gts]) for lv in levels]
            record["ois_level"] = int(np.argmax(per_level))
            records.append(record)
            arrays[ids[i]] = (image, gts, levels)
        print(
            f"{start + len(chunk)}/{len(ids)} images ({time.perf_counter() - t0:.0f} s)", flush=True
        )
    return records, arrays


def table(records: list[dict], worst: int) -> str:
    """Markdown: means of every column, correlations of Best, and the worst images."""
    column = lambda k: np.array([r[k] for r in records])
    best = column("best")
    lines = [
        "| Best | leaves oracle | parts oracle | grid oracle | human segments | leaves |",
        "|---|---|---|---|---|---|",
        "| "
        + " | ".join(
            f"{column(k).mean():.3f}"
            for k in ("best", "leaves_oracle", "parts_oracle", "grid_oracle")
        )
        + f" | {column('segments').mean():.1f} | {column('n_leaves').mean():.1f} |",
        "",
        "Per image, Pearson correlation of Best with: "
        + ", ".join(
            f"{label} {np.corrcoef(best, column(k))[0, 1]:+.2f}"
            for k, label in (
                ("leaves_oracle", "the leaves oracle"),
                ("parts_oracle", "the parts oracle"),
                ("segments", "the number of human segments"),
                ("n_leaves", "the number of leaves"),
            )
        )
        + f". Best quartiles {np.percentile(best, 25):.3f} / {np.median(best):.3f} / "
        f"{np.percentile(best, 75):.3f}, min {best.min():.3f}, max {best.max():.3f}.",
        "",
        "| image | Best | leaves oracle | parts oracle | grid oracle | human segments | leaves |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["best"])[:worst]:
        lines.append(
            f"| {r['name']} | {r['best']:.3f} | {r['leaves_oracle']:.3f} | "
            f"{r['parts_oracle']:.3f} | {r['grid_oracle']:.3f} | {r['segments']:.1f} | "
            f"{r['n_leaves']:.0f} |"
        )
    return "\n".join(lines)


def scatter(records: list[dict], path: Path) -> None:
    """Per-image Best against the leaves oracle and against the number of human segments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = np.array([r["best"] for r in records])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for ax, key, label in (
        (axes[0], "leaves_oracle", "leaves oracle (best grouping of the tree's leaves)"),
        (axes[1], "segments", "human segments per annotator (mean)"),
    ):
        ax.scatter([r[key] for r in records], best, s=12, alpha=0.7)
        ax.set_xlabel(label)
        ax.set_ylabel("Best (the tree's nodes)")
        ax.grid(alpha=0.3)
    axes[0].plot([0, 1], [0, 1], color="gray", lw=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def worst_picture(records: list[dict], arrays: dict, count: int, path: Path) -> None:
    """Rows of the `count` lowest-Best images: image, the annotator with the median segment
    count, the tree level of the image's OIS, the refined leaves; all 160 px high."""
    height, rows = 160, []
    for r in sorted(records, key=lambda r: r["best"])[:count]:
        image, gts, levels = arrays[r["name"]]
        segments = [len(np.unique(g[g >= 0])) for g in gts]
        gt = gts[int(np.argsort(segments)[len(segments) // 2])]
        panels = [
            (image, f"{r['name']}  Best {r['best']:.2f}"),
            (
                render_level(image, np.maximum(gt, 0), colors=region_colors(int(gt.max()) + 1)),
                f"human: {len(np.unique(gt))} segments",
            ),
            (
                render_level(image, levels[r["ois_level"]]),
                f"level {r['ois_level']}: {len(np.unique(levels[r['ois_level']]))} regions",
            ),
            (
                render_level(image, levels[-1]),
                f"leaves: {r['n_leaves']:.0f} (oracle {r['leaves_oracle']:.2f})",
            ),
        ]
        tiles = []
        for picture, title in panels:
            scale = height / picture.shape[0]
            size = (round(picture.shape[1] * scale), height)
            tile = Image.fromarray(picture).resize(size, Image.Resampling.LANCZOS)
            canvas = Image.new("RGB", (size[0] + 4, height + 16), "white")
            canvas.paste(tile, (2, 16))
            ImageDraw.Draw(canvas).text((4, 2), title, fill="black")
            tiles.append(np.asarray(canvas))
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--key", type=int, default=0)
    parser.add_argument("--worst", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    records, arrays = analyse(args.split, args.images, args.key)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(records, args.worst)
    print(text)
    (args.out / "failures.md").write_text(text + "\n")
    scatter(records, args.out / "scatter.png")
    worst_picture(records, arrays, args.worst, args.out / "worst.jpg")


if __name__ == "__main__":
    main()
