"""Plain NumPy/SciPy/scikit-learn partitioner, float64: the oracle for `spectral.partition`.

Implements docs/method.md sections 1-5 (section numbers below are that file's) one small
pure function per step, so the JAX tests can compare piece by piece. Read against the
authors' code (deepplants/deep-recursive-spectral-clustering, `misc.py`); where the two
differ, docs/method.md is followed, and where both are silent or the code fails, the choice
is written here:

- Features with zero distance range (all parallel, or all zero) carry no similarity: W = 0
  (the code divides 0 by 0 there and stops on an assertion).
- Stage-A eigenvectors are the top P of A = D^-1/2 W D^-1/2 (the code: smallest P of L with
  `eigsh`); parts are renumbered 0..P'-1 in order of first patch (P' < P only when k-means
  leaves clusters empty).
- Stage B: a sub-graph without any positive edge is a leaf ('no_edges'); the code would cut
  it on eigenvector noise.
- Threshold sweep: a threshold that leaves one side empty (only 0 can) is skipped; in the code
  it wins with cost 0 and yields a single child equal to its parent.
- Eigenvectors of L_n are signed so that their largest-magnitude entry is positive (the sweep
  is not sign symmetric); eigengap ties pick the smallest k.
- A k-means labelling with a single cluster present is a leaf ('constant'); the code would
  give the node one child equal to itself.
- As in the code, MNcut retries (k-1, ..., 2) reuse the row-normalised k-column embedding:
  k-means on all its k columns, and for k = 2 the sweep on its second column.
- Children are ordered by their smallest part id; nodes are listed breadth first.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
from sklearn.cluster import KMeans

from hiseg_jax.spectral.config import PartitionConfig

# RefNode.stop_reason vocabulary: "split" for inner nodes, else why the node is a leaf.
STOP_REASONS = (
    "split",
    "min_points",
    "depth",
    "no_edges",
    "no_gap",
    "constant",
    "perturbation",
    "mncut",
)


def flatten_features(features: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    """[N, E] or [h, w, E] features -> (float64 [N, E], grid (h, w) or None), validated."""
    x = np.asarray(features)
    if x.ndim not in (2, 3):
        raise ValueError(f"features must be [N, E] or [h, w, E], got shape {x.shape}")
    grid = (int(x.shape[0]), int(x.shape[1])) if x.ndim == 3 else None
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"features need >= 2 patches and >= 1 channel, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf")
    return x, grid


def reference_graph(features: np.ndarray, config: PartitionConfig) -> np.ndarray:
    """Section 1 adjacency W [N, N] (float64, diag 0) from features [N, E] (or [h, w, E])."""
    x, _ = flatten_features(features)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), config.eps)
    d = np.maximum(1.0 - x @ x.T, 0.0)
    if config.adjacency == "minmax":
        span = d.max() - d.min()
        w = 1.0 - (d - d.min()) / span if span > 0 else np.zeros_like(d)
    else:
        w = np.exp(-d / (2.0 * config.sigma**2))
    w = np.where(w >= config.threshold, w, 0.0)
    np.fill_diagonal(w, 0.0)
    return w


def _inv_sqrt_degrees(w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    deg = w.sum(axis=1)
    return deg, 1.0 / np.sqrt(np.maximum(deg, eps))


def normalized_adjacency(w: np.ndarray, eps: float = PartitionConfig.eps) -> np.ndarray:
    """A = D^-1/2 W D^-1/2 [n, n], degrees clamped to >= eps."""
    _, s = _inv_sqrt_degrees(w, eps)
    return s[:, None] * w * s[None, :]


def normalized_laplacian(w: np.ndarray, eps: float = PartitionConfig.eps) -> np.ndarray:
    """L = D^-1/2 (D - W) D^-1/2 [n, n], degrees clamped to >= eps only where inverted."""
    deg, s = _inv_sqrt_degrees(w, eps)
    return np.diag(deg * s * s) - s[:, None] * w * s[None, :]


def normalize_rows(v: np.ndarray, eps: float = PartitionConfig.eps) -> np.ndarray:
    """Rows of v [n, k] scaled to unit length (Ng-Jordan-Weiss), norms clamped to >= eps."""
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), eps)


def kmeans_labels(
    x: np.ndarray, k: int, config: PartitionConfig, seed: int, restarts: int | None = None
) -> np.ndarray:
    """k-means++ / Lloyd labels int [n] of points x [n, d]; `restarts` defaults to stage B's
    `config.kmeans_restarts`."""
    n_init = config.kmeans_restarts if restarts is None else restarts
    km = KMeans(
        n_clusters=k,
        init="k-means++",
        n_init=n_init,
        max_iter=config.kmeans_max_iter,
        tol=config.kmeans_tol,
        random_state=seed,
        algorithm="lloyd",
    )
    return km.fit_predict(x).astype(np.int64)


def relabel_by_first_occurrence(labels: np.ndarray) -> np.ndarray:
    """Labels int [n] renumbered 0..K-1 in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.ravel()]


