"""Plain NumPy / SciPy oracle of the metrics, float64, one image at a time.

Written straight from docs/metrics.md and the Metrics contract, sharing no code with the JAX path:
node m covers pixel p iff `level_labels[depth[m], p] == m` (every level is read); a GT node
covers the pixels whose label is itself or a descendant (found by walking parent pointers);
lineages are explicit Python sets. Slow by design; use it to check, not to evaluate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment


def _lineage(node: int, parent: np.ndarray) -> list[int]:
    """node and its ancestors, walking parent pointers."""
    out = [node]
    while parent[out[-1]] >= 0:
        out.append(int(parent[out[-1]]))
    return out


def _node_label_counts(
    level_labels: np.ndarray, depth: np.ndarray, valid: np.ndarray, gt: np.ndarray, num_labels: int
) -> np.ndarray:
    """[M, K]: pixels of node m (read at its own level) with GT label k >= 0."""
    num_nodes = valid.shape[0]
    counts = np.zeros(num_nodes * num_labels, np.int64)
    keep = gt >= 0
    for level, labels in enumerate(level_labels):
        nodes = labels[keep]
        own = (nodes >= 0) & valid[np.maximum(nodes, 0)] & (depth[np.maximum(nodes, 0)] == level)
        pairs = nodes[own].astype(np.int64) * num_labels + gt[keep][own]
        counts += np.bincount(pairs, minlength=num_nodes * num_labels)
    return counts.reshape(num_nodes, num_labels)


def _stats(
    level_labels: np.ndarray,
    valid: np.ndarray,
    depth: np.ndarray,
    gt: np.ndarray,
    gt_parent: np.ndarray,
) -> dict[str, np.ndarray]:
    """Intersections [G, M], areas and IoU of GT nodes with tree nodes."""
    num_labels = gt_parent.shape[0]
    counts = _node_label_counts(level_labels, depth, valid, gt, num_labels)
    member = np.zeros((num_labels, num_labels), np.int64)  # [g, k]: label k lies in region g
    for k in range(num_labels):
        for g in _lineage(k, gt_parent):
            member[g, k] = 1
    inter = member @ counts.T
    label_area = np.bincount(gt[gt >= 0], minlength=num_labels)
    gt_area = member @ label_area
    node_area = counts.sum(1)
    union = gt_area[:, None] + node_area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return dict(
        inter=inter, gt_area=gt_area, node_area=node_area, iou=iou, image_area=int(label_area.sum())
    )


def _candidates(valid: np.ndarray, depth: np.ndarray) -> list[int]:
    nodes = [int(m) for m in np.nonzero(valid)[0]]
    return nodes if len(nodes) == 1 else [m for m in nodes if depth[m] > 0]


def reference_image_scores(
    level_labels: np.ndarray,
    node_valid: np.ndarray,
    node_depth: np.ndarray,
    node_parent: np.ndarray,
    gt: np.ndarray,
    gt_parent: np.ndarray,
    region_sets: np.ndarray,
    threshold: float = 0.0,
) -> dict[str, Any]:
    """One image. level_labels [L + 1, H, W]; node_* [M]; gt [H, W] GT node ids, -1 ignored;
    gt_parent [G]; region_sets bool [S, G]. Returns n_nodes, n_regions [S], nm [S], nh,
    node / iou / tp / fp / fn [G] (node -1 when absent) and `tied` (a present region had
    several best candidates)."""
    s = _stats(level_labels, node_valid, node_depth, gt, gt_parent)
    cands = _candidates(node_valid, node_depth)
    num_gt = gt_parent.shape[0]
    node = np.full(num_gt, -1)
    iou = np.zeros(num_gt)
    tp, fp, fn = (np.zeros(num_gt, np.int64) for _ in range(3))
    tied = False
    for g in range(num_gt):
        if s["gt_area"][g] == 0:
            continue
        keys = {m: (s["iou"][g, m], s["inter"][g, m]) for m in cands}
        best = max(keys.values())
        winners = [m for m in cands if keys[m] == best]
        tied |= len(winners) > 1
        node[g] = min(winners)
        iou[g] = s["iou"][g, node[g]]
        tp[g] = s["inter"][g, node[g]]
        fp[g] = s["node_area"][node[g]] - tp[g]
        fn[g] = s["gt_area"][g] - tp[g]
    counted = np.where(iou >= threshold, iou, 0.0)
    present = s["gt_area"] > 0
    n_regions, nm = [], []
    for region_set in region_sets:
        members = [g for g in range(num_gt) if region_set[g] and present[g]]
        n_regions.append(len(members))
        nm.append(sum(counted[g] for g in members) / len(members) if members else 0.0)
    t_gt = {g for g in range(num_gt) if region_sets[0][g] and present[g]}
    nh_terms = []
    for r in sorted(t_gt):
        lineage = [p for p in _lineage(r, gt_parent) if p in t_gt]
        match_lineage = set(_lineage(int(node[r]), node_parent))
        weight = sum(node[p] in match_lineage for p in lineage) / len(lineage)
        nh_terms.append(counted[r] * weight)
    return dict(
        n_nodes=len(cands),
        n_regions=np.asarray(n_regions),
        nm=np.asarray(nm),
        nh=sum(nh_terms) / len(nh_terms) if nh_terms else 0.0,
        node=node,
        iou=iou,
        tp=tp,
        fp=fp,
        fn=fn,
        tied=tied,
    )


def reference_bsds_image(
    level_labels: np.ndarray,
    node_valid: np.ndarray,
    node_depth: np.ndarray,
    node_parent: np.ndarray,
    segmentations: np.ndarray,
    num_regions: int,
) -> dict[str, Any]:
    """One image, several annotators: segmentations [A, H, W] ids in [0, num_regions), -1
    ignored. Returns n_annotators, best, levels [L + 1] (means over labelled annotators)."""
    flat = np.full(num_regions, -1)
    num_levels = level_labels.shape[0]
    valid_nodes = [int(m) for m in np.nonzero(node_valid)[0]]
    has_child = {int(node_parent[m]) for m in valid_nodes}
    cuts = [
        [
            m
            for m in valid_nodes
            if node_depth[m] == level or (node_depth[m] < level and m not in has_child)
        ]
        for level in range(num_levels)
    ]
    node_sets = [_candidates(node_valid, node_depth)] + cuts
    per_annotator = []
    for seg in segmentations:
        s = _stats(level_labels, node_valid, node_depth, seg, flat)
        if s["image_area"] == 0:
            continue
        per_annotator.append(
            [
                sum(
                    s["gt_area"][g] / s["image_area"] * max(s["iou"][g, m] for m in nodes)
                    for g in range(num_regions)
                    if s["gt_area"][g] > 0
                )
                for nodes in node_sets
            ]
        )
    if not per_annotator:
        return dict(n_annotators=0, best=0.0, levels=np.zeros(num_levels))
    mean = np.mean(per_annotator, axis=0)
    return dict(n_annotators=len(per_annotator), best=float(mean[0]), levels=mean[1:])


def reference_semantic_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    """mIoU, pAcc, mAcc, fIoU of per-class totals, class by class in plain Python."""
    seen = [c for c in range(len(tp)) if tp[c] + fn[c] > 0]
    iou = {c: tp[c] / (tp[c] + fp[c] + fn[c]) for c in seen}
    total = sum(tp[c] + fn[c] for c in seen)
    return dict(
        miou=sum(iou.values()) / len(seen),
        pacc=sum(tp[c] for c in seen) / total,
        macc=sum(tp[c] / (tp[c] + fn[c]) for c in seen) / len(seen),
        fiou=sum((tp[c] + fn[c]) / total * iou[c] for c in seen),
    )


def reference_hungarian(confusion: np.ndarray) -> tuple[dict[str, float], float]:
    """Scores under SciPy's maximum-weight class -> cluster assignment, and its matched
    pixel total."""
    confusion = np.asarray(confusion, np.int64)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    tp = np.zeros(confusion.shape[0], np.int64)
    fp = np.zeros_like(tp)
    tp[rows] = confusion[rows, cols]
    fp[rows] = confusion[:, cols].sum(0) - tp[rows]
    fn = confusion.sum(1) - tp
    return reference_semantic_scores(tp, fp, fn), float(confusion[rows, cols].sum())
