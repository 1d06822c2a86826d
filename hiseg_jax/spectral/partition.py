"""The spectral partitioner (docs/method.md sections 1-5, with static shapes: section 7).

features [B, h, w, E] -> stage A (graph, top-P eigenvectors, k-means into P parts) -> part
graph W_P [P, P] -> stage B (recursive k-way normalised cuts as a fixed-depth masked
recursion) -> `Tree`. `partition` runs all of it for a batch inside one jit.

Stage B: depth l holds, for every part, the id of its node. All nodes of a depth are split at
once: each node is a boolean mask over the P parts and `split_node` works on W_P restricted
to that mask (masked rows and columns zero, degrees recomputed on the sub-graph), so every
node has the same static shapes and nodes are vmapped in chunks of `chunk` slots. A node
that stops keeps its id at deeper depths. The number of clusters k is traced: the k-means
and threshold sweeps for the candidate k's are computed and selected with masks, and the
MNcut fallback k-1, ..., 2 is a `while_loop`.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.precision import HIGHEST
from hiseg_jax.spectral import dense_eigh, graph, lanczos
from hiseg_jax.spectral.config import PartitionConfig, check_grid
from hiseg_jax.spectral.kmeans import kmeans
from hiseg_jax.spectral.merge import merge_small_leaves
from hiseg_jax.tree import Tree

N_SWEEP = 10  # evenly spaced thresholds of the k = 2 sweep (plus 0 and the mean)
# Largest |u_i - u_0| (unit features) of an image that counts as constant: one node.
CONSTANT_SPREAD = 1e-6


class Stop(enum.IntEnum):
    """Why a node has no children (SPLIT: it has); names match `reference.STOP_REASONS`."""

    SPLIT = 0
    MIN_POINTS = 1  # n <= min_points
    DEPTH = 2  # depth budget spent
    NO_EDGES = 3  # the sub-graph has no positive edge
    NO_GAP = 4  # fewer than 3 eigenvalues: no eigengap to choose k from
    CONSTANT = 5  # the vector to threshold is constant, or the clustering found one group
    PERTURBATION = 6  # ||L* - L||_F / gap > max_perturb
    MNCUT = 7  # mean normalised cut >= mncut_th for every k tried


# ----------------------------------------------------------------------------------------
# Stage A and the part graph (sections 1-3).


def is_constant(x: jax.Array) -> jax.Array:
    """bool []: all rows of x [N, E] have the same direction (or are all zero).

    Such an image has no similarity structure (the minmax adjacency is 0 / 0): it becomes a
    single part and a single-node tree.
    """
    u = graph.normalize_rows(x)
    return jnp.max(jnp.abs(u - u[0])) <= CONSTANT_SPREAD


def lowrank_ok(config: PartitionConfig) -> bool:
    """The minmax adjacency without threshold is exactly low rank (docs/method.md section 8)."""
    return config.adjacency == "minmax" and config.threshold == 0.0


def affinity(x: jax.Array, config: PartitionConfig) -> graph.LowRankOperator | jax.Array:
    """A = D^-1/2 W D^-1/2 of features x [N, E], in the form stage A's solver consumes.

    The Lanczos solver gets the O(N E) `graph.LowRankOperator` when the adjacency is low
    rank, else (and for "eigh") the dense [N, N] matrix.
    """
    if config.stage_a_solver in ("lanczos", "block") and lowrank_ok(config):
        return graph.lowrank_operator(x, eps=config.eps, gram_min=config.gram_min)
    w = graph.adjacency(x, kind=config.adjacency, sigma=config.sigma, threshold=config.threshold)
    return graph.normalized_adjacency(w, eps=config.eps)[0]


def top_eigenvectors(
    a: graph.LowRankOperator | jax.Array, config: PartitionConfig, key: jax.Array
) -> jax.Array:
    """Orthonormal top K = min(`config.stage_a_k`, N) eigenvectors of A: [N, K].

    "lanczos": `config.lanczos_iters` Lanczos steps (clipped to [K, N]) on the operator;
    "block": a block Krylov space of about as many vectors, `config.stage_a_block` a step;
    "eigh": dense A [N, N], LAPACK's top-K subset driver on CPU, the full eigh elsewhere
    (`dense_eigh`); "eigh_full": the full eigh everywhere.
    """
    n = a.shape[0] if isinstance(a, jax.Array) else a.b.shape[0]
    k = min(config.stage_a_k, n)
    if config.stage_a_solver in ("eigh", "eigh_full"):
        return dense_eigh.top_eigenvectors(a, k, subset=config.stage_a_solver == "eigh")
    if config.stage_a_solver == "block":
        steps = -(-max(config.lanczos_iters, k) // config.stage_a_block)
        return lanczos.block_lanczos_eigsh(a, k, config.stage_a_block, steps, key)[1]
    steps = min(max(config.lanczos_iters, k), n)
    return lanczos.lanczos_eigsh(a, n, k, steps, key)[1]


def grid_coordinates(grid: tuple[int, int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """(row / h, col / w) of every patch centre of an h x w grid, row-major: [h * w, 2]."""
    h, w = grid
    rows = (jnp.arange(h, dtype=dtype) + 0.5) / h
    cols = (jnp.arange(w, dtype=dtype) + 0.5) / w
    return jnp.stack([jnp.repeat(rows, w), jnp.tile(cols, h)], axis=1)


def spectral_embedding(
    a: graph.LowRankOperator | jax.Array,
    config: PartitionConfig,
    key: jax.Array,
    grid: tuple[int, int],
) -> jax.Array:
    """Section 2: stage A's k-means input for an h x w grid, [N, K] or [N, K + 2].

    The top-K eigenvectors of A with rows normalised to unit length (Ng-Jordan-Weiss), then,
    when `config.stage_a_coords` > 0, that weight times the patch coordinates
    (`grid_coordinates`) appended: patches far apart on the image are kept apart by k-means
    (docs/method.md section 9).
    """
    emb = graph.normalize_rows(top_eigenvectors(a, config, key), config.eps)
    if config.stage_a_coords == 0:
        return emb
    coords = config.stage_a_coords * grid_coordinates(grid, emb.dtype)
    return jnp.concatenate([emb, coords], axis=1)


def lattice_patches(grid: tuple[int, int], count: int) -> np.ndarray:
    """Row-major indices of `count` <= h * w distinct patches spread evenly over an h x w
    grid: R rows of patches (R ~ sqrt(count h / w)), each of ~count / R evenly spaced ones."""
    h, w = grid
    rows = min(h, max(1, round(math.sqrt(count * h / w))))
    while -(-count // rows) > w:  # ceil(count / rows) must fit in a grid row
        rows += 1
    per_row = [count // rows + (r < count % rows) for r in range(rows)]
    return np.asarray(
        [
            int((r + 0.5) * h / rows) * w + int((c + 0.5) * w / n)
            for r, n in enumerate(per_row)
            for c in range(n)
        ]
    )


def parts_of(
    emb: jax.Array, config: PartitionConfig, key: jax.Array, grid: tuple[int, int]
) -> jax.Array:
    """Section 2: k-means of the embedding [N, D] of an h x w grid into P parts: int32 [N].

    "lattice": one Lloyd run from the embedding rows of `lattice_patches` (no randomness);
    "kmeans++": the best of `stage_a_restarts` k-means++ runs.
    """
    lattice = config.stage_a_init == "lattice"
    return kmeans(
        emb,
        config.n_parts,
        key,
        k_max=config.n_parts,
        n_init=config.stage_a_restarts,
        max_iter=config.kmeans_max_iter,
        tol=config.kmeans_tol,
        init=emb[lattice_patches(grid, config.n_parts)] if lattice else None,
    ).labels


def part_graph(
    x: jax.Array,
    parts: jax.Array,
    config: PartitionConfig,
    op: graph.LowRankOperator | None = None,
) -> jax.Array:
    """Section 3: W_P = G^T W G [P, P] with diag 0, G the one-hot of parts int [N] in [0, P).

    For the low-rank minmax adjacency, W = F diag(c) F^T off the diagonal with F [N, E + 1]
    (section 8), so W_P = (G^T F) diag(c) (G^T F)^T: O(N E), W never formed; `op`, the
    operator of x when already built (stage A), saves rebuilding it. Otherwise from the
    dense W in O(N^2).
    """
    n_parts = config.n_parts
    if lowrank_ok(config):
        if op is None:
            op = graph.lowrank_operator(x, eps=config.eps, gram_min=config.gram_min)
        factor = op.b * jnp.sqrt(op.deg)[:, None]  # undo the D^-1/2 scaling of the rows
        summed = jax.ops.segment_sum(factor, parts, num_segments=n_parts)  # [P, E + 1]
        w_p = jnp.matmul(summed * op.w[None, :], summed.T, precision=HIGHEST)
    else:
        w = graph.adjacency(
            x, kind=config.adjacency, sigma=config.sigma, threshold=config.threshold
        )
        rows = jax.ops.segment_sum(w, parts, num_segments=n_parts)  # [P, N]
        w_p = jax.ops.segment_sum(rows.T, parts, num_segments=n_parts)  # [P, P]
    return jnp.where(jnp.eye(n_parts, dtype=bool), 0.0, w_p)


def stage_a(
    x: jax.Array, config: PartitionConfig, key: jax.Array, grid: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """Sections 1-3: features x [N, E] of an h x w grid -> (parts int32 [N] in [0, P), W_P).

    A constant image (`is_constant`) gets parts = 0: a single part, hence a single node.
    """
    eig_key, km_key = jax.random.split(key)
    a = affinity(x, config)
    emb = spectral_embedding(a, config, eig_key, grid)
    parts = jnp.where(is_constant(x), 0, parts_of(emb, config, km_key, grid)).astype(jnp.int32)
    op = a if isinstance(a, graph.LowRankOperator) else None
    return parts, part_graph(x, parts, config, op)


# ----------------------------------------------------------------------------------------
# Stage B: decisions at one node (pure functions of W_P [P, P] and a node mask [P]).


def _present(labels: jax.Array, mask: jax.Array, max_kways: int) -> jax.Array:
    """Number of distinct labels in [0, max_kways) among the masked entries of labels [P]."""
    onehot = jax.nn.one_hot(labels, max_kways, dtype=bool) & mask[:, None]
    return onehot.any(axis=0).sum(dtype=jnp.int32)


def mean_ncut(labels: jax.Array, w: jax.Array, mask: jax.Array, max_kways: int) -> jax.Array:
    """Mean over the clusters present in labels [P] (inside mask) of cut(c, rest) / vol(c)."""
    present = jnp.maximum(_present(labels, mask, max_kways), 1)
    return graph.mean_ncut(w, labels, max_kways, mask, k=present)


def threshold_sweep(v: jax.Array, w: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Best bipartition `v > t` of the masked parts: (labels int32 [P], mean ncut or inf).

    Thresholds: N_SWEEP evenly spaced in [min v, max v), then 0, then mean v (statistics
    over the mask). One-sided cuts are skipped; the first strict minimum wins. The cost is
    inf when no cut exists (v constant in the sense of np.isclose(min, max)).
    """
    big = jnp.finfo(v.dtype).max
    n = mask.sum()
    lo = jnp.min(jnp.where(mask, v, big))
    hi = jnp.max(jnp.where(mask, v, -big))
    mean = jnp.sum(jnp.where(mask, v, 0.0)) / jnp.maximum(n, 1)
    steps = lo + (hi - lo) * jnp.arange(N_SWEEP, dtype=v.dtype) / N_SWEEP
    thresholds = jnp.concatenate([steps, jnp.zeros((1,), v.dtype), mean[None]])
    cuts = (v[None, :] > thresholds[:, None]) & mask[None, :]
    sizes = cuts.sum(axis=1)
    costs = jax.vmap(lambda cut: graph.mean_ncut(w, cut.astype(jnp.int32), 2, mask))(cuts)
    costs = jnp.where((sizes == 0) | (sizes == n), jnp.inf, costs)
    constant = jnp.abs(hi - lo) <= 1e-8 + 1e-5 * jnp.abs(hi)
    best = jnp.argmin(costs)
    return cuts[best].astype(jnp.int32), jnp.where(constant, jnp.inf, costs[best])