def stage_a_embedding(w: np.ndarray, n_parts: int, eps: float) -> np.ndarray:
    """Top-`n_parts` eigenvectors of A (exact, LAPACK evr), row-normalised: [N, P]."""
    n = w.shape[0]
    _, vecs = scipy.linalg.eigh(
        normalized_adjacency(w, eps), subset_by_index=[n - n_parts, n - 1], driver="evr"
    )
    return normalize_rows(vecs, eps)


def parts_from_graph(w: np.ndarray, config: PartitionConfig, seed: int) -> np.ndarray:
    """Section 2 on a given adjacency W [N, N]: part id int [N] of each patch.

    The authors' stage A only: ValueError for a config with another (use
    `PartitionConfig.paper()`; `reference_embedding` is the oracle of the default's).
    """
    paper = PartitionConfig.paper(n_parts=config.n_parts)
    if any(
        getattr(config, f) != getattr(paper, f)
        for f in ("stage_a_k", "stage_a_coords", "stage_a_init")
    ):
        raise ValueError("the NumPy reference runs the paper's stage A: PartitionConfig.paper()")
    if config.n_parts > w.shape[0]:
        raise ValueError(f"n_parts={config.n_parts} exceeds the number of patches {w.shape[0]}")
    return stage_a_parts(stage_a_embedding(w, config.n_parts, config.eps), config, seed)


def stage_a_parts(emb: np.ndarray, config: PartitionConfig, seed: int) -> np.ndarray:
    """Section 2's k-means of the embedding [N, P] (`stage_a_restarts` restarts): part id
    int [N], renumbered by first occurrence."""
    labels = kmeans_labels(emb, config.n_parts, config, seed, config.stage_a_restarts)
    return relabel_by_first_occurrence(labels)


def reference_stage_a(features: np.ndarray, config: PartitionConfig, seed: int) -> np.ndarray:
    """Section 2: features [N, E] or [h, w, E] -> part id int [N] (ids 0..P'-1, P' <= P)."""
    return parts_from_graph(reference_graph(features, config), config, seed)


def part_graph(w: np.ndarray, parts: np.ndarray, n_parts: int) -> np.ndarray:
    """Section 3: W_P = G^T W G [P, P] with diag 0, G the one-hot [N, P] of `parts`."""
    parts = np.asarray(parts)
    if parts.min() < 0 or parts.max() >= n_parts:
        raise ValueError(f"part ids must lie in [0, {n_parts}), got [{parts.min()}, {parts.max()}]")
    g = np.eye(n_parts)[parts]
    wp = g.T @ w @ g
    np.fill_diagonal(wp, 0.0)
    return wp


def mean_ncut(
    w: np.ndarray,
    labels: np.ndarray,
    n_clusters: int | None = None,
    eps: float = PartitionConfig.eps,
) -> float:
    """(1/k) sum over clusters c of cut(c, rest) / vol(c) on W [n, n], vol clamped to >= eps.

    k = n_clusters, the number asked of k-means (an empty cluster adds 0 but counts, as in the
    authors' code); by default the number of distinct labels.
    """
    _, inverse = np.unique(labels, return_inverse=True)
    g = np.eye(inverse.max() + 1)[inverse.ravel()]
    vol = g.T @ w.sum(axis=1)
    cut = vol - np.einsum("ic,ij,jc->c", g, w, g)
    k = g.shape[1] if n_clusters is None else n_clusters
    return float(np.sum(cut / np.maximum(vol, eps)) / k)


