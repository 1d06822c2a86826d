"""Semantic scores (docs/metrics.md): per-class TP/FP/FN summed over a dataset -> IoU per class,
mIoU, pAcc, mAcc, fIoU.

Max-overlap heuristic (the paper's protocol): per image, each GT class region R present is
matched to its best-IoU node m(R) (many-to-one); it adds TP = |R n m(R)|, FN = |R \\ m(R)|,
FP = |m(R) \\ R| to its class (`Matches.tp/fp/fn`, summed by the accumulator). Each class is
matched independently, so the totals of every GT node serve every depth of a hierarchy. The
covering metrics' IoU threshold does not apply here.

Hungarian option (the peers' protocol: STEGO, PiCIE, Leopart): a prediction with dataset-
consistent cluster ids; the class x cluster confusion is accumulated over the dataset, then
one-to-one assigned to maximise matched pixels (`optax.assignment.hungarian_algorithm`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from optax.assignment import hungarian_algorithm


class SemanticScores(NamedTuple):
    """Scores over C classes; a class is "seen" when TP + FN > 0 (it occurs in the GT)."""

    iou: np.ndarray  # float64 [C], 0 for unseen classes
    seen: np.ndarray  # bool [C]
    miou: float  # mean IoU over seen classes
    pacc: float  # sum TP / sum (TP + FN)
    macc: float  # mean over seen classes of TP / (TP + FN)
    fiou: float  # sum_c freq_c IoU_c, freq_c = (TP + FN)_c / sum (TP + FN)


def semantic_scores(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, classes: np.ndarray | None = None
) -> SemanticScores:
    """Scores of the classes selected by `classes` (bool mask or indices; all by default)
    from per-class totals tp, fp, fn: int [C_all]. Raises ValueError when no selected class
    was seen: there is nothing to average."""
    tp, fp, fn = (np.asarray(x, np.int64) for x in (tp, fp, fn))
    if classes is not None:
        tp, fp, fn = tp[classes], fp[classes], fn[classes]
    support = tp + fn
    seen = support > 0
    if not seen.any():
        raise ValueError("no class of the selected set occurs in the ground truth")
    iou = np.where(seen, tp / np.maximum(tp + fp + fn, 1), 0.0)
    acc = np.where(seen, tp / np.maximum(support, 1), 0.0)
    freq = support / support.sum()
    return SemanticScores(
        iou=iou,
        seen=seen,
        miou=float(iou[seen].mean()),
        pacc=float(tp.sum() / support.sum()),
        macc=float(acc[seen].mean()),
        fiou=float((freq * iou).sum()),
    )


@functools.partial(jax.jit, static_argnames=("num_classes", "num_clusters"))
def confusion_counts(
    gt: jax.Array, clusters: jax.Array, num_classes: int, num_clusters: int
) -> jax.Array:
    """int32 [C, K]: pixels of class c predicted as cluster k, summed over the batch.
    gt: int32 [B, H, W] in [0, C) or -1 (ignored); clusters: int32 [B, H, W] in [0, K)."""
    keep = (gt >= 0) & (clusters >= 0)
    pair = jnp.where(keep, gt * num_clusters + clusters, num_classes * num_clusters).ravel()
    counts = jnp.bincount(pair, length=num_classes * num_clusters + 1)[:-1]
    return counts.reshape(num_classes, num_clusters).astype(jnp.int32)


@jax.jit
def _assign(confusion: jax.Array) -> tuple[jax.Array, jax.Array]:
    return hungarian_algorithm(-confusion.astype(jnp.float32))


def hungarian_scores(confusion: np.ndarray) -> tuple[SemanticScores, np.ndarray]:
    """One-to-one class -> cluster assignment maximising matched pixels, and the scores it
    gives: TP = confusion[c, a(c)], FN = row sum - TP, FP = column sum of a(c) - TP. Returns
    (scores, assignment int [C], -1 for a class left without a cluster when K < C)."""
    confusion = np.asarray(confusion, np.int64)
    rows, cols = (np.asarray(x) for x in _assign(jnp.asarray(confusion)))
    assignment = np.full(confusion.shape[0], -1, np.int64)
    assignment[rows] = cols
    matched = assignment >= 0
    tp = np.where(matched, confusion[np.arange(len(assignment)), np.maximum(assignment, 0)], 0)
    fn = confusion.sum(1) - tp
    fp = np.where(matched, confusion.sum(0)[np.maximum(assignment, 0)] - tp, 0)
    return semantic_scores(tp, fp, fn), assignment
