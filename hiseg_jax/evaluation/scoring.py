"""Scoring a batch of predicted trees for `hiseg evaluate`, as one JSON record per image, and
the dataset accumulators rebuilt from those records.

Shapes are bucketed so that a whole evaluation compiles the metrics a handful of times:
- node slots: a tree uses a few dozen of its M = 1 + L * P slots, so its valid nodes are
  renumbered 0..n-1 in slot order (the root stays 0; the metrics' tie-break by lowest id
  is unchanged) into `node_bucket(n)` slots; records name nodes by their original slot;
- pixels: a batch's maps are padded to multiples of `PAD` with -1, which the metrics treat
  as prediction padding over ignored ground truth;
- ground truth: class-labelled maps are encoded once with the dataset's `LabelSpace` into
  node indices (-1 ignored); BSDS annotators (ids from 1) become ids from 0, and the
  annotator axis is padded with all -1 annotators, which the metrics do not count.
Every sum in float32 runs over an axis of fixed length (GT nodes, BSDS_REGIONS,
BSDS_ANNOTATORS) or over integers (pixel counts), so an image's scores do not depend on
which images share its batch: a resumed run reproduces an uninterrupted one bit for bit.

A record holds every number the accumulators need (floats as JSON doubles: exact for
float32), so totals rebuilt from records equal the totals of an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from hiseg_jax.hierarchies import LabelSpace, flat_label_space, index_label_space
from hiseg_jax.metrics import (
    Accumulator,
    BatchScores,
    BSDSScores,
    Matches,
    TreePrediction,
    evaluate_batch,
    evaluate_bsds_batch,
)
from hiseg_jax.metrics.regions import leaf_nodes
from hiseg_jax.tree import Tree, upsample_labels

PAD = 32  # pixel maps are padded to multiples of this
MIN_BUCKET = 32  # smallest node bucket
# BSDS segment ids and annotators are padded to at least these (BSDS500 train / val: at
# most 208 segments, 9 annotators), so that an image's float32 sums over them do not depend
# on the other images of its batch.
BSDS_REGIONS = 256
BSDS_ANNOTATORS = 12


def node_bucket(count: int) -> int:
    """The power of two >= count (at least MIN_BUCKET): a static size shared by many batches."""
    return max(MIN_BUCKET, 1 << max(count - 1, 0).bit_length())


def compact_tree(tree: Tree) -> tuple[TreePrediction, np.ndarray]:
    """A batched tree as a prediction over its patch grid with its valid nodes renumbered in
    slot order: (TreePrediction with level_labels int32 [B, L + 1, h, w] and node arrays
    [B, M'], original slot of each new id int32 [B, M'] (-1 for padding slots))."""
    valid = np.asarray(tree.valid)
    batch, slots = valid.shape
    count = valid.sum(axis=1)
    size = node_bucket(int(count.max()))
    order = np.argsort(~valid, axis=1, kind="stable")[:, :size]  # valid slots first, in order
    if size > slots:
        order = np.pad(order, ((0, 0), (0, size - slots)))
    keep = np.arange(size)[None, :] < count[:, None]
    slot_ids = np.where(keep, order, -1).astype(np.int32)
    image, new = np.nonzero(keep)
    lut = np.full((batch, slots + 1), -1, np.int32)  # old slot -> new id; column `slots`: -1
    lut[image, order[image, new]] = new
    renumber = lambda ids: np.take_along_axis(lut, np.where(ids < 0, slots, ids), axis=1)
    labels = np.asarray(tree.labels)
    new_labels = renumber(labels.reshape(batch, -1))
    parent = np.where(keep, renumber(np.take_along_axis(np.asarray(tree.parent), order, 1)), -1)
    depth = np.where(keep, np.take_along_axis(np.asarray(tree.depth), order, 1), 0)
    pred = TreePrediction(
        new_labels.reshape(labels.shape[:2] + tuple(tree.grid)),
        keep,
        depth.astype(np.int32),
        parent.astype(np.int32),
    )
    return pred, slot_ids


def padded_shape(shapes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (H, W) that holds every shape, rounded up to multiples of PAD."""
    return tuple(-(-max(s[i] for s in shapes) // PAD) * PAD for i in range(2))


def pad_maps(
    maps: Sequence[np.ndarray], hw: tuple[int, int], depth: int | None = None
) -> np.ndarray:
    """Stack int maps [..., H_i, W_i] into int32 [B, ..., *hw], padding with -1; `depth`
    also pads the first axis of 3-d maps (BSDS annotators) to that length."""
    lead = maps[0].shape[:-2] if depth is None else (depth,)
    out = np.full((len(maps), *lead, *hw), -1, np.int32)
    for b, m in enumerate(maps):
        out[(b, *(slice(0, s) for s in m.shape))] = m
    return out


def resample_targets(gt: np.ndarray, grid: tuple[int, int] | None) -> np.ndarray:
    """GT maps [..., H, W] nearest-sampled at the centres of a patch `grid` (patch
    resolution), or unchanged (`grid=None`: image resolution)."""
    return gt if grid is None else np.asarray(upsample_labels(gt, grid))


def region_targets(
    labels: np.ndarray, space: LabelSpace, grid: tuple[int, int] | None
) -> np.ndarray:
    """Raw class labels int [1, H, W] -> int32 [H', W'] GT node indices, -1 ignored."""
    return resample_targets(space.encode(labels[0]), grid)


def bsds_targets(labels: np.ndarray, grid: tuple[int, int] | None) -> np.ndarray:
    """BSDS annotators' segment ids (from 1) int [A, H, W] -> int32 [A, H', W'] ids from 0."""
    return resample_targets(np.asarray(labels, np.int32) - 1, grid)


def at_resolution(
    pred: TreePrediction,
    sizes: Sequence[tuple[int, int]] | None,
    refined: Sequence[np.ndarray] = (),
    patch_stride: tuple[int, int] = (1, 1),
) -> TreePrediction:
    """Patch-grid prediction, or (sizes given) at each image's size, padded with -1 to
    `padded_shape(sizes)`: the first images' maps are `refined` (int [L + 1, H_b, W_b] in
    the prediction's node ids, e.g. CRF-refined), the others nearest-upsampled
    (`tree.upsample_labels`, by patch centre for `patch_stride` = (patch, stride))."""
    if sizes is None:
        return pred
    hw = padded_shape(sizes)
    maps = [
        *refined,
        *(
            np.asarray(upsample_labels(pred.level_labels[b], s, patch_stride))
            for b, s in enumerate(sizes)
            if b >= len(refined)
        ),
    ]
    return pred._replace(level_labels=pad_maps(maps, hw))


def _tree_shape(pred: TreePrediction, b: int) -> dict[str, int]:
    """Leaves and depth of image b's tree (its candidate regions are `n_nodes`)."""
    leaves = leaf_nodes(pred.node_parent[b], pred.node_valid[b])
    return dict(leaves=int(leaves.sum()), depth=int(pred.node_depth[b][pred.node_valid[b]].max()))


def _floats(values: np.ndarray) -> list[float]:
    """float32 values as Python floats (exact), for JSON."""
    return [float(v) for v in values]


def score_regions(
    pred: TreePrediction, slot_ids: np.ndarray, gt: np.ndarray, space: LabelSpace, count: int
) -> list[dict[str, Any]]:
    """Records of the first `count` images: `pred` against encoded GT int32 [B, H, W]."""
    scoring = index_label_space(space.parent, space.region_sets, space.set_names, (-1,), space.name)
    s = jax.tree.map(np.asarray, evaluate_batch(pred, gt, scoring))
    m = s.matches
    records = []
    for b in range(count):
        present = np.flatnonzero(m.node[b] >= 0)
        records.append(
            _tree_shape(pred, b)
            | dict(
                n_nodes=int(s.n_nodes[b]),
                n_regions=s.n_regions[b].tolist(),
                nm_covering=_floats(s.nm_covering[b]),
                nh_covering=float(s.nh_covering[b]),
                gt=present.tolist(),
                match=slot_ids[b][m.node[b][present]].tolist(),
                iou=_floats(m.iou[b][present]),
                **{k: getattr(m, k)[b][present].tolist() for k in ("tp", "fp", "fn")},
            )
        )
    return records


def score_bsds(pred: TreePrediction, segs: np.ndarray, count: int) -> list[dict[str, Any]]:
    """Records of the first `count` images against annotators' segment ids int32
    [B, A, H, W] (from 0, -1 ignored; A padded to BSDS_ANNOTATORS with all -1 maps):
    area-weighted covering (Best, per level) and each annotator's NMCovering."""
    regions = max(BSDS_REGIONS, node_bucket(int(segs.max()) + 1))
    s = jax.tree.map(np.asarray, evaluate_bsds_batch(pred, segs, regions))
    space = flat_label_space(regions, ignore_values=(-1,), name="bsds-segments")
    per_annotator = [
        evaluate_batch(pred, segs[:, a], space, check_levels=False) for a in range(segs.shape[1])
    ]
    nm = np.stack([np.asarray(p.nm_covering[:, 0]) for p in per_annotator], axis=1)
    labelled = np.stack([np.asarray(p.n_regions[:, 0]) > 0 for p in per_annotator], axis=1)
    return [
        _tree_shape(pred, b)
        | dict(
            n_nodes=int(s.n_nodes[b]),
            n_annotators=int(s.n_annotators[b]),
            best=float(s.best[b]),
            levels=_floats(s.levels[b]),
            nm_covering=_floats(nm[b][labelled[b]]),
        )
        for b in range(count)
    ]


def region_accumulator(records: Sequence[dict[str, Any]], space: LabelSpace) -> Accumulator:
    """The accumulator of `space` holding the scores of `records` (from `score_regions`)."""
    acc = Accumulator.for_regions(space)
    if not records:
        return acc
    nodes = space.num_nodes
    dense = {k: np.zeros((len(records), nodes), np.int32) for k in ("tp", "fp", "fn")}
    node = np.full((len(records), nodes), -1, np.int32)
    iou = np.zeros((len(records), nodes), np.float32)
    for i, r in enumerate(records):
        node[i, r["gt"]] = r["match"]
        iou[i, r["gt"]] = r["iou"]
        for k in dense:
            dense[k][i, r["gt"]] = r[k]
    column = lambda key, dtype: np.asarray([r[key] for r in records], dtype)
    scores = BatchScores(
        column("n_nodes", np.int32),
        column("n_regions", np.int32),
        column("nm_covering", np.float32),
        column("nh_covering", np.float32),
        Matches(node, iou, dense["tp"], dense["fp"], dense["fn"]),
    )
    acc.add(scores, [r["name"] for r in records])
    return acc


def bsds_accumulator(records: Sequence[dict[str, Any]]) -> Accumulator:
    """The BSDS accumulator holding the scores of `records` (from `score_bsds`)."""
    acc = Accumulator.for_bsds()
    if records:
        column = lambda key, dtype: np.asarray([r[key] for r in records], dtype)
        acc.add(
            BSDSScores(
                column("n_nodes", np.int32),
                column("n_annotators", np.int32),
                column("best", np.float32),
                column("levels", np.float32),
            ),
            [r["name"] for r in records],
        )
    return acc


def bsds_nm_covering(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """NMCovering on BSDS: per image the mean over its annotators, then the mean over images
    (exactly rounded sums: independent of record order), beside the mean node count."""
    used = [r for r in records if r["nm_covering"]]
    if not used:
        return dict(images=0)
    per_image = [math.fsum(r["nm_covering"]) / len(r["nm_covering"]) for r in used]
    return dict(
        images=len(used),
        nm_covering=math.fsum(per_image) / len(used),
        mean_nodes=math.fsum(r["n_nodes"] for r in used) / len(used),
    )