def eigengap_k(evals: np.ndarray, max_kways: int, n: int) -> int:
    """Section 4.3: k from ascending eigenvalues [m]; 0 when no admissible gap (m < 3).

    g_i = lambda_{i+1} - lambda_i (1-based); k = argmax over i >= 2 (first on ties), clipped
    to [2, min(max_kways, n - 1)].
    """
    gaps = np.diff(np.asarray(evals))
    if gaps.size < 2:
        return 0
    k = int(np.argmax(gaps[1:])) + 2
    return min(max(k, 2), min(max_kways, n - 1))


def threshold_sweep(
    w: np.ndarray, v: np.ndarray, eps: float = PartitionConfig.eps
) -> tuple[np.ndarray | None, float]:
    """Section 4.4: best bipartition mask v > t over 12 thresholds, and its mean ncut.

    Thresholds: 10 evenly spaced in [min v, max v), then 0, then mean v; the first strict
    minimum wins; one-sided masks are skipped. (None, inf) when v is constant.
    """
    lo, hi = float(v.min()), float(v.max())
    if np.isclose(lo, hi):
        return None, np.inf
    thresholds = np.concatenate([np.linspace(lo, hi, 10, endpoint=False), [0.0, v.mean()]])
    best, best_cost = None, np.inf
    for t in thresholds:
        mask = v > t
        if mask.all() or not mask.any():
            continue
        cost = mean_ncut(w, mask, eps=eps)
        if cost < best_cost:
            best, best_cost = mask, cost
    return best, best_cost


def perturbation_ratio(
    lap: np.ndarray, labels: np.ndarray, gap: float, eps: float = PartitionConfig.eps
) -> float:
    """Section 4.5: rho = ||L* - L||_F / gap, L* the Laplacian of the ideal block graph of labels.

    A zero gap gives inf (0 when L* == L as well).
    """
    ideal = (labels[:, None] == labels[None, :]).astype(np.float64)
    np.fill_diagonal(ideal, 0.0)
    dist = float(np.linalg.norm(normalized_laplacian(ideal, eps) - lap))
    if gap > 0:
        return dist / gap
    return np.inf if dist > 0 else 0.0


