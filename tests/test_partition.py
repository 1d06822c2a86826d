"""The JAX partitioner against the NumPy reference (`hiseg_jax.spectral.reference`).

Stage-B decisions piece by piece (jit and non-jit), stage B on planted part graphs (the same
tree as the reference: regions, order, stop reasons, k), the whole partitioner on planted
feature hierarchies, bad inputs, determinism and batch independence. The shapes are shared
by several tests so that each program compiles once (stage B at P = 200 is shared with
tests/test_partition_realdata.py).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hiseg_jax import tree as T
from hiseg_jax.spectral import graph, reference, synthetic
from hiseg_jax.spectral import partition as jp
from hiseg_jax.spectral.config import PartitionConfig

CONFIG = PartitionConfig()
PLANTED_CONFIG = PartitionConfig(n_parts=24)
PLANTED = dict(grid=(24, 24), branching=(2, 2, 2), scales=(0.45, 0.55, 0.7), noise=0.02, dim=128)


def _random_graph(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.uniform(0.0, 1.0, (n, n))
    w = (w + w.T) / 2
    np.fill_diagonal(w, 0.0)
    return w


def _embed(w_sub: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A sub-graph scattered into `size` slots: (W [size, size], mask, the slots used)."""
    idx = np.sort(rng.choice(size, w_sub.shape[0], replace=False))
    w = np.zeros((size, size))
    w[np.ix_(idx, idx)] = w_sub
    mask = np.zeros(size, bool)
    mask[idx] = True
    return w.astype(np.float32), mask, idx


# ------------------------------------------------------------------------------------------
# The part graph (section 3).


@pytest.mark.parametrize(
    "config",
    [
        PartitionConfig(n_parts=12),  # minmax: low-rank path, W never formed
        PartitionConfig(n_parts=12, adjacency="exp", sigma=0.7),  # dense path
        PartitionConfig(n_parts=12, threshold=0.5),  # minmax with threshold: dense path
    ],
    ids=["minmax-lowrank", "exp-dense", "threshold-dense"],
)
def test_part_graph_matches_reference(config):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(90, 16)).astype(np.float32) + 0.5
    parts = rng.integers(0, 12, 90)
    parts[:12] = np.arange(12)  # every part used
    got = jax.jit(jp.part_graph, static_argnums=2)(jnp.asarray(x), jnp.asarray(parts), config)
    want = reference.part_graph(reference.reference_graph(x, config), parts, 12)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------
# Stage-B decisions, one at a time.


