"""A random hierarchy at pixel resolution, shaped like `hiseg segment`'s output, for the
viewer tests (no backbone needed): irregular regions, leaves at several depths, unused slots,
and leaf borders roughened per pixel as the dense CRF does."""

from __future__ import annotations

import numpy as np

from hiseg_jax import viewer


def random_hierarchy(
    height: int,
    width: int,
    *,
    grid: tuple[int, int] = (21, 32),
    levels: int = 4,
    slots_per_level: int = 40,
    seed: int = 0,
    roughen: bool = True,
    split: float = 0.6,
) -> dict[str, np.ndarray]:
    """`levels int32 [L + 1, H, W]` and the tree rows `parent, depth, valid [M]`.

    Slot layout as in `tree.Tree`: root 0, depth d in [1 + (d - 1) P, 1 + d P). A node splits
    (2-3 children, nearest of random centres over its patches) with probability `split` below
    depth 1 and always at depth 0, so some leaves stop early. With `roughen`, pixels on leaf
    borders take a neighbour's leaf at random (every level then follows from the leaves).
    """
    rng = np.random.default_rng(seed)
    h, w = grid
    slots = 1 + levels * slots_per_level
    parent = np.full(slots, -1, np.int32)
    depth = np.zeros(slots, np.int32)
    valid = np.zeros(slots, bool)
    valid[0] = True
    patch = np.zeros((levels + 1, h, w), np.int32)
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
    for d in range(1, levels + 1):
        patch[d] = patch[d - 1]
        used = 1 + (d - 1) * slots_per_level + rng.integers(0, 3)  # leave some slots unused
        for m in np.unique(patch[d - 1]):
            inside = (patch[d - 1] == m).ravel()
            k = int(rng.integers(2, 4))
            full = used + k > 1 + d * slots_per_level
            if depth[m] != d - 1 or inside.sum() < 4 or full or (d > 1 and rng.random() > split):
                continue
            centres = coords[inside][rng.choice(inside.sum(), k, replace=False)]
            nearest = np.argmin(((coords[inside, None] - centres[None]) ** 2).sum(-1), axis=1)
            ids = used + np.arange(k)
            used += k + int(rng.integers(0, 2))
            patch[d].ravel()[np.flatnonzero(inside)] = ids[nearest]
            parent[ids], depth[ids], valid[ids] = m, d, True
    rows = ((2 * np.arange(height) + 1) * h) // (2 * height)
    cols = ((2 * np.arange(width) + 1) * w) // (2 * width)
    pixels = patch[:, rows[:, None], cols[None, :]]
    if roughen:
        leaf = pixels[-1]
        shift = int(rng.integers(1, 4))
        shifted = leaf.copy()
        shifted[shift:] = leaf[:-shift]  # the leaf `shift` rows up
        border = (shifted != leaf) & (rng.random(leaf.shape) < 0.5)
        leaf = np.where(border, shifted, leaf)
        pixels = np.stack([_ancestor_at(leaf, parent, depth, d) for d in range(levels + 1)])
    return {"levels": pixels, "parent": parent, "depth": depth, "valid": valid}


def _ancestor_at(leaf: np.ndarray, parent: np.ndarray, depth: np.ndarray, d: int) -> np.ndarray:
    node = leaf.copy()
    while (depth[node] > d).any():
        node = np.where(depth[node] > d, parent[node], node)
    return node


def page_text(*arrays: np.ndarray, title: str) -> str:
    """The viewer page's HTML of `viewer.page_data(*arrays)` (image, levels, parent, depth,
    valid)."""
    return viewer.page_html(viewer.page_data(*arrays, title=title))
