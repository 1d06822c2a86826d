"""Random trees and ground truths for the metrics tests (consistent with the Tree contract)."""

from __future__ import annotations

import numpy as np

from hiseg_jax.metrics import TreePrediction


def random_tree(
    rng: np.random.Generator,
    height: int,
    width: int,
    levels: int,
    slots: int,
    allow_empty: bool = True,
    pad: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random tree over an image: each node of the previous level splits into 2-3 children
    (random pixels each) or stops. Non-root ids are a random permutation of the slots, unused
    slots stay invalid. `allow_empty` lets a child get no pixel; `pad` > 0 marks the last
    `pad` columns as padding (-1 at every level). Returns level_labels [L + 1, H, W], valid,
    depth, parent [M]."""
    labels = np.zeros((levels + 1, height, width), np.int32)
    valid = np.zeros(slots, bool)
    depth = np.zeros(slots, np.int32)
    parent = np.full(slots, -1, np.int32)
    valid[0] = True
    pool = list(rng.permutation(np.arange(1, slots)))
    frontier = [0]
    for level in range(1, levels + 1):
        labels[level] = labels[level - 1]
        grown = []
        for node in frontier:
            k = int(rng.integers(0, 4))
            pixels = np.flatnonzero(labels[level] == node)
            if k < 2 or k > len(pool) or (not allow_empty and pixels.size < k):
                continue
            children = [pool.pop() for _ in range(k)]
            choice = rng.integers(0, k, pixels.size)
            if not allow_empty:
                choice[rng.permutation(pixels.size)[:k]] = np.arange(k)
            labels[level].flat[pixels] = np.asarray(children)[choice]
            for c in children:
                valid[c], depth[c], parent[c] = True, level, node
            grown += children
        frontier = grown
    if pad:
        labels[:, :, width - pad :] = -1
    return labels, valid, depth, parent


def random_forest(rng: np.random.Generator, count: int) -> np.ndarray:
    """Parent array of a random forest over `count` nodes (each node's parent comes first)."""
    return np.asarray([int(rng.integers(-1, g)) if g else -1 for g in range(count)], np.int32)


def random_labels(
    rng: np.random.Generator, shape: tuple[int, ...], count: int, ignore: float
) -> np.ndarray:
    """Blocky random labels in [0, count) with a share `ignore` of -1 pixels."""
    coarse = rng.integers(0, count, (*shape[:-2], shape[-2] // 2 + 1, shape[-1] // 2 + 1))
    labels = coarse.repeat(2, -2).repeat(2, -1)[..., : shape[-2], : shape[-1]]
    labels = np.where(rng.random(shape) < 0.2, rng.integers(0, count, shape), labels)
    return np.where(rng.random(shape) < ignore, -1, labels).astype(np.int32)


def stack_trees(trees: list[tuple[np.ndarray, ...]]) -> TreePrediction:
    return TreePrediction(*(np.stack(parts) for parts in zip(*trees, strict=True)))
