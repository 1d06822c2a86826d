"""Merging of small leaves (docs/method.md section 4, step 8: after the recursion).

Stage B's normalised cuts split off leaves of one or two patches: they cost nodes and
fragment the levels without covering anything. `merge_small_leaves` removes nodes one at a
time: first any leaf that is the only child of its parent (it is the parent again), else the
smallest leaf of fewer than `min_patches` patches that has a sibling: it joins the sibling it
shares the most 4-neighbour patch borders with (ties: the larger sibling, then the smaller
slot), and at every depth below, the ancestors of the leaf under that sibling it borders most
(same ties). An inner only child stays, a copy of its parent, so the tree keeps
depth(child) = depth(parent) + 1. Static shapes, a `while_loop` of one step per removal;
`hiseg_jax.spectral.reference.merge_small_leaves` is the NumPy oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def _neighbours(values: jax.Array, grid: tuple[int, int], fill: int) -> list[jax.Array]:
    """values [N] of an h x w grid -> the value of each patch's neighbour in every SHIFTS
    direction ([N] each; `fill` beyond the border)."""
    h, w = grid
    v = values.reshape(h, w)
    out = []
    for dy, dx in SHIFTS:
        padded = jnp.pad(v, ((1, 1), (1, 1)), constant_values=fill)
        out.append(padded[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w].reshape(-1))
    return out


def _border_counts(inside: jax.Array, target: jax.Array, grid: tuple[int, int], slots: int):
    """int32 [slots]: for each id, the patch borders between `inside` [N] and the patches of
    that id in target [N] (ids < 0 ignored)."""
    counts = jnp.zeros((slots,), jnp.int32)
    for nb in _neighbours(target, grid, -1):
        idx = jnp.where(inside & (nb >= 0), nb, slots)
        counts = counts.at[idx].add(1, mode="drop")
    return counts


def merge_small_leaves(
    labels: jax.Array,
    parent: jax.Array,
    depth: jax.Array,
    valid: jax.Array,
    grid: tuple[int, int],
    min_patches: int | jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """One image's tree with its leaves of < min_patches patches merged (module docstring).

    labels int32 [L + 1, N] (node of each patch at each depth), parent, depth int32 [M],
    valid bool [M] (`hiseg_jax.tree.Tree` for one image); grid (h, w) static. Returns
    (labels, parent, depth, valid, is_leaf) of the same shapes; removed slots get parent -1,
    depth 0. min_patches <= 1 returns the tree unchanged.
    """
    labels, parent, depth, valid = (jnp.asarray(a) for a in (labels, parent, depth, valid))
    n_levels, n = labels.shape
    slots = valid.shape[0]
    ids = jnp.arange(slots)
    level_ids = jnp.arange(n_levels)

    def candidates(state: tuple) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(lonely leaves: the only child of their parent, small leaves with a sibling,
        leaf areas), [M] each."""
        labels, parent, valid, _ = state
        child = valid & (parent >= 0)
        children = (
            jnp.zeros((slots,), jnp.int32).at[jnp.where(child, parent, slots)].add(1, mode="drop")
        )
        leaf = valid & (children == 0) & (parent >= 0)
        siblings = children[jnp.maximum(parent, 0)]
        area = jnp.zeros((slots,), jnp.int32).at[labels[-1]].add(1, mode="drop")
        return leaf & (siblings == 1), leaf & (siblings > 1) & (area < min_patches), area

    def more(state: tuple) -> jax.Array:
        lonely, small, _ = candidates(state)
        return (lonely.any() | small.any()) & (state[3] < 2 * slots)

    def absorb(state: tuple, lonely: jax.Array) -> tuple:
        """The parent of the first lonely leaf takes it back."""
        labels, parent, valid, steps = state
        c = jnp.argmax(lonely)
        labels = jnp.where(labels == c, parent[c], labels).astype(labels.dtype)
        return labels, parent.at[c].set(-1), valid.at[c].set(False), steps + 1

    def merge(state: tuple, small: jax.Array, area: jax.Array) -> tuple:
        """The smallest small leaf joins its best-bordering sibling."""
        labels, parent, valid, steps = state
        a = jnp.argmin(jnp.where(small, area * slots + ids, jnp.iinfo(jnp.int32).max))
        d = depth[a]
        lab_d = labels[d]
        in_a = lab_d == a
        region = jnp.zeros((slots,), jnp.int32).at[lab_d].add(1, mode="drop")
        contacts = _border_counts(in_a, lab_d, grid, slots)
        sibling = valid & (parent == parent[a]) & (ids != a)
        b = jnp.argmax(jnp.where(sibling, contacts * (n + 1) + region, -1))
        in_b = lab_d == b
        leaf = labels[-1]
        score = _border_counts(in_a, jnp.where(in_b, leaf, -1), grid, slots) * (n + 1)
        score = score + jnp.zeros((slots,), jnp.int32).at[jnp.where(in_b, leaf, slots)].add(
            1, mode="drop"
        )
        q = jnp.argmax(leaf == jnp.argmax(score))  # a patch of the chosen leaf under b
        deeper = (level_ids >= d)[:, None] & in_a[None, :]
        labels = jnp.where(deeper, labels[:, q][:, None], labels)
        return labels, parent.at[a].set(-1), valid.at[a].set(False), steps + 1

    def step(state: tuple) -> tuple:
        lonely, small, area = candidates(state)
        return jax.lax.cond(lonely.any(), absorb, lambda s, _: merge(s, small, area), state, lonely)

    labels, parent, valid, _ = jax.lax.while_loop(more, step, (labels, parent, valid, jnp.int32(0)))
    has_child = (
        jnp.zeros((slots,), bool)
        .at[jnp.where(valid & (parent >= 0), parent, slots)]
        .set(True, mode="drop")
    )
    return labels, parent, jnp.where(valid, depth, 0), valid, valid & ~has_child