class TestDecisions(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_threshold_sweep_matches_reference(self):
        rng = np.random.default_rng(0)
        sweep = self.variant(jp.threshold_sweep)
        for n in (5, 17, 30):
            w_sub = _random_graph(rng, n)
            w, mask, idx = _embed(w_sub, 40, rng)
            v = np.zeros(40, np.float32)
            v[idx] = rng.normal(size=n)
            labels, cost = sweep(jnp.asarray(v), jnp.asarray(w), jnp.asarray(mask))
            ref_mask, ref_cost = reference.threshold_sweep(w_sub, v[idx].astype(np.float64))
            np.testing.assert_array_equal(np.asarray(labels)[idx], ref_mask.astype(int))
            assert not np.asarray(labels)[~mask].any()
            np.testing.assert_allclose(cost, ref_cost, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_threshold_sweep_constant_vector_has_no_cut(self):
        rng = np.random.default_rng(1)
        w, mask, idx = _embed(_random_graph(rng, 6), 10, rng)
        v = np.where(mask, 0.4, 0.0).astype(np.float32)
        _, cost = self.variant(jp.threshold_sweep)(
            jnp.asarray(v), jnp.asarray(w), jnp.asarray(mask)
        )
        assert np.isinf(cost)

    @chex.variants(with_jit=True, without_jit=True)
    def test_eigengap_matches_reference(self):
        rng = np.random.default_rng(2)
        gap_k = self.variant(jp.eigengap_k, static_argnums=2)
        for n in (2, 3, 4, 5, 8, 11, 30):
            for _ in range(5):
                evals = np.sort(rng.uniform(0, 1.5, 10))
                evals[0] = 0.0
                m = min(10, n - 1)
                k, gap, has_gap = gap_k(jnp.asarray(evals, jnp.float32), jnp.int32(n), 10)
                ref_k = reference.eigengap_k(evals[:m], 10, n)
                assert bool(has_gap) == (ref_k > 0)
                if ref_k:
                    assert int(k) == ref_k
                    np.testing.assert_allclose(gap, evals[ref_k] - evals[ref_k - 1], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mean_ncut_averages_present_clusters(self):
        rng = np.random.default_rng(3)
        w_sub = _random_graph(rng, 12)
        w, mask, idx = _embed(w_sub, 20, rng)
        labels_sub = np.array([0, 0, 3, 3, 3, 5, 5, 0, 3, 5, 5, 0])  # clusters 1, 2, 4 empty
        labels = np.zeros(20, np.int32)
        labels[idx] = labels_sub
        got = self.variant(jp.mean_ncut, static_argnums=3)(
            jnp.asarray(labels), jnp.asarray(w), jnp.asarray(mask), 10
        )
        np.testing.assert_allclose(got, reference.mean_ncut(w_sub, labels_sub), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_perturbation_matches_reference(self):
        rng = np.random.default_rng(4)
        w_sub = _random_graph(rng, 9)
        w, mask, idx = _embed(w_sub, 16, rng)
        labels_sub = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
        labels = np.zeros(16, np.int32)
        labels[idx] = labels_sub
        lap = graph.normalized_laplacian(jnp.asarray(w), jnp.asarray(mask), CONFIG.eps)
        rho = self.variant(jp.perturbation, static_argnums=4)
        ref_lap = reference.normalized_laplacian(w_sub, CONFIG.eps)
        for gap in (0.3, 0.0):
            got = rho(jnp.asarray(labels), lap, jnp.asarray(mask), jnp.float32(gap), CONFIG.eps)
            want = reference.perturbation_ratio(ref_lap, labels_sub, gap, CONFIG.eps)
            np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("solver", ["eigh", "lanczos"])
def test_node_eigenpairs_of_a_masked_sub_graph(solver):
    """Both solvers give the sub-graph's smallest eigenpairs; vectors are compared where the
    spectrum has a clear gap (the span of the 6 block vectors, and the unique first one)."""
    rng = np.random.default_rng(5)
    wp, _ = synthetic.planted_part_graph(0, branching=(3, 2), leaf_size=5)  # 30 parts
    w, mask, idx = _embed(wp, 48, rng)
    lap = graph.normalized_laplacian(jnp.asarray(w), jnp.asarray(mask), CONFIG.eps)
    config = dataclasses.replace(CONFIG, stage_b_solver=solver)
    evals, evecs = jax.jit(jp.node_eigenpairs, static_argnums=(4, 5))(
        lap, jnp.asarray(w), jnp.asarray(mask), jax.random.key(0), 10, config
    )
    ref_lap = reference.normalized_laplacian(wp, CONFIG.eps)
    ref_vals, ref_vecs = reference.smallest_eigenpairs(ref_lap, 10)
    np.testing.assert_allclose(evals, ref_vals, atol=2e-5)
    evecs = np.asarray(evecs)
    assert np.abs(evecs[~mask]).max() == 0
    assert ref_vals[6] - ref_vals[5] > 0.1
    span = evecs[idx, :6] @ evecs[idx, :6].T
    np.testing.assert_allclose(span, ref_vecs[:, :6] @ ref_vecs[:, :6].T, atol=1e-4)
    np.testing.assert_allclose(evecs[idx, 0], ref_vecs[:, 0], atol=1e-5)  # same sign rule


# ------------------------------------------------------------------------------------------
# Stage B on planted part graphs: the reference's tree, exactly.


def _jax_nodes(res: jp.StageB) -> list[tuple]:
    """(parts, parent, depth, k, stop name) per valid slot, in slot order."""
    nop, valid = np.asarray(res.node_of_part), np.asarray(res.valid)
    depth, parent = np.asarray(res.depth), np.asarray(res.parent)
    slots = np.flatnonzero(valid)
    index = {int(m): i for i, m in enumerate(slots)}
    return [
        (
            tuple(np.flatnonzero(nop[depth[m]] == m)),
            index.get(int(parent[m]), -1),
            int(depth[m]),
            int(res.k[m]),
            jp.Stop(int(res.stop[m])).name.lower(),
        )
        for m in slots
    ]


def _ref_nodes(nodes: list[reference.RefNode]) -> list[tuple]:
    return [(tuple(n.parts), n.parent, n.depth, n.k_chosen, n.stop_reason) for n in nodes]


_stage_b = jax.jit(jp.stage_b, static_argnames="config")
ALL_PARTS = jnp.ones((200,), bool)


@pytest.mark.parametrize("solver", ["lanczos", "eigh"])
@pytest.mark.parametrize("seed", range(4))
def test_stage_b_equals_reference_on_planted_part_graphs(seed, solver):
    """P = 200 (2 x 5 x 2 groups of 10 parts): same nodes, same order, same decisions, with
    either stage-B eigensolver."""
    wp, groups = synthetic.planted_part_graph(seed, branching=(2, 5, 2), leaf_size=10)
    config = dataclasses.replace(CONFIG, stage_b_solver=solver)
    res = _stage_b(jnp.asarray(wp, jnp.float32), config, jax.random.key(seed), ALL_PARTS)
    want = _ref_nodes(reference.reference_stage_b(wp, CONFIG, seed))
    assert _jax_nodes(res) == want
    regions = {frozenset(n[0]) for n in want}
    assert all(frozenset(np.flatnonzero(g)) in regions for _, g in groups)


@pytest.mark.parametrize("seed", range(2))
def test_perturbation_fallback_equals_reference(seed):
    """perturb_fallback with a perturbation bound every 3-way cut fails: those nodes split
    in two (k - 1) instead of stopping, as in the reference (to depth 3: below, the planted
    leaves are noise and k-means draws differ)."""
    wp, _ = synthetic.planted_part_graph(seed, branching=(2, 3, 2), leaf_size=10)
    config = dataclasses.replace(CONFIG, max_perturb=1e-3, perturb_fallback=True, levels=3)
    res = _stage_b(jnp.asarray(wp, jnp.float32), config, jax.random.key(seed), ALL_PARTS[:120])
    want = _ref_nodes(reference.reference_stage_b(wp, config, seed))
    assert _jax_nodes(res) == want
    stops = [n[4] for n in want]
    assert "perturbation" not in stops
    fell_back = [i for i, n in enumerate(want) if n[3] > 2 and n[4] == "split"]
    assert fell_back and all(sum(m[1] == i for m in want) == 2 for i in fell_back)


def test_stage_b_is_independent_of_chunk_and_stops_at_depth():
    """Two depths only, split 3 nodes at a time: the reference's tree cut at depth 2, and the
    tree of the default chunk (up to depth 2)."""
    wp, _ = synthetic.planted_part_graph(7, branching=(2, 5, 2), leaf_size=10)
    wp32 = jnp.asarray(wp, jnp.float32)
    shallow = PartitionConfig(levels=2)
    chunked = dataclasses.replace(shallow, node_chunk=3)
    nodes = _jax_nodes(_stage_b(wp32, chunked, jax.random.key(0), ALL_PARTS))
    assert max(n[2] for n in nodes) == 2
    assert all(n[4] in ("depth", "min_points") for n in nodes if n[2] == 2)
    assert nodes == _ref_nodes(reference.reference_stage_b(wp, shallow, 0))
    deep = _jax_nodes(_stage_b(wp32, CONFIG, jax.random.key(0), ALL_PARTS))
    assert [n[:3] for n in nodes] == [n[:3] for n in deep if n[2] <= 2]


def test_stage_b_excluded_parts_are_in_no_node():
    wp, _ = synthetic.planted_part_graph(1, branching=(2, 5, 2), leaf_size=10)
    keep = np.ones(200, bool)
    keep[::7] = False
    res = _stage_b(jnp.asarray(wp, jnp.float32), CONFIG, jax.random.key(0), jnp.asarray(keep))
    nop = np.asarray(res.node_of_part)
    assert (nop[:, ~keep] == -1).all() and (nop[:, keep] >= 0).all()
    sub = reference.reference_stage_b(wp[np.ix_(keep, keep)], CONFIG, 0)
    kept = np.flatnonzero(keep)
    want = [(tuple(kept[list(p)]), *rest) for p, *rest in _ref_nodes(sub)]
    assert _jax_nodes(res) == want


# ------------------------------------------------------------------------------------------
# The whole partitioner on planted feature hierarchies (one compiled program, B = 4).


@pytest.fixture(scope="module")
def planted_batch() -> tuple[np.ndarray, list]:
    """Three planted 3-level hierarchies (24 x 24 patches) and a constant image."""
    feats, groups = zip(*(synthetic.planted_hierarchy(s, **PLANTED) for s in range(3)), strict=True)
    constant = np.broadcast_to(feats[0][:1, :1], feats[0].shape)
    return np.stack([*feats, constant]), list(groups)


@pytest.fixture(scope="module")
def planted_trees(planted_batch) -> T.Tree:
    return jp.partition(planted_batch[0], PLANTED_CONFIG, jax.random.key(0))


def _node_masks(tree: T.Tree, b: int) -> np.ndarray:
    labels, depth = np.asarray(tree.labels[b]), np.asarray(tree.depth[b])
    return np.stack([labels[depth[m]] == m for m in np.flatnonzero(np.asarray(tree.valid[b]))])


def _assert_planted_recovered(planted_batch, trees: T.Tree) -> None:
    """Every planted group (levels 1-3) is a node of the tree with IoU >= 0.95."""
    for b, groups in enumerate(planted_batch[1]):
        masks = _node_masks(trees, b)
        for level, g in groups:
            iou = (masks & g).sum(1) / (masks | g).sum(1)
            assert iou.max() >= 0.95, (b, level, iou.max())


def test_planted_hierarchy_is_recovered(planted_batch, planted_trees):
    _assert_planted_recovered(planted_batch, planted_trees)


@pytest.mark.parametrize(
    "config",
    [
        PartitionConfig.paper(n_parts=24),  # the authors' stage A
        dataclasses.replace(PLANTED_CONFIG, stage_a_solver="eigh_full"),
    ],
    ids=["paper", "eigh_full"],
)
def test_planted_hierarchy_is_recovered_by_other_stage_a_paths(planted_batch, config):
    trees = jp.partition(planted_batch[0][:3], config, jax.random.key(0))
    _assert_planted_recovered(planted_batch, trees)


def test_tree_is_consistent(planted_trees):
    """Nesting, parents, depths and leaves agree with the Tree contract."""
    tree = jax.tree.map(np.asarray, planted_trees)
    for b in range(tree.labels.shape[0]):
        valid, parent, depth = tree.valid[b], tree.parent[b], tree.depth[b]
        slots = np.flatnonzero(valid)
        assert slots[0] == 0 and parent[0] == -1 and depth[0] == 0
        for m in slots[1:]:
            p = parent[m]
            assert valid[p] and depth[m] == depth[p] + 1
            inside = tree.labels[b, depth[m]] == m
            assert inside.any() and (tree.labels[b, depth[p]][inside] == p).all()
        leaves = np.unique(tree.labels[b, -1])
        np.testing.assert_array_equal(np.sort(leaves), np.flatnonzero(tree.is_leaf[b]))
        assert (tree.labels[b] >= 0).all()


def test_constant_image_is_a_single_node(planted_trees):
    tree = planted_trees
    assert int(T.num_nodes(tree)[3]) == 1
    assert (np.asarray(tree.labels[3]) == 0).all()
    assert bool(tree.is_leaf[3, 0])


def test_deterministic_and_batch_independent(planted_batch, planted_trees):
    """Same key, same trees; each image's tree does not depend on its batch mates."""
    feats = planted_batch[0]
    again = jp.partition(feats, PLANTED_CONFIG, jax.random.key(0))
    chex.assert_trees_all_equal(again, planted_trees)
    zeros = np.zeros_like(feats[0])
    shuffled = jp.partition(
        np.stack([zeros, feats[2], feats[0], feats[1]]), PLANTED_CONFIG, jax.random.key(0)
    )
    for b_new, b_old in ((1, 2), (2, 0), (3, 1)):
        chex.assert_trees_all_equal(shuffled[b_new], planted_trees[b_old])
    assert int(T.num_nodes(shuffled)[0]) == 1  # all-zero features: one node, no NaN


def test_traced_entry_point_runs_under_jit_on_device_arrays(planted_batch, planted_trees):
    """`partition_arrays` does no host checks: it traces inside the caller's jit (here with
    the key and config closed over) and gives `partition`'s trees."""
    key = jax.random.key(0)
    feats = jnp.asarray(planted_batch[0])
    traced = jax.jit(lambda f: jp.partition_arrays(f, key, PLANTED_CONFIG))(feats)
    chex.assert_trees_all_equal(traced, planted_trees)
    assert traced.grid == planted_trees.grid


# ------------------------------------------------------------------------------------------
# Bad input: ValueError before tracing.


def test_nan_and_inf_name_the_batch_index():
    x = np.ones((3, 16, 16, 8), np.float32)
    x[2, 3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="batch index 2"):
        jp.partition(x, PLANTED_CONFIG)
    x[2, 3, 4, 5] = 0
    x[1, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="batch index 1"):
        jp.partition(x, PLANTED_CONFIG)


def test_fewer_patches_than_parts():
    with pytest.raises(ValueError, match="fewer than n_parts"):
        jp.partition(np.ones((1, 4, 5, 8), np.float32), PLANTED_CONFIG)


def test_mixed_sizes_and_bad_shapes():
    with pytest.raises(ValueError, match="mixed sizes"):
        jp.partition(
            [np.ones((8, 8, 4), np.float32), np.ones((8, 9, 4), np.float32)], PLANTED_CONFIG
        )
    with pytest.raises(ValueError, match=r"\[B, h, w, E\]"):
        jp.partition(np.ones((64, 4), np.float32), PLANTED_CONFIG)
    with pytest.raises(ValueError, match="floating point"):
        jp.partition(np.ones((1, 8, 8, 4), np.int32), PLANTED_CONFIG)
    with pytest.raises(ValueError, match="empty"):
        jp.partition([], PLANTED_CONFIG)


@pytest.mark.parametrize("transform", [jax.jit, jax.vmap])
def test_partition_under_a_trace_points_to_the_traced_entry_point(transform):
    """`partition` reads its features on the host: under jit / vmap one ValueError naming
    `partition_arrays`, not a TracerArrayConversionError from deep inside."""
    x = jnp.ones((2, 8, 8, 4), jnp.float32)
    with pytest.raises(ValueError, match=r"cannot be traced .* call partition_arrays\("):
        transform(lambda f: jp.partition(f, PLANTED_CONFIG))(x)


@pytest.mark.parametrize(
    "field", ["stage_a_k", "stage_a_restarts", "kmeans_restarts", "lanczos_iters"]
)
def test_config_rejects_non_positive_counts(field):
    with pytest.raises(ValueError, match=field):
        PartitionConfig(**{field: 0})


def test_stage_a_restarts_drive_the_parts_k_means_only():
    """With k-means++ starts, `stage_a_restarts` is stage A's n_init: parts_of == k-means
    with that many restarts."""
    from hiseg_jax.spectral.kmeans import kmeans

    emb = jax.random.normal(jax.random.key(3), (96, 8))
    config = PartitionConfig(
        n_parts=12, stage_a_init="kmeans++", stage_a_restarts=1, kmeans_restarts=7
    )
    key = jax.random.key(5)
    expected = kmeans(
        emb, 12, key, k_max=12, n_init=1, max_iter=config.kmeans_max_iter, tol=config.kmeans_tol
    ).labels
    other = kmeans(
        emb, 12, key, k_max=12, n_init=7, max_iter=config.kmeans_max_iter, tol=config.kmeans_tol
    ).labels
    got = jp.parts_of(emb, config, key, (12, 8))
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(expected, other)


def test_lattice_start_is_evenly_spread_and_deterministic():
    """Default stage A: one Lloyd run from the embedding of patches spread over the grid; the
    key does not matter."""
    from hiseg_jax.spectral.kmeans import kmeans

    for grid, count in (((12, 8), 12), ((32, 32), 200), ((20, 60), 200), ((5, 40), 200)):
        idx = jp.lattice_patches(grid, count)
        assert len(set(idx.tolist())) == count and idx.max() < grid[0] * grid[1]
        rows, cols = np.divmod(idx, grid[1])
        assert np.ptp(rows) >= grid[0] // 2 and np.ptp(cols) >= grid[1] // 2, grid
    emb = jax.random.normal(jax.random.key(3), (96, 8))
    config = PartitionConfig(n_parts=12)
    idx = jp.lattice_patches((12, 8), 12)
    expected = kmeans(
        emb,
        12,
        jax.random.key(0),
        k_max=12,
        init=emb[idx],
        max_iter=config.kmeans_max_iter,
        tol=config.kmeans_tol,
    ).labels
    for key in (jax.random.key(5), jax.random.key(6)):
        np.testing.assert_array_equal(jp.parts_of(emb, config, key, (12, 8)), expected)


def test_config_rejects_unknown_gram_min():
    with pytest.raises(ValueError, match="gram_min"):
        PartitionConfig(gram_min="approx")
