"""The partitioner's result: a batched tree of nested regions over the patch grid.

Node identity is explicit: every node is a slot `m` in `[0, M)` with a parent slot, a depth
and flags; nothing is encoded arithmetically in the ids. Slot 0 is the root; the slots of
depth `d >= 1` are `[1 + (d - 1) * P, 1 + d * P)` (a level holds at most P nodes, one per
stage-A part). Patch `i` of image `b` belongs to node `m` iff
`labels[b, depth[b, m], i] == m`; a node that stops splitting keeps its id at every deeper
level, so `labels[:, -1]` is the leaf partition.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tree:
    """Batched tree (leading axis B everywhere); L = levels, M = 1 + L * P node slots.

    labels:  int32 [B, L + 1, N] node id of each patch at each depth (0 = root).
    parent:  int32 [B, M] parent slot, -1 for the root and for unused slots.
    depth:   int32 [B, M] depth of each slot (0 for unused slots).
    is_leaf: bool  [B, M] valid node without children.
    valid:   bool  [B, M] slot holds a node.
    parts:   int32 [B, N] stage-A part of each patch.
    grid:    (h, w) static patch grid, N = h * w.
    """

    labels: jax.Array
    parent: jax.Array
    depth: jax.Array
    is_leaf: jax.Array
    valid: jax.Array
    parts: jax.Array
    grid: tuple[int, int] = dataclasses.field(metadata={"static": True})

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    @property
    def levels(self) -> int:
        """L: the deepest possible depth."""
        return self.labels.shape[1] - 1

    def __getitem__(self, index: Any) -> Tree:
        """Index the batch axis; an integer keeps a batch axis of size 1."""
        if isinstance(index, int | np.integer):
            index = slice(int(index), int(index) + 1 or None)
        return jax.tree.map(lambda a: a[index], self)


def unbatch(tree: Tree) -> list[Tree]:
    """The B single-image trees (each with a batch axis of size 1)."""
    return [tree[b] for b in range(tree.batch_size)]


def node_mask(tree: Tree, b: int, node: int | jax.Array) -> jax.Array:
    """bool [h, w]: the patches of node `node` in image `b` (all False for an unused slot)."""
    depth = tree.depth[b, node]
    inside = (tree.labels[b, depth] == node) & tree.valid[b, node]
    return inside.reshape(tree.grid)


def level_map(tree: Tree, level: int) -> jax.Array:
    """int32 [B, h, w]: node id of each patch at depth `level` (negative counts from L)."""
    return tree.labels[:, level].reshape(tree.batch_size, *tree.grid)


def leaves(tree: Tree) -> jax.Array:
    """int32 [B, h, w]: leaf id of each patch."""
    return level_map(tree, -1)


def num_nodes(tree: Tree) -> jax.Array:
    """int32 [B]: number of nodes (root included) of each tree."""
    return tree.valid.sum(axis=-1, dtype=jnp.int32)


def to_json(tree: Tree, b: int) -> dict[str, Any]:
    """Nested JSON-able form of image `b`'s tree.

    Each node is `{"id", "depth", "parts", "area", "children"}`: `parts` the sorted stage-A
    part ids it covers, `area` its number of patches; children sorted by id.
    """
    labels = np.asarray(tree.labels[b])
    parent = np.asarray(tree.parent[b])
    depth = np.asarray(tree.depth[b])
    valid = np.asarray(tree.valid[b])
    parts = np.asarray(tree.parts[b])
    children: dict[int, list[int]] = {int(m): [] for m in np.flatnonzero(valid)}
    for m in np.flatnonzero(valid & (parent >= 0)):
        children[int(parent[m])].append(int(m))

    def build(m: int) -> dict[str, Any]:
        inside = labels[depth[m]] == m
        return {
            "id": m,
            "depth": int(depth[m]),
            "parts": sorted(int(p) for p in np.unique(parts[inside])),
            "area": int(inside.sum()),
            "children": [build(c) for c in sorted(children[m])],
        }

    return build(0)


# ----------------------------------------------------------------------------------------
# Label maps of a tree: per patch, per pixel, and the leaves' mean features.


def patch_level_labels(tree: Tree) -> jax.Array:
    """int32 `[B, L + 1, h, w]`: the node id of every patch at every depth."""
    return tree.labels.reshape(tree.labels.shape[:2] + tuple(tree.grid))


def upsample_labels(
    level_labels: jax.Array | np.ndarray,
    out_hw: tuple[int, int],
    patch_stride: tuple[int, int] = (1, 1),
) -> jax.Array:
    """Nearest-neighbour resize of label maps `[..., h, w]` to `[..., H, W]` (`out_hw` static).

    Pixel (y, x) takes the label of the patch whose centre is nearest the pixel's centre,
    the image being stretched over the backbone input (the resize in `preprocess` does not
    keep the aspect ratio). `patch_stride` = (patch size, patch-embedding stride) in input
    pixels, any equal pair when the patches tile the input: then pixel (y, x) takes patch
    (floor((y + 1/2) h / H), floor((x + 1/2) w / W)). With overlapping patches (stride s <
    patch p, `models.vit.patch_grid`) the centres lie at p / 2 + s i of an input
    p + s (h - 1) pixels tall, so the outer rows and columns also take the (p - s) / 2
    border pixels that no centre is nearer to. Pure indexing: exact for integer labels,
    usable under jit and vmap.
    """
    height, width = (int(s) for s in out_hw)
    if height < 1 or width < 1:
        raise ValueError(f"out_hw must be positive, got {out_hw}")
    patch, stride = (int(v) for v in patch_stride)
    if not 1 <= stride <= patch:
        raise ValueError(
            f"patch_stride must be (patch, stride), 1 <= stride <= patch, got {patch_stride}"
        )
    h, w = level_labels.shape[-2:]
    rows = _nearest_centres(height, h, patch, stride)
    cols = _nearest_centres(width, w, patch, stride)
    return jnp.asarray(level_labels)[..., rows[:, None], cols[None, :]]


def _nearest_centres(pixels: int, cells: int, patch: int, stride: int) -> np.ndarray:
    """int [pixels]: the cell whose centre is nearest each pixel's centre, in exact integers:
    floor(((2y + 1) (s (cells - 1) + p) - (p - s) pixels) / (2 s pixels)), clipped."""
    y = np.arange(pixels)
    span = stride * (cells - 1) + patch
    index = ((2 * y + 1) * span - (patch - stride) * pixels) // (2 * stride * pixels)
    return np.clip(index, 0, cells - 1)


def leaf_descriptors(features: jax.Array, tree: Tree) -> jax.Array:
    """float32 `[B, M, E]`: mean of `features: [B, h, w, E]` over each leaf's patches
    (docs/method.md section 5); rows of slots that are not leaves are zero."""
    batch, slots = tree.valid.shape
    x = jnp.asarray(features, jnp.float32).reshape(batch, -1, features.shape[-1])
    return _leaf_means(x, tree.labels[:, -1], tree.is_leaf, slots)


@functools.partial(jax.jit, static_argnames="slots")
def _leaf_means(x: jax.Array, leaf: jax.Array, is_leaf: jax.Array, slots: int) -> jax.Array:
    def one(x_b: jax.Array, leaf_b: jax.Array, is_leaf_b: jax.Array) -> jax.Array:
        total = jax.ops.segment_sum(x_b, leaf_b, num_segments=slots)
        count = jax.ops.segment_sum(jnp.ones_like(leaf_b, jnp.float32), leaf_b, slots)
        mean = total / jnp.maximum(count, 1.0)[:, None]
        return jnp.where(is_leaf_b[:, None], mean, 0.0)

    return jax.vmap(one)(x, leaf, is_leaf)