def eigengap_k(
    evals: jax.Array, n: jax.Array, max_kways: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eigengap choice of k from ascending Laplacian eigenvalues [max_kways].

    Only the m = min(max_kways, n - 1) smallest are meaningful. Gap i (0-based) is
    lambda[i + 1] - lambda[i]; the gap i = 0 is never chosen; ties pick the smallest k.
    Returns (k, lambda[k] - lambda[k - 1], has_gap) with k = clip(i* + 1, 2,
    min(max_kways, n - 1)) for the largest admissible gap i*; has_gap is False when m < 3.
    """
    m = jnp.minimum(max_kways, n - 1)
    gaps = evals[1:] - evals[:-1]
    idx = jnp.arange(gaps.shape[0])
    admissible = (idx >= 1) & (idx <= m - 2)
    best = jnp.argmax(jnp.where(admissible, gaps, -jnp.inf))
    k = jnp.clip(best + 1, 2, jnp.minimum(max_kways, n - 1))
    return k.astype(jnp.int32), gaps[best], m >= 3


def perturbation(
    labels: jax.Array, lap: jax.Array, mask: jax.Array, gap: jax.Array, eps: float
) -> jax.Array:
    """rho = ||L* - L||_F / gap, L* the Laplacian of the ideal block graph of labels [P].

    The ideal graph links two distinct parts of the node iff they share a label. A zero gap
    gives inf (0 when L* == L as well), as in the reference.
    """
    ideal = (labels[:, None] == labels[None, :]) & ~jnp.eye(labels.shape[0], dtype=bool)
    lap_star = graph.normalized_laplacian(ideal.astype(lap.dtype), mask, eps)
    dist = jnp.linalg.norm(lap_star - lap)
    degenerate = jnp.where(dist > 0, jnp.inf, 0.0)
    return jnp.where(gap > 0, dist / jnp.where(gap > 0, gap, 1.0), degenerate)


def node_eigenpairs(
    lap: jax.Array,
    w: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    n_pairs: int,
    config: PartitionConfig,
) -> tuple[jax.Array, jax.Array]:
    """The n_pairs smallest eigenpairs of a node's Laplacian: (evals [K] ascending, [P, K]).

    `config.stage_b_solver` "eigh": dense eigh of L [P, P] with the diagonal outside the
    mask pinned at 3 (above L's spectrum [0, 2]), so those slots sort last. "lanczos":
    masked Lanczos (`config.stage_b_lanczos_steps` steps) for the top of A = D^-1/2 W D^-1/2
    on the sub-graph, lambda_L = 1 - lambda_A (equal unless a part is isolated in the
    sub-graph). Vectors are zero outside the mask and signed so that their
    largest-magnitude entry is positive (the threshold sweep is not sign symmetric).
    """
    if config.stage_b_solver == "eigh":
        pinned = lap + jnp.diag(jnp.where(mask, 0.0, 3.0).astype(lap.dtype))
        evals, evecs = jnp.linalg.eigh(pinned)
        evals, evecs = evals[:n_pairs], evecs[:, :n_pairs] * mask[:, None]
        pivot = jnp.take_along_axis(evecs, jnp.argmax(jnp.abs(evecs), axis=0)[None], axis=0)
        return evals, evecs * jnp.where(pivot < 0, -1.0, 1.0)
    a, _ = graph.normalized_adjacency(w, mask, config.eps)
    n = a.shape[0]
    steps = min(n, config.stage_b_lanczos_steps)
    top, evecs, _ = lanczos.lanczos_eigsh(a, n, n_pairs, steps, key, mask)
    return 1.0 - top, evecs


class NodeSplit(NamedTuple):
    """Outcome at one node: child label of each part (0 outside the node or for a leaf)."""

    labels: jax.Array  # int32 [P]
    k: jax.Array  # int32 []: eigengap k (0 where not reached)
    stop: jax.Array  # int32 []: a `Stop` value


def split_node(w: jax.Array, mask: jax.Array, key: jax.Array, config: PartitionConfig) -> NodeSplit:
    """Decide one node (docs/method.md section 4, steps 1-7) on W restricted to mask [P].

    The first attempt uses the eigengap k0: the threshold sweep on the raw second eigenvector
    for k0 = 2; for k0 > 2 k-means on the row-normalised first k0 eigenvectors and the
    perturbation test. While the MNcut is >= mncut_th, k drops by one: k-means on the same
    row-normalised eigenvectors, and for k = 2 the sweep on their second column. This is a
    while_loop (traced k), so under vmap it runs as often as the slowest node needs.
    """
    eps, max_kways = config.eps, config.max_kways
    n = mask.sum(dtype=jnp.int32)
    lap = graph.normalized_laplacian(w, mask, eps)
    eig_key, loop_key = jax.random.split(key)
    evals, evecs = node_eigenpairs(lap, w, mask, eig_key, max_kways, config)
    k0, gap, has_gap = eigengap_k(evals, n, max_kways)
    y = jnp.where(jnp.arange(max_kways)[None, :] < k0, evecs, 0.0)
    y = graph.normalize_rows(y, eps)
    raw_cut = threshold_sweep(evecs[:, 1], w, mask)
    normalised_cut = threshold_sweep(y[:, 1], w, mask)
    pair = n == 2
    edges = jnp.any((w > 0) & mask[:, None] & mask[None, :])
    stop0 = jnp.select(
        [n <= config.min_points, ~edges, pair, ~has_gap],
        [Stop.MIN_POINTS, Stop.NO_EDGES, Stop.SPLIT, Stop.NO_GAP],
        Stop.SPLIT,
    ).astype(jnp.int32)

    def attempt(k: jax.Array, first: jax.Array, subkey: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Labels [P] and MNcut of a k-way cut (k = 2: sweep, else k-means).

        For k = 2 the k-means (computed anyway under vmap) gets an empty mask: it stops at
        once instead of iterating.
        """
        clustered = kmeans(
            y,
            k,
            subkey,
            k_max=max_kways,
            mask=mask & (k > 2),
            n_init=config.kmeans_restarts,
            max_iter=config.kmeans_max_iter,
            tol=config.kmeans_tol,
        ).labels
        sweep_labels, sweep_cost = jax.tree.map(
            lambda a, b: jnp.where(first, a, b), raw_cut, normalised_cut
        )
        labels = jnp.where(k == 2, sweep_labels, clustered)
        cost = jnp.where(k == 2, sweep_cost, mean_ncut(clustered, w, mask, max_kways))
        return labels, cost

    def retry(state: tuple) -> jax.Array:
        k, _, cost, stop, _ = state
        return (stop == Stop.SPLIT) & (cost >= config.mncut_th) & (k > 2)

    def next_attempt(state: tuple) -> tuple:
        k, _, _, _, loop_key = state
        loop_key, subkey = jax.random.split(loop_key)
        first = k > k0
        k = jnp.where(first, k0, k - 1)
        labels, cost = attempt(k, first, subkey)
        rho = perturbation(labels, lap, mask, gap, eps)
        rejected = first & (k > 2) & (rho > config.max_perturb)
        if config.perturb_fallback:  # retry with k - 1 clusters, as after a high MNcut
            return k, labels, jnp.where(rejected, jnp.inf, cost), Stop.SPLIT, loop_key
        return k, labels, cost, jnp.where(rejected, Stop.PERTURBATION, Stop.SPLIT), loop_key

    pair_labels = jnp.where(mask, jnp.cumsum(mask) - 1, 0).astype(jnp.int32)
    searching = (stop0 == Stop.SPLIT) & ~pair
    init = (
        jnp.where(searching, k0 + 1, 0),
        pair_labels,
        jnp.where(pair, mean_ncut(pair_labels, w, mask, max_kways), jnp.inf),
        stop0,
        loop_key,
    )
    _, labels, cost, stop, _ = jax.lax.while_loop(retry, next_attempt, init)
    no_cut = jnp.isinf(cost) | (_present(labels, mask, max_kways) < 2)
    stop = jnp.where(stop == Stop.SPLIT, jnp.where(no_cut, Stop.CONSTANT, stop), stop)
    stop = jnp.where((stop == Stop.SPLIT) & (cost >= config.mncut_th), Stop.MNCUT, stop)
    split = stop == Stop.SPLIT
    return NodeSplit(
        labels=jnp.where(split & mask, labels, 0).astype(jnp.int32),
        k=jnp.where(has_gap & ~pair & (stop0 == Stop.SPLIT), k0, 0).astype(jnp.int32),
        stop=stop.astype(jnp.int32),
    )


# ----------------------------------------------------------------------------------------
# Stage B: the fixed-depth masked recursion over the part graph.


class StageB(NamedTuple):
    """Stage B's tree over the parts; M = 1 + levels * P node slots (see `hiseg_jax.tree`).

    node_of_part: int32 [L + 1, P] node of each part at each depth (-1 for excluded parts).
    parent, depth, k, stop: int32 [M]; valid, is_leaf: bool [M]. `k` is the number of
    clusters of a node's accepted cut (0 for leaves), `stop` a `Stop` value.
    """

    node_of_part: jax.Array
    parent: jax.Array
    depth: jax.Array
    valid: jax.Array
    is_leaf: jax.Array
    k: jax.Array
    stop: jax.Array


def _level_base(level: jax.Array, n_parts: int) -> jax.Array:
    """First slot of depth `level`: 0 for the root, then 1 + (level - 1) * P."""
    return jnp.where(level == 0, 0, 1 + (level - 1) * n_parts)


def _split_compacted(
    w_p: jax.Array, masks: jax.Array, keys: jax.Array, size: int, split_all: Callable
) -> NodeSplit:
    """`split_node` of each node masks[i] [P] on its parts alone, gathered (in part order)
    into a `size` x `size` graph (size >= every node's part count): NodeSplit with labels
    scattered back to [chunk, P]."""
    n_parts = w_p.shape[0]
    idx = jax.vmap(lambda m: jnp.nonzero(m, size=size, fill_value=n_parts)[0])(masks)
    sub_masks = idx < n_parts
    safe = jnp.minimum(idx, n_parts - 1)
    sub_w = w_p[safe[:, :, None], safe[:, None, :]]
    sub_w = jnp.where(sub_masks[:, :, None] & sub_masks[:, None, :], sub_w, 0.0)
    res = split_all(sub_w, sub_masks, keys)
    rows = jnp.arange(masks.shape[0])[:, None]
    labels = jnp.zeros(masks.shape, jnp.int32).at[rows, idx].set(res.labels, mode="drop")
    return res._replace(labels=labels)


def stage_b(
    w_p: jax.Array,
    config: PartitionConfig,
    key: jax.Array,
    part_valid: jax.Array | None = None,
) -> StageB:
    """Recursive k-way normalised cuts of the part graph W_P [P, P] (docs/method.md section 4).

    part_valid [P] excludes parts (e.g. empty ones) from every node. The nodes of a depth
    are split `config.node_chunk` at a time (vmapped) by while_loops that end after the
    depth's last node, so unused slots cost nothing: one loop per size class, a node of n
    parts going to the smallest of `config.stage_b_node_sizes` >= n (split on its gathered
    parts) or, above them all, to the P-sized class (split on W_P under its mask). The
    children of a depth are numbered by parent slot, then smallest part id (the reference's
    breadth-first order). A node's PRNG key is fold_in(fold_in(key, depth), slot): results
    do not depend on `node_chunk` or `stage_b_node_sizes` (beyond rounding).
    """
    n_parts, max_kways, chunk = w_p.shape[0], config.max_kways, config.node_chunk
    n_slots = 1 + config.levels * n_parts
    if part_valid is None:
        part_valid = jnp.ones((n_parts,), bool)
    no_child = n_parts * n_parts  # sorts after every (slot, first part) code
    split_one = functools.partial(split_node, config=config)
    split_masked = jax.vmap(split_one, in_axes=(None, 0, 0))
    split_gathered = jax.vmap(split_one)
    smaller = {s for s in config.stage_b_node_sizes if 1 <= s < n_parts}
    sizes_desc = (n_parts, *sorted(smaller, reverse=True))
    part_ids = jnp.arange(n_parts)

    def split_depth(carry: tuple, level: jax.Array) -> tuple[tuple, jax.Array]:
        node_of_part, count, parent, depth, valid, ks, stops = carry
        base = _level_base(level, n_parts)
        level_key = jax.random.fold_in(key, level)
        slot_of_part = jnp.where(node_of_part >= base, node_of_part - base, n_parts)
        part_count = jnp.zeros((n_parts,), jnp.int32).at[slot_of_part].add(1, mode="drop")
        live_slot = part_ids < count

        def split_class(state: tuple, size: int, smaller: int) -> tuple:
            """Split every node of this depth with smaller < n <= size parts."""
            members = live_slot & (part_count > smaller) & (part_count <= size)
            order = jnp.nonzero(members, size=n_parts, fill_value=n_parts)[0]
            total = members.sum()

            def more(state: tuple) -> jax.Array:
                return state[0] * chunk < total

            def split_chunk(state: tuple) -> tuple:
                start, child, split, ks, stops = state
                pos = start * chunk + jnp.arange(chunk)
                live = pos < total
                slots = order[jnp.minimum(pos, n_parts - 1)]
                masks = (node_of_part[None, :] == (base + slots)[:, None]) & live[:, None]
                keys = jax.vmap(lambda s: jax.random.fold_in(level_key, s))(slots)
                if size == n_parts:
                    res = split_masked(w_p, masks, keys)
                else:
                    res = _split_compacted(w_p, masks, keys, size, split_gathered)
                child = jnp.where(masks.any(axis=0), (masks * res.labels).sum(axis=0), child)
                split = split | (masks & (res.stop == Stop.SPLIT)[:, None]).any(axis=0)
                ids = jnp.where(live, base + slots, n_slots)
                ks = ks.at[ids].set(res.k, mode="drop")
                stops = stops.at[ids].set(res.stop, mode="drop")
                return start + 1, child, split, ks, stops

            return jax.lax.while_loop(more, split_chunk, (0, *state[1:]))

        state = (0, jnp.zeros((n_parts,), jnp.int32), jnp.zeros((n_parts,), bool), ks, stops)
        for size, smaller in zip(sizes_desc, (*sizes_desc[1:], 0), strict=True):
            state = split_class(state, size, smaller)
        _, child, split, ks, stops = state

        # Child of part p: (slot of its node, label); named by (slot, its smallest part).
        group = jnp.where(split, (node_of_part - base) * max_kways + child, n_parts * max_kways)
        first = jax.ops.segment_min(part_ids, group, num_segments=n_parts * max_kways + 1)[group]
        code = jnp.where(split, (node_of_part - base) * n_parts + first, no_child)
        uniq = jnp.unique(code, size=n_parts, fill_value=no_child)
        next_base = 1 + level * n_parts
        node_of_part = jnp.where(split, next_base + jnp.searchsorted(uniq, code), node_of_part)
        born = uniq < no_child
        new = part_ids + next_base
        parent = parent.at[new].set(jnp.where(born, base + uniq // n_parts, -1))
        depth = depth.at[new].set(jnp.where(born, level + 1, 0))
        valid = valid.at[new].set(born)
        carry = (node_of_part, born.sum(dtype=jnp.int32), parent, depth, valid, ks, stops)
        return carry, node_of_part

    init = (
        jnp.where(part_valid, 0, -1).astype(jnp.int32),
        jnp.int32(1),
        jnp.full((n_slots,), -1, jnp.int32),
        jnp.zeros((n_slots,), jnp.int32),
        jnp.zeros((n_slots,), bool).at[0].set(True),
        jnp.zeros((n_slots,), jnp.int32),
        jnp.full((n_slots,), Stop.DEPTH, jnp.int32),
    )
    (last, _, parent, depth, valid, ks, stops), levels = jax.lax.scan(
        split_depth, init, jnp.arange(config.levels)
    )
    # Nodes at the last depth were never split: too small, else out of depth budget.
    size = (
        jnp.zeros((n_slots,), jnp.int32).at[jnp.where(last >= 0, last, n_slots)].add(1, mode="drop")
    )
    deepest = valid & (depth == config.levels)
    stops = jnp.where(deepest & (size <= config.min_points), Stop.MIN_POINTS, stops)
    has_child = (
        jnp.zeros((n_slots,), bool)
        .at[jnp.where(parent >= 0, parent, n_slots)]
        .set(True, mode="drop")
    )
    return StageB(
        node_of_part=jnp.concatenate([init[0][None], levels]),
        parent=parent,
        depth=depth,
        valid=valid,
        is_leaf=valid & ~has_child,
        k=ks,
        stop=jnp.where(valid, stops, Stop.DEPTH),
    )


# ----------------------------------------------------------------------------------------
# Entry point.


def _partition_one(
    x: jax.Array, key: jax.Array, config: PartitionConfig, grid: tuple[int, int]
) -> tuple[jax.Array, ...]:
    """One image x [N, E] of an h x w grid -> (labels [L + 1, N], parent, depth, is_leaf,
    valid [M], parts)."""
    a_key, b_key = jax.random.split(key)
    parts, w_p = stage_a(x, config, a_key, grid)
    sizes = jax.ops.segment_sum(jnp.ones_like(parts), parts, num_segments=config.n_parts)
    tree = stage_b(w_p, config, b_key, sizes > 0)
    labels = tree.node_of_part[:, parts]
    if config.merge_below > 1:
        labels, parent, depth, valid, is_leaf = merge_small_leaves(
            labels, tree.parent, tree.depth, tree.valid, grid, config.merge_below
        )
        return labels, parent, depth, is_leaf, valid, parts
    return labels, tree.parent, tree.depth, tree.is_leaf, tree.valid, parts


@functools.partial(jax.jit, static_argnames=("config", "grid"))
def _partition_batch(
    x: jax.Array, key: jax.Array, config: PartitionConfig, grid: tuple[int, int]
) -> tuple[jax.Array, ...]:
    """Features [B, N, E] of h x w grids -> the Tree arrays, every image with the same key."""
    one = functools.partial(_partition_one, config=config, grid=grid)
    return jax.vmap(one, in_axes=(0, None))(x, key)


def partition_arrays(features: jax.Array, key: jax.Array, config: PartitionConfig) -> Tree:
    """Traced entry point: patch features float32 [B, h, w, E] -> batched `Tree`.

    No host checks, so it runs inside `jax.jit` on arrays already on the device; the caller
    guarantees finite features and h * w >= config.n_parts (`partition` checks both). Every
    image uses `key`, so image b's tree depends only on its features, the key and `config`.
    """
    batch, h, w, e = features.shape
    arrays = _partition_batch(features.reshape(batch, h * w, e), key, config, (h, w))
    return Tree(*arrays, grid=(h, w))


def check_features(
    features: np.ndarray | jax.Array | Sequence, config: PartitionConfig
) -> np.ndarray:
    """Validated float32 [B, h, w, E] from [B, h, w, E], [h, w, E] or a list of [h, w, E].

    ValueError for: traced features (inside `jax.jit` / `vmap`: these checks read the values
    on the host), mixed grid sizes in a list, a wrong rank, non-float data, NaN/inf (naming
    the first bad batch index), fewer patches than parts.
    """
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(features)):
        raise ValueError(
            "partition() checks its features on the host, so it cannot be traced (jax.jit, "
            "vmap); inside traced code call partition_arrays(features, key, config)"
        )
    if isinstance(features, list | tuple):
        shapes = {np.shape(f) for f in features}
        if len(shapes) > 1:
            raise ValueError(f"features of mixed sizes in one batch: {sorted(shapes)}")
        if not features:
            raise ValueError("features is an empty list")
        features = np.stack([np.asarray(f) for f in features])
    x = np.asarray(features)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or min(x.shape) < 1:
        raise ValueError(f"features must be [B, h, w, E] (or [h, w, E]), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"features must be floating point, got {x.dtype}")
    finite = np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
    if not finite.all():
        raise ValueError(f"features of batch index {int(np.argmin(finite))} contain NaN or inf")
    check_grid(x.shape[1:3], config)
    return x.astype(np.float32)


def partition(
    features: np.ndarray | jax.Array | Sequence,
    config: PartitionConfig | None = None,
    key: jax.Array | None = None,
) -> Tree:
    """Tree of nested regions for each image of a batch of patch features [B, h, w, E].

    Host-checking wrapper of `partition_arrays`: bad input raises ValueError (see
    `check_features`; this reads the features on the host), then all stages run in one
    jit-compiled program (config static), vmapped over the batch; every image uses `key`
    (default `jax.random.key(0)`), so image b's tree depends only on its features and the key.
    """
    config = PartitionConfig() if config is None else config
    x = check_features(features, config)
    key = jax.random.key(0) if key is None else key
    return partition_arrays(jnp.asarray(x), key, config)
