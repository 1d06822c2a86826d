"""Dataset-level Hungarian matching for `hiseg evaluate --matching hungarian`: the protocol
of the peers (STEGO, PiCIE, Leopart; docs/metrics.md, "Hungarian matching"), offered so
that a user can compare.

That protocol needs cluster ids that mean the same thing in every image, while a tree's
node ids are per image. So the trees' LEAVES are clustered over the whole dataset: each
leaf is its mean backbone feature (docs/method.md section 5), L2-normalised; k-means puts
them into K clusters, K = the number of classes of the scored level seen in the dataset;
every pixel takes its leaf's cluster; the class x cluster pixel confusion is then assigned
one-to-one (`hiseg_jax.metrics.hungarian_scores`). Only the leaves are used: this scores the
finest partition of the tree, not its hierarchy.

Per image, the leaves' descriptors and their pixel counts per ground-truth label are saved
under `leaves/` (written before the image's record, so a resumed run has them). A level
is scored when its classes are mutually exclusive (a flat dataset's classes, each depth of a
hierarchy; not T_gt, whose nested nodes share pixels); labelled pixels without a class at
that depth (an object's pixels outside its parts, at the parts' depth) are left out.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.files import AnyPath, atomic_path
from hiseg_jax.hierarchies import LabelSpace
from hiseg_jax.metrics import TreePrediction, hungarian_scores
from hiseg_jax.metrics.regions import joint_counts, leaf_nodes
from hiseg_jax.spectral.kmeans import kmeans

LEAVES = "leaves"  # folder of the per-image leaf files
KMEANS_RESTARTS = 10
KMEANS_MAX_ITER = 300


@functools.partial(jax.jit, static_argnames=("num_nodes", "num_labels"))
def _joint_counts(leaf: jax.Array, gt: jax.Array, num_nodes: int, num_labels: int) -> jax.Array:
    return jax.vmap(lambda lf, g: joint_counts(lf, g, num_nodes, num_labels))(leaf, gt)


def leaf_data(
    descriptors: np.ndarray,
    pred: TreePrediction,
    slot_ids: np.ndarray,
    gt: np.ndarray,
    num_labels: int,
    count: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of the first `count`: (descriptors float32 [n, E], pixel counts int64
    [n, G] per GT label) of its n leaves. descriptors: float32 [>= count, M, E] the leaves'
    mean features (`tree.leaf_descriptors`) by tree slot; pred, slot_ids:
    `scoring.compact_tree` of the tree at the evaluated resolution; gt: encoded GT int32
    [B, H, W] in [-1, G)."""
    slots = pred.node_valid.shape[1]
    counts = np.asarray(
        _joint_counts(jnp.asarray(pred.level_labels[:, -1]), jnp.asarray(gt), slots, num_labels),
        np.int64,
    )
    descriptors = np.asarray(descriptors)
    out = []
    for b in range(count):
        leaves = np.flatnonzero(np.asarray(leaf_nodes(pred.node_parent[b], pred.node_valid[b])))
        out.append((descriptors[b, slot_ids[b][leaves]], counts[b, leaves]))
    return out


def _path(out: AnyPath, index: int) -> AnyPath:
    return out / LEAVES / f"{index:08d}.npz"


def save_leaf_data(out: AnyPath, index: int, descriptors: np.ndarray, counts: np.ndarray) -> None:
    """Write image `index`'s leaf data (atomically; `out` local or on an object store)."""
    path = _path(out, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial, open(partial, "wb") as f:
        np.savez_compressed(f, descriptors=descriptors, counts=counts)


def load_leaf_data(out: AnyPath, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """All leaves of the given images: (descriptors [N, E], counts [N, G])."""
    loaded = []
    for index in indices:
        path = _path(out, index)
        if not path.exists():
            raise ValueError(f"{path} is missing: rerun with --overwrite to rebuild the leaves")
        with path.open("rb") as f, np.load(f) as data:
            loaded.append((data["descriptors"], data["counts"]))
    return (np.concatenate([d for d, _ in loaded]), np.concatenate([c for _, c in loaded]))


def exclusive_sets(space: LabelSpace) -> list[int]:
    """Indices of the region sets whose classes share no GT label (scorable one-to-one)."""
    return [
        s
        for s, members in enumerate(space.region_sets)
        if (space.ancestor[members].sum(axis=0) <= 1).all()
    ]


def hungarian_results(
    descriptors: np.ndarray, counts: np.ndarray, space: LabelSpace, seed: int
) -> dict[str, Any]:
    """Per exclusive region set: k-means of the leaves into K clusters (K = classes seen, at
    most the number of leaves), Hungarian assignment of classes to clusters, and its scores
    (mIoU, pAcc, mAcc, fIoU as fractions, over the classes seen)."""
    x = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    results = {}
    for s in exclusive_sets(space):
        members = np.flatnonzero(space.region_sets[s])
        class_pixels = counts @ space.ancestor[members].T.astype(np.int64)  # [N, C]
        seen = class_pixels.sum(axis=0) > 0
        if not seen.any():
            continue
        k = min(int(seen.sum()), len(x))  # K = classes seen, at most one per leaf
        clusters = np.zeros(len(x), np.int64)
        if k > 1:
            clusters = np.asarray(
                kmeans(
                    jnp.asarray(x, jnp.float32),
                    k,
                    jax.random.key(seed),
                    k_max=k,
                    n_init=KMEANS_RESTARTS,
                    max_iter=KMEANS_MAX_ITER,
                ).labels
            )
        confusion = np.zeros((k, int(seen.sum())), np.int64)  # [cluster, class]
        np.add.at(confusion, clusters, class_pixels[:, seen])
        scores, _ = hungarian_scores(confusion.T)
        results[space.set_names[s]] = dict(
            classes=int(seen.sum()),
            clusters=k,
            leaves=len(x),
            miou=scores.miou,
            pacc=scores.pacc,
            macc=scores.macc,
            fiou=scores.fiou,
        )
    return results
