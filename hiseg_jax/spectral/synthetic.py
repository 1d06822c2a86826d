"""Synthetic inputs with a known (planted) hierarchy, for tests and benchmarks.

`planted_hierarchy` draws patch features on an h x w grid from nested rectangles: the image
is split into `branching[0]` stripes, each stripe into `branching[1]` pieces across, and so
on, always cutting the longer side. Each group's mean is its parent's mean plus an offset of
size `scales[level - 1]` (decreasing), so coarse groups differ more than fine ones.
`planted_part_graph` gives a part graph W_P whose weight depends only on how deep two parts'
common ancestor is. Both are deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

Group = tuple[int, np.ndarray]  # (level >= 1, bool mask over patches or parts)


def _rng(key_or_seed: int | np.ndarray) -> np.random.Generator:
    """NumPy generator from an int seed or a JAX PRNG key (raw uint32 or typed)."""
    if isinstance(key_or_seed, int | np.integer):
        return np.random.default_rng(int(key_or_seed))
    import jax

    key = key_or_seed
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


def _check_branching(branching: tuple[int, ...]) -> None:
    if len(branching) < 1 or any(b < 2 for b in branching):
        raise ValueError(f"branching needs >= 1 level, each >= 2, got {branching}")


def _split_rectangles(grid: tuple[int, int], branching: tuple[int, ...]) -> list[list[tuple]]:
    """Nested rectangles (r0, r1, c0, c1) per level; level 0 is the whole grid."""
    levels = [[(0, grid[0], 0, grid[1])]]
    for b in branching:
        nxt = []
        for r0, r1, c0, c1 in levels[-1]:
            rows = r1 - r0 > c1 - c0
            lo, hi = (r0, r1) if rows else (c0, c1)
            if hi - lo < b:
                raise ValueError(f"grid {grid} too small for branching {branching}")
            cuts = [lo + round(i * (hi - lo) / b) for i in range(b + 1)]
            for a, z in zip(cuts[:-1], cuts[1:], strict=True):
                nxt.append((a, z, c0, c1) if rows else (r0, r1, a, z))
        levels.append(nxt)
    return levels


def planted_hierarchy(
    key_or_seed: int | np.ndarray,
    grid: tuple[int, int] = (24, 24),
    branching: tuple[int, ...] = (2, 3, 2),
    dim: int = 96,
    noise: float = 0.2,
    scales: tuple[float, ...] | None = None,
    leaf_dims: int = 4,
) -> tuple[np.ndarray, list[Group]]:
    """Features float32 [h, w, dim] of a planted hierarchy, and its groups (level, bool [h*w]).

    Every group (and the root) owns one of a set of orthonormal directions; a patch's feature is
    the root direction plus `scales[l - 1]` times the direction of its level-l group, for each
    level, plus Gaussian variation of size `noise` inside `leaf_dims` further directions private
    to its leaf. Keeping the variation private to a leaf makes the stage-A eigenvectors beyond
    the group ones leaf-local, so parts do not straddle leaves. Groups are listed level by level
    (1..len(branching)), the root excluded. Default scales (1, 1, 0.8, ...): under the minmax
    adjacency the top level is fully separated whatever its offset, so deeper offsets need to
    stay close to it to remain visible.
    """
    _check_branching(branching)
    if scales is None:
        scales = (1.0, *(0.8 ** (level - 1) for level in range(1, len(branching))))
    if len(scales) != len(branching):
        raise ValueError(f"need one scale per level: {len(branching)}, got {len(scales)}")
    rects_per_level = _split_rectangles(grid, branching)
    n_groups = sum(len(rects) for rects in rects_per_level)
    n_dirs = n_groups + leaf_dims * len(rects_per_level[-1])
    if dim < n_dirs:
        raise ValueError(f"dim must be >= {n_dirs} (groups + leaf_dims per leaf), got {dim}")
    rng = _rng(key_or_seed)
    dirs = np.linalg.qr(rng.normal(size=(dim, n_dirs)))[0].T  # orthonormal rows
    h, w = grid
    feats = np.zeros((h, w, dim))
    feats[...] = dirs[0]
    groups: list[Group] = []
    i = 1
    for level, rects in enumerate(rects_per_level[1:], start=1):
        for r0, r1, c0, c1 in rects:
            feats[r0:r1, c0:c1] += scales[level - 1] * dirs[i]
            i += 1
            mask = np.zeros((h, w), dtype=bool)
            mask[r0:r1, c0:c1] = True
            groups.append((level, mask.ravel()))
    for r0, r1, c0, c1 in rects_per_level[-1]:
        coef = rng.normal(size=(r1 - r0, c1 - c0, leaf_dims)) / np.sqrt(leaf_dims)
        feats[r0:r1, c0:c1] += noise * coef @ dirs[i : i + leaf_dims]
        i += leaf_dims
    return feats.astype(np.float32), groups


def planted_part_graph(
    key_or_seed: int | np.ndarray,
    branching: tuple[int, ...] = (2, 3),
    leaf_size: int = 4,
    affinities: tuple[float, ...] | None = None,
    noise: float = 0.05,
) -> tuple[np.ndarray, list[Group]]:
    """Part graph W_P float64 [P, P] (diag 0) with planted nested blocks, and its groups.

    P = leaf_size * prod(branching). W_ij = affinities[level of i's and j's deepest common
    group] * (1 + noise * U(-1, 1)), symmetric; affinities has len(branching) + 1 increasing
    entries (default 0.05 across top-level groups, then geometric from 0.4 to 1 inside a leaf:
    a top-level contrast much stronger than the next keeps the root's eigengap at k =
    branching[0]). Parts are shuffled, so groups are not index ranges.
    """
    _check_branching(branching)
    depth = len(branching)
    if affinities is None:
        affinities = (0.05, *np.geomspace(0.4, 1.0, depth).tolist())
    if len(affinities) != depth + 1:
        raise ValueError(f"need {depth + 1} affinities, got {len(affinities)}")
    rng = _rng(key_or_seed)
    n = leaf_size * int(np.prod(branching))
    order = rng.permutation(n)  # order[i]: shuffled position of the i-th part in tree order
    # path[level, p]: index of part p's group at that level (level 0 = root).
    path = np.zeros((depth + 1, n), dtype=np.int64)
    groups: list[Group] = []
    for level in range(1, depth + 1):
        size = n // int(np.prod(branching[:level]))
        path[level, order] = np.arange(n) // size
        groups.extend((level, path[level] == g) for g in range(n // size))
    common = (path[:, :, None] == path[:, None, :]).sum(axis=0) - 1  # deepest common level
    jitter = rng.uniform(-1.0, 1.0, size=(n, n))
    wp = np.asarray(affinities)[common] * (1.0 + noise * (jitter + jitter.T) / 2)
    np.fill_diagonal(wp, 0.0)
    return wp, groups
