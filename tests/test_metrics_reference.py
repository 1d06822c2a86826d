"""The JAX metrics equal the NumPy reference on random trees and label maps (ignored pixels,
empty regions, padded node slots and pixels), and keep the properties docs/metrics.md implies."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from metrics_cases import random_forest, random_labels, random_tree, stack_trees

from hiseg_jax.hierarchies import flat_label_space, index_label_space
from hiseg_jax.metrics import (
    TreePrediction,
    evaluate_batch,
    evaluate_bsds_batch,
    hungarian_scores,
    semantic_scores,
)
from hiseg_jax.metrics.reference import (
    reference_bsds_image,
    reference_hungarian,
    reference_image_scores,
    reference_semantic_scores,
)

# Fixed shapes: one compilation per test; hypothesis varies the content.
H, W, L, M, G, S, B = 10, 9, 3, 16, 6, 3, 3
RUNS = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def make_case(seed: int, pad: bool, empty: bool, ignore: float):
    rng = np.random.default_rng(seed)
    trees = [random_tree(rng, H, W, L, M, allow_empty=empty, pad=2 * pad) for _ in range(B)]
    gt = random_labels(rng, (B, H, W), G, ignore)
    if pad:
        gt[:, :, W - 2 :] = -1
    parent = random_forest(rng, G)
    sets = rng.random((S, G)) < 0.7
    return trees, gt, parent, sets


def assert_matches_reference(trees, gt, parent, sets, threshold):
    space = index_label_space(parent, sets, ignore_values=(-1,))
    scores = evaluate_batch(stack_trees(trees), gt, space, threshold=threshold)
    for b, tree in enumerate(trees):
        ref = reference_image_scores(*tree, gt[b], parent, sets, threshold)
        assert int(scores.n_nodes[b]) == ref["n_nodes"]
        np.testing.assert_array_equal(scores.n_regions[b], ref["n_regions"])
        np.testing.assert_allclose(scores.nm_covering[b], ref["nm"], atol=1e-6)
        np.testing.assert_allclose(scores.nh_covering[b], ref["nh"], atol=1e-6)
        for key in ("node", "tp", "fp", "fn"):
            np.testing.assert_array_equal(getattr(scores.matches, key)[b], ref[key], key)
        np.testing.assert_allclose(scores.matches.iou[b], ref["iou"], atol=1e-6)
        assert ref["nh"] <= ref["nm"][0] + 1e-12  # NHCovering <= NMCovering
    return scores


@RUNS
@given(
    seeds,
    st.booleans(),
    st.booleans(),
    st.sampled_from([0.0, 0.2, 1.0]),
    st.sampled_from([0.0, 0.3]),
)
def test_hierarchical_equals_reference(seed, pad, empty, ignore, threshold):
    assert_matches_reference(*make_case(seed, pad, empty, ignore), threshold)


@RUNS
@given(seeds, st.booleans(), st.sampled_from([0.0, 0.2]))
def test_flat_gt_equals_reference_and_nh_equals_nm(seed, empty, ignore):
    trees, gt, _, sets = make_case(seed, False, empty, ignore)
    flat = np.full(G, -1, np.int32)
    scores = assert_matches_reference(trees, gt, flat, sets, 0.0)
    np.testing.assert_allclose(scores.nh_covering, scores.nm_covering[:, 0], atol=1e-7)


@RUNS
@given(seeds, st.booleans(), st.booleans())
def test_bsds_equals_reference(seed, pad, empty):
    rng = np.random.default_rng(seed)
    trees = [random_tree(rng, H, W, L, M, allow_empty=empty, pad=2 * pad) for _ in range(B)]
    segs = random_labels(rng, (B, 3, H, W), 7, 0.1)
    segs[rng.random((B, 3)) < 0.3] = -1  # padded annotators (maybe all of an image's)
    if pad:
        segs[..., W - 2 :] = -1
    scores = evaluate_bsds_batch(stack_trees(trees), segs, 7)
    for b, tree in enumerate(trees):
        ref = reference_bsds_image(*tree, segs[b], 7)
        assert int(scores.n_annotators[b]) == ref["n_annotators"]
        np.testing.assert_allclose(scores.best[b], ref["best"], atol=1e-6)
        np.testing.assert_allclose(scores.levels[b], ref["levels"], atol=1e-6)


@RUNS
@given(seeds, st.sampled_from([(4, 5), (5, 3)]))
def test_semantic_and_hungarian_equal_reference(seed, shape):
    rng = np.random.default_rng(seed)
    tp, fp, fn = rng.integers(0, 50, (3, 8)) * (rng.random((3, 8)) < 0.8)
    assume((tp + fn).sum() > 0)
    ours = semantic_scores(tp, fp, fn)
    ref = reference_semantic_scores(tp, fp, fn)
    np.testing.assert_allclose(
        [ours.miou, ours.pacc, ours.macc, ours.fiou],
        [ref["miou"], ref["pacc"], ref["macc"], ref["fiou"]],
    )
    confusion = rng.integers(0, 1000, shape)  # 5 classes, 3 clusters: 2 left unassigned
    assume(confusion.sum(1).all())
    (scores, assignment), (ref, ref_total) = (
        hungarian_scores(confusion),
        reference_hungarian(confusion),
    )
    matched = assignment >= 0
    assert confusion[matched, assignment[matched]].sum() == ref_total  # optimal as SciPy's
    if len(np.unique(confusion)) == confusion.size:  # distinct costs: unique optimum (a.s.)
        np.testing.assert_allclose(scores.miou, ref["miou"])


def tree_as_gt(seed: int):
    """A tree without empty nodes, and its own regions as GT: flat (one level's node ids)
    and hierarchical (deepest level's ids + the tree's parents, root not scored)."""
    rng = np.random.default_rng(seed)
    tree = random_tree(rng, H, W, L, M, allow_empty=False)
    return rng, tree, TreePrediction(*(x[None] for x in tree))


@RUNS
@given(seeds, st.integers(1, L))
def test_covering_is_one_when_gt_regions_are_nodes(seed, level):
    _, (labels, valid, depth, parent), pred = tree_as_gt(seed)
    assume(valid.sum() > 1)
    flat = evaluate_batch(pred, labels[level][None], flat_label_space(M))
    np.testing.assert_allclose(flat.nm_covering, 1.0, rtol=1e-6)
    sets = (valid & (np.arange(M) > 0))[None]
    space = index_label_space(np.where(valid, parent, -1), sets)
    hier = evaluate_batch(pred, labels[-1][None], space)
    np.testing.assert_allclose([hier.nm_covering[0, 0], hier.nh_covering[0]], 1.0, rtol=1e-6)


@RUNS
@given(seeds, st.booleans())
def test_invariant_to_relabelling(seed, empty):
    trees, gt, parent, sets = make_case(seed, False, empty, 0.1)
    rng = np.random.default_rng(seed + 1)
    space = index_label_space(parent, sets, ignore_values=(-1,))
    base = evaluate_batch(stack_trees(trees), gt, space)
    # GT ids: new id of old g is perm[g]; parents and sets follow.
    perm = rng.permutation(G)
    inv = np.argsort(perm)
    new_parent = np.where(parent[inv] >= 0, perm[parent[inv]], -1)
    space2 = index_label_space(new_parent, sets[:, inv], ignore_values=(-1,))
    gt2 = np.where(gt >= 0, perm[np.maximum(gt, 0)], -1)
    # Node ids: a permutation of the non-root slots (root stays 0, per the contract).
    node_perm = np.concatenate([[0], 1 + rng.permutation(M - 1)])
    node_inv = np.argsort(node_perm)
    trees2 = [
        (
            np.where(lab >= 0, node_perm[lab], -1),
            val[node_inv],
            dep[node_inv],
            np.where(par[node_inv] >= 0, node_perm[par[node_inv]], -1),
        )
        for lab, val, dep, par in trees
    ]
    moved = evaluate_batch(stack_trees(trees2), gt2, space2)
    np.testing.assert_array_equal(moved.n_nodes, base.n_nodes)
    np.testing.assert_array_equal(moved.n_regions, base.n_regions)
    np.testing.assert_allclose(moved.nm_covering, base.nm_covering, atol=1e-6)
    for key in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(
            getattr(moved.matches, key)[:, perm], getattr(base.matches, key)
        )
    untied = np.array(
        [not reference_image_scores(*t, gt[b], parent, sets)["tied"] for b, t in enumerate(trees)]
    )
    np.testing.assert_allclose(
        np.asarray(moved.nh_covering)[untied], np.asarray(base.nh_covering)[untied], atol=1e-6
    )
    bsds = [
        evaluate_bsds_batch(stack_trees(t), g[:, None], G) for t, g in ((trees, gt), (trees2, gt2))
    ]
    np.testing.assert_allclose(bsds[0].best, bsds[1].best, atol=1e-6)
    np.testing.assert_allclose(bsds[0].levels, bsds[1].levels, atol=1e-6)