def smallest_eigenpairs(lap: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """m smallest eigenpairs of symmetric lap [n, n]: ascending values [m], vectors [n, m].

    Each vector is signed so that its largest-magnitude entry (first on ties) is positive.
    """
    evals, vecs = scipy.linalg.eigh(lap, subset_by_index=[0, m - 1])
    pivot = vecs[np.argmax(np.abs(vecs), axis=0), np.arange(m)]
    return evals, vecs * np.where(pivot < 0, -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Decision:
    """Outcome of stage B at one node: labels int [n] over its parts (None for a leaf)."""

    labels: np.ndarray | None
    stop_reason: str  # one of STOP_REASONS
    k_chosen: int = 0  # eigengap k (0 where not computed: early leaves, the n == 2 rule)
    mncut: float = np.nan  # mean ncut of the accepted split, or of the last one tried
    rho: float = np.nan  # perturbation ratio (computed only when k_chosen > 2)


def _bipartition(w: np.ndarray, v: np.ndarray, eps: float) -> np.ndarray | None:
    mask, _ = threshold_sweep(w, v, eps)
    return None if mask is None else mask.astype(np.int64)


def split_node(w: np.ndarray, depth: int, config: PartitionConfig, seed: int) -> Decision:
    """Section 4 steps 1-6 on one node's sub-adjacency W_n [n, n] at the given depth."""
    n, eps, th = w.shape[0], config.eps, config.mncut_th
    if n <= config.min_points:
        return Decision(None, "min_points")
    if depth >= config.levels:
        return Decision(None, "depth")
    if not np.any(w > 0):
        return Decision(None, "no_edges")
    if n == 2:
        cost = mean_ncut(w, np.arange(2), eps=eps)
        return Decision(
            np.arange(2) if cost < th else None, "split" if cost < th else "mncut", mncut=cost
        )
    lap = normalized_laplacian(w, eps)
    evals, vecs = smallest_eigenpairs(lap, min(config.max_kways, n - 1))
    k = k_chosen = eigengap_k(evals, config.max_kways, n)
    if k == 0:
        return Decision(None, "no_gap")
    rho = np.nan
    if k == 2:
        emb = vecs[:, :2]
        labels = _bipartition(w, emb[:, 1], eps)
    else:
        emb = normalize_rows(vecs[:, :k], eps)
        labels = kmeans_labels(emb, k, config, seed)
        rho = perturbation_ratio(lap, labels, evals[k] - evals[k - 1], eps)
        if rho > config.max_perturb and not config.perturb_fallback:
            return Decision(None, "perturbation", k_chosen, rho=rho)
    cost = np.inf if labels is None else mean_ncut(w, labels, k, eps)
    if rho > config.max_perturb:  # perturb_fallback: retry with k - 1 clusters
        cost = np.inf
    while cost >= th and k > 2:
        k -= 1
        labels = kmeans_labels(emb, k, config, seed) if k > 2 else _bipartition(w, emb[:, 1], eps)
        cost = np.inf if labels is None else mean_ncut(w, labels, k, eps)
    if labels is None or np.unique(labels).size < 2:
        return Decision(None, "constant", k_chosen, rho=rho)
    if cost >= th:
        return Decision(None, "mncut", k_chosen, cost, rho)
    return Decision(labels, "split", k_chosen, cost, rho)


@dataclasses.dataclass(frozen=True, eq=False)
class RefNode:
    """One tree node: its sorted part ids int [n], links, and the stage-B decision taken."""

    parts: np.ndarray
    parent: int  # -1 for the root
    depth: int
    children: tuple[int, ...]
    k_chosen: int
    stop_reason: str
    mncut: float
    rho: float


def _validate_part_graph(wp: np.ndarray) -> np.ndarray:
    wp = np.asarray(wp, dtype=np.float64)
    if wp.ndim != 2 or wp.shape[0] != wp.shape[1] or wp.shape[0] < 1:
        raise ValueError(f"W_P must be a non-empty square matrix, got shape {wp.shape}")
    if not np.all(np.isfinite(wp)) or np.any(wp < 0):
        raise ValueError("W_P must be finite and non-negative")
    if not np.allclose(wp, wp.T):
        raise ValueError("W_P must be symmetric")
    return wp


def reference_stage_b(wp: np.ndarray, config: PartitionConfig, seed: int) -> list[RefNode]:
    """Section 4 on W_P [P, P]: the tree's nodes, breadth first, node 0 = root (all parts)."""
    wp = _validate_part_graph(wp)
    queue = [(np.arange(wp.shape[0]), -1, 0)]  # (parts, parent, depth), in node-id order
    nodes: list[RefNode] = []
    for node_id, (parts, parent, depth) in enumerate(queue):
        d = split_node(wp[np.ix_(parts, parts)], depth, config, seed)
        children: tuple[int, ...] = ()
        if d.labels is not None:
            groups = sorted((parts[d.labels == c] for c in np.unique(d.labels)), key=lambda g: g[0])
            children = tuple(range(len(queue), len(queue) + len(groups)))
            queue.extend((g, node_id, depth + 1) for g in groups)
        nodes.append(
            RefNode(parts, parent, depth, children, d.k_chosen, d.stop_reason, d.mncut, d.rho)
        )
    return nodes


@dataclasses.dataclass(frozen=True, eq=False)
class RefResult:
    """Output of `reference_partition`: part id int [N] per patch and the tree's nodes."""

    parts: np.ndarray
    nodes: list[RefNode]
    grid: tuple[int, int] | None

    def node_masks(self) -> np.ndarray:
        """bool [M, N]: patch i belongs to node m."""
        return np.stack([np.isin(self.parts, node.parts) for node in self.nodes])

    def level_labels(self, levels: int) -> np.ndarray:
        """int [levels + 1, N]: node id of each patch per level (DESIGN.md Tree contract)."""
        masks = self.node_masks()
        labels = np.zeros((levels + 1, self.parts.size), dtype=np.int64)
        for m, node in enumerate(self.nodes):  # breadth first: deeper nodes overwrite
            if node.depth <= levels:
                labels[node.depth :, masks[m]] = m
        return labels


def reference_partition(features: np.ndarray, config: PartitionConfig, seed: int) -> RefResult:
    """Sections 1-5: features [N, E] or [h, w, E] -> parts and the tree of nested regions."""
    x, grid = flatten_features(features)
    w = reference_graph(x, config)
    parts = parts_from_graph(w, config, seed)
    nodes = reference_stage_b(part_graph(w, parts, int(parts.max()) + 1), config, seed)
    return RefResult(parts, nodes, grid)


def _border_counts(inside: np.ndarray, target: np.ndarray, grid: tuple[int, int]) -> dict:
    """{id: number of 4-neighbour borders between the patches `inside` [N] and the patches of
    that id in target [N]} (ids < 0 ignored)."""
    h, w = grid
    inside, target = inside.reshape(h, w), target.reshape(h, w)
    counts: dict[int, int] = {}
    for y, x in zip(*np.nonzero(inside), strict=True):
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w and target[ny, nx] >= 0:
                counts[int(target[ny, nx])] = counts.get(int(target[ny, nx]), 0) + 1
    return counts


def merge_small_leaves(
    labels: np.ndarray,
    parent: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    grid: tuple[int, int],
    min_patches: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's tree (labels [L + 1, N], parent, depth, valid [M]) with its small leaves
    merged, one removal a step: a leaf that is its parent's only child goes back into the
    parent (the first such slot); else the leaf of < min_patches patches with a sibling,
    smallest first (smaller slot on ties), joins the sibling it borders most (ties: larger,
    then smaller slot), and at every depth below, the ancestors of the leaf under that
    sibling it borders most (ties: larger, then smaller slot).
    Returns (labels, parent, depth, valid, is_leaf)."""
    labels, parent, valid = labels.copy(), parent.copy(), valid.copy()

    def children() -> np.ndarray:
        return np.bincount(parent[valid & (parent >= 0)], minlength=valid.size)

    while True:
        count = children()
        leaf = valid & (count == 0) & (parent >= 0)
        siblings = count[np.maximum(parent, 0)]
        area = np.bincount(labels[-1], minlength=valid.size)
        lonely = np.flatnonzero(leaf & (siblings == 1))
        small = np.flatnonzero(leaf & (siblings > 1) & (area < min_patches))
        if lonely.size:
            c = lonely[0]
            labels[labels == c] = parent[c]
            valid[c], parent[c] = False, -1
            continue
        if small.size == 0:
            break
        a = small[np.argmin(area[small])]  # argmin: the smaller slot on ties
        d = depth[a]
        in_a = labels[d] == a
        contacts = _border_counts(in_a, labels[d], grid)
        siblings = [int(s) for s in np.flatnonzero(valid & (parent == parent[a])) if s != a]
        b = max(siblings, key=lambda s: (contacts.get(s, 0), (labels[d] == s).sum(), -s))
        in_b = labels[d] == b
        near = _border_counts(in_a, np.where(in_b, labels[-1], -1), grid)
        under = np.unique(labels[-1][in_b])
        leaf = max(under, key=lambda m: (near.get(int(m), 0), (labels[-1] == m).sum(), -m))
        q = np.flatnonzero(labels[-1] == leaf)[0]
        labels[d:, in_a] = labels[d:, q][:, None]
        valid[a], parent[a] = False, -1
    is_leaf = valid & (children() == 0)
    return labels, parent, np.where(valid, depth, 0), valid, is_leaf
