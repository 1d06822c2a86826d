"""The NumPy reference partitioner: hand-computed toy cases per helper, then the whole pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.spectral.reference import (
    STOP_REASONS,
    RefResult,
    eigengap_k,
    mean_ncut,
    normalized_adjacency,
    normalized_laplacian,
    part_graph,
    perturbation_ratio,
    reference_graph,
    reference_partition,
    reference_stage_a,
    reference_stage_b,
    smallest_eigenpairs,
    split_node,
    threshold_sweep,
)
from hiseg_jax.spectral.synthetic import planted_hierarchy, planted_part_graph

CFG = PartitionConfig.paper()


@pytest.fixture(autouse=True)
def _one_thread():
    """BLAS/OpenMP threads oversubscribe the shared 2-core machine; one is faster here."""
    with threadpool_limits(1):
        yield


def _blocks(sizes: tuple[int, ...], inside: float = 1.0, between: float = 0.0) -> np.ndarray:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    w = np.where(labels[:, None] == labels[None, :], inside, between)
    np.fill_diagonal(w, 0.0)
    return w


def _check_tree(nodes, n_parts: int) -> None:
    """Structural invariants: BFS order, parent links, children partition their parent."""
    assert nodes[0].parent == -1 and nodes[0].depth == 0
    np.testing.assert_array_equal(nodes[0].parts, np.arange(n_parts))
    depths = [node.depth for node in nodes]
    assert depths == sorted(depths)
    for m, node in enumerate(nodes):
        assert node.stop_reason in STOP_REASONS
        assert (node.stop_reason == "split") == bool(node.children)
        for c in node.children:
            assert nodes[c].parent == m and nodes[c].depth == node.depth + 1
        if node.children:
            merged = np.sort(np.concatenate([nodes[c].parts for c in node.children]))
            np.testing.assert_array_equal(merged, node.parts)


# --- helpers, by hand ---------------------------------------------------------------------

W4 = np.array([[0, 2, 0, 0], [2, 0, 1, 0], [0, 1, 0, 3], [0, 0, 3, 0]], dtype=np.float64)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([0, 0, 1, 1], (1 / 5 + 1 / 7) / 2),  # cut 1, volumes 5 and 7
        ([0, 1, 1, 1], (2 / 2 + 2 / 10) / 2),  # cut 2, volumes 2 and 10
        ([5, 5, 9, 5], (4 / 8 + 4 / 4) / 2),  # label values are arbitrary
        ([0, 0, 0, 0], 0.0),
    ],
)
def test_mean_ncut_by_hand(labels, expected):
    assert mean_ncut(W4, np.array(labels)) == pytest.approx(expected, rel=1e-12)


def test_mean_ncut_counts_empty_clusters():
    """k-means asked for 3 clusters but one is empty: it adds 0 and still counts in 1/k."""
    assert mean_ncut(W4, np.array([0, 0, 2, 2]), n_clusters=3) == pytest.approx(
        (1 / 5 + 1 / 7) / 3, rel=1e-12
    )


@pytest.mark.parametrize(
    ("evals", "max_kways", "n", "k"),
    [
        ([0.0, 0.1, 0.9, 1.0, 1.05], 10, 20, 2),  # largest admissible gap at i = 2
        ([0.0, 0.8, 0.85, 0.9, 1.5], 10, 20, 4),  # gap 1 (0 -> 0.8) is never chosen
        ([0.0, 1.0, 1.01, 1.03], 10, 20, 3),
        ([0.0, 0.1, 0.2, 0.3, 0.9], 3, 20, 3),  # i* = 4 clipped to max_kways
        ([0.0, 0.1, 0.2, 0.3, 0.9], 10, 4, 3),  # ... and to n - 1
        ([0.0, 0.5], 10, 20, 0),  # m < 3: no admissible gap
        ([0.0], 10, 2, 0),
    ],
)
def test_eigengap_k(evals, max_kways, n, k):
    assert eigengap_k(np.array(evals), max_kways, n) == k


def test_threshold_sweep_cuts_two_blocks():
    w = _blocks((3, 3), inside=1.0, between=0.05)
    _, vecs = smallest_eigenpairs(normalized_laplacian(w), 2)
    mask, cost = threshold_sweep(w, vecs[:, 1])
    assert mask is not None and len(set(mask[:3])) == len(set(mask[3:])) == 1
    assert mask[0] != mask[3]
    assert cost == pytest.approx(0.45 / 6.45, rel=1e-12)  # cut 9 * 0.05, volumes 3 * 2.15


def test_threshold_sweep_picks_best_of_its_thresholds():
    v = np.array([-0.5, -0.45, -0.25, 0.25, 0.45, 0.5])  # no entry on a threshold
    w = _blocks((3, 3), between=0.05)
    mask, _ = threshold_sweep(w, v)
    np.testing.assert_array_equal(mask, v > 0)
    w_off = _blocks((2, 4), between=0.05)  # now the best cut is at t = -0.4 or -0.3
    mask, cost = threshold_sweep(w_off, v)
    np.testing.assert_array_equal(mask, v > -0.35)
    assert cost == pytest.approx(mean_ncut(w_off, v > -0.35), rel=1e-12)


def test_threshold_sweep_skips_one_sided_and_constant():
    w = _blocks((4,))
    mask, cost = threshold_sweep(w, np.array([1.0, 2.0, 3.0, 4.0]))  # 0 lies below min v
    assert mask is not None and mask.any() and not mask.all() and np.isfinite(cost)
    assert threshold_sweep(w, np.full(4, 0.5)) == (None, np.inf)


def test_perturbation_ratio_is_zero_on_ideal_blocks():
    w = _blocks((3, 4, 5))
    labels = np.repeat(np.arange(3), (3, 4, 5))
    lap = normalized_laplacian(w)
    evals, _ = smallest_eigenpairs(lap, 4)
    assert perturbation_ratio(lap, labels, evals[3] - evals[2]) == pytest.approx(0.0, abs=1e-12)
    noisy = normalized_laplacian(_blocks((3, 4, 5), between=0.1))
    rho = perturbation_ratio(noisy, labels, 0.5)
    assert 0 < rho < np.inf
    assert perturbation_ratio(noisy, labels, 0.0) == np.inf


def test_normalized_laplacian_and_adjacency():
    rng = np.random.default_rng(0)
    w = rng.uniform(size=(6, 6))
    w = (w + w.T) / 2
    np.fill_diagonal(w, 0.0)
    lap = normalized_laplacian(w)
    np.testing.assert_allclose(lap, np.eye(6) - normalized_adjacency(w), atol=1e-14)
    evals = np.linalg.eigvalsh(lap)
    assert evals[0] == pytest.approx(0.0, abs=1e-12) and evals[-1] <= 2 + 1e-12
    w[0, :] = w[:, 0] = 0.0  # an isolated node: clamped degree, no NaN
    lap = normalized_laplacian(w)
    assert np.all(np.isfinite(lap)) and not lap[0].any()


# --- graph and part graph -------------------------------------------------------------------


def test_minmax_graph_low_rank_identity():
    """docs/method.md section 8: W = (1 - 1/dmax) 11^T + X X^T / dmax - I for unit features."""
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 8)) * rng.uniform(0.5, 3.0, size=(50, 1))
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    dmax = 1.0 - (x @ x.T).min()
    expected = (1 - 1 / dmax) * np.ones((50, 50)) + x @ x.T / dmax - np.eye(50)
    np.testing.assert_allclose(reference_graph(feats, CFG), expected, atol=1e-12)


def test_exp_graph_and_threshold():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(4, 3, 5))  # a grid is flattened row-major
    x = feats.reshape(12, 5) / np.linalg.norm(feats.reshape(12, 5), axis=1, keepdims=True)
    expected = np.exp(-(1 - x @ x.T) / (2 * 0.5**2))
    np.fill_diagonal(expected, 0.0)
    w = reference_graph(feats, PartitionConfig(adjacency="exp", sigma=0.5))
    np.testing.assert_allclose(w, expected, atol=1e-12)
    cut = reference_graph(feats, PartitionConfig(adjacency="exp", sigma=0.5, threshold=0.3))
    np.testing.assert_array_equal(cut, np.where(expected >= 0.3, expected, 0.0))


def test_part_graph_by_hand():
    wp = part_graph(W4, np.array([0, 0, 1, 2]), 3)
    np.testing.assert_array_equal(wp, [[0, 1, 0], [1, 0, 3], [0, 3, 0]])


# --- stage B --------------------------------------------------------------------------------


def test_stage_b_recovers_planted_part_graph():
    wp, groups = planted_part_graph(0, branching=(2, 3), leaf_size=6)
    nodes = reference_stage_b(wp, CFG, seed=0)
    _check_tree(nodes, wp.shape[0])
    node_sets = {tuple(node.parts) for node in nodes}
    for _, mask in groups:
        assert tuple(np.flatnonzero(mask)) in node_sets


def test_stage_b_k_way_split_passes_perturbation_test():
    wp, groups = planted_part_graph(3, branching=(4,), leaf_size=8, noise=0.0)
    root = reference_stage_b(wp, CFG, seed=0)[0]
    assert root.k_chosen == 4 and len(root.children) == 4
    assert 0 <= root.rho <= CFG.max_perturb and root.mncut < CFG.mncut_th


def test_pair_rule():
    pair = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert split_node(pair, 0, CFG, 0).stop_reason == "mncut"  # both ncuts are 1
    nodes = reference_stage_b(pair, PartitionConfig(mncut_th=1.5), seed=0)
    assert [n.parts.tolist() for n in nodes] == [[0, 1], [0], [1]]
    assert [n.stop_reason for n in nodes] == ["split", "min_points", "min_points"]


@pytest.mark.parametrize(
    ("w", "depth", "reason"),
    [
        (_blocks((1,)), 0, "min_points"),
        (_blocks((2, 2), between=0.01), CFG.levels, "depth"),
        (_blocks((5,), inside=0.0), 0, "no_edges"),
        (_blocks((3,)), 0, "no_gap"),  # m = 2 eigenpairs: no admissible gap
    ],
)
def test_leaf_reasons(w, depth, reason):
    assert split_node(w, depth, CFG, 0).stop_reason == reason


def test_depth_budget():
    wp, _ = planted_part_graph(0, branching=(2, 3), leaf_size=6)
    nodes = reference_stage_b(wp, PartitionConfig(levels=1), seed=0)
    assert nodes[0].stop_reason == "split"
    assert all(n.stop_reason == "depth" for n in nodes[1:]) and len(nodes) > 1


# --- whole pipeline -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    feats, groups = planted_hierarchy(0, grid=(24, 24))
    with threadpool_limits(1):
        return feats, groups, reference_partition(feats, PartitionConfig.paper(n_parts=48), seed=0)


def test_reference_partition_recovers_planted_hierarchy(planted):
    _, groups, result = planted
    masks = result.node_masks()
    _check_tree(result.nodes, int(result.parts.max()) + 1)
    for level, g in groups:
        iou = ((masks & g).sum(axis=1) / (masks | g).sum(axis=1)).max()
        assert iou >= 0.95, f"planted level-{level} group recovered with IoU {iou:.3f} only"


def test_level_labels_follow_tree_contract(planted):
    _, _, result = planted
    levels = CFG.levels
    labels = result.level_labels(levels)
    masks = result.node_masks()
    assert labels.shape == (levels + 1, 24 * 24) and not labels[0].any()
    for m, node in enumerate(result.nodes):
        np.testing.assert_array_equal(labels[node.depth] == m, masks[m])
    leaves = [m for m, node in enumerate(result.nodes) if not node.children]
    assert set(np.unique(labels[-1])) == set(leaves)
    assert result.grid == (24, 24)


def test_stage_a_parts_are_contiguous_ids(planted):
    feats, _, result = planted
    np.testing.assert_array_equal(np.unique(result.parts), np.arange(48))
    assert result.parts[0] == 0
    with threadpool_limits(1):
        np.testing.assert_array_equal(
            reference_stage_a(feats, PartitionConfig.paper(n_parts=48), seed=0), result.parts
        )


def test_deterministic_for_a_seed():
    feats, _ = planted_hierarchy(1, grid=(12, 12), branching=(2, 2))
    cfg = PartitionConfig.paper(n_parts=12)
    a, b = (reference_partition(feats, cfg, seed=3) for _ in range(2))
    np.testing.assert_array_equal(a.parts, b.parts)
    assert [(n.parts.tolist(), n.children, n.stop_reason) for n in a.nodes] == [
        (n.parts.tolist(), n.children, n.stop_reason) for n in b.nodes
    ]


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_constant_features_give_a_single_node(value):
    feats = np.full((8, 8, 5), value, dtype=np.float32)
    cfg = PartitionConfig.paper(n_parts=6)
    assert not reference_graph(feats, cfg).any()
    result = reference_partition(feats, cfg, seed=0)
    assert len(result.nodes) == 1 and result.nodes[0].stop_reason == "no_edges"
    assert isinstance(result, RefResult) and not result.level_labels(3).any()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: reference_graph(np.zeros(5), CFG), "features must be"),
        (lambda: reference_graph(np.full((4, 2), np.nan), CFG), "NaN"),
        (lambda: reference_graph(np.ones((1, 3)), CFG), ">= 2 patches"),
        (lambda: reference_stage_a(np.eye(5), PartitionConfig.paper(n_parts=6), 0), "exceeds"),
        (lambda: reference_stage_b(np.triu(np.ones((3, 3))), CFG, 0), "symmetric"),
        (lambda: reference_stage_b(-np.ones((3, 3)), CFG, 0), "non-negative"),
        (lambda: part_graph(W4, np.array([0, 1, 2, 3]), 3), "part ids"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
