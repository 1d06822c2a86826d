"""Accumulators: a split (or resumed) run merged equals a single run, exactly; save / load
round-trips; skipped images are counted, never NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from metrics_cases import random_forest, random_labels, random_tree, stack_trees

from hiseg_jax.hierarchies import index_label_space
from hiseg_jax.metrics import Accumulator, TreePrediction, evaluate_batch, evaluate_bsds_batch

H, W, L, M, G = 10, 9, 3, 16, 6


def batches(seed: int, count: int, batch: int = 2):
    """`count` batches of random trees and hierarchical GT (shared GT space)."""
    rng = np.random.default_rng(seed)
    parent = random_forest(rng, G)
    sets = np.stack([np.ones(G, bool), rng.random(G) < 0.6])
    space = index_label_space(parent, sets, ["all", "some"], ignore_values=(-1,))
    out = []
    for _ in range(count):
        trees = [random_tree(rng, H, W, L, M) for _ in range(batch)]
        gt = random_labels(rng, (batch, H, W), G, 0.1)
        segs = random_labels(rng, (batch, 2, H, W), 5, 0.0)
        out.append((stack_trees(trees), gt, segs))
    return space, out


def fill(space, items, ids):
    regions, bsds = Accumulator.for_regions(space), Accumulator.for_bsds()
    for (pred, gt, segs), names in zip(items, ids, strict=True):
        regions.add(evaluate_batch(pred, gt, space), names)
        bsds.add(evaluate_bsds_batch(pred, segs, 5), names)
    return regions, bsds


def test_split_merge_and_resume_equal_single_run(tmp_path):
    space, items = batches(0, 4)
    ids = [[f"im{2 * i}", f"im{2 * i + 1}"] for i in range(4)]
    single = fill(space, items, ids)
    first = fill(space, items[:1], ids[:1])
    # The rest one image per batch: per-image scores do not depend on the batching.
    ones = [
        (TreePrediction(*(x[i : i + 1] for x in pred)), gt[i : i + 1], segs[i : i + 1])
        for pred, gt, segs in items[1:]
        for i in range(2)
    ]
    second = fill(space, ones, [[name] for names in ids[1:] for name in names])
    for whole, a, b in zip(single, first, second, strict=True):
        # Merged in the other order than the single run added them: fsum makes it exact.
        merged = b.merge(a)
        assert merged.summary() == whole.summary()
        for key in whole.totals:
            np.testing.assert_array_equal(merged.totals[key], whole.totals[key])
        # Resumed: the first part saved, loaded later, then merged.
        a.save(tmp_path / f"{a.kind}.npz")
        resumed = Accumulator.load(tmp_path / f"{a.kind}.npz").merge(b)
        assert resumed.summary() == whole.summary()
        assert sorted(resumed.image_ids) == sorted(whole.image_ids)


def test_save_load_round_trip(tmp_path):
    space, items = batches(1, 2)
    regions, _ = fill(space, items, [["a", "b"], ["c", "d"]])
    regions.save(tmp_path / "acc.npz")
    loaded = Accumulator.load(tmp_path / "acc.npz")
    assert (loaded.kind, loaded.meta, loaded.image_ids) == (
        regions.kind,
        regions.meta,
        regions.image_ids,
    )
    for key, value in regions.per_image.items():
        np.testing.assert_array_equal(loaded.per_image[key], value)
    assert loaded.summary() == regions.summary()


def test_summary_matches_per_image_means():
    space, items = batches(2, 2)
    regions, _ = fill(space, items, [["a", "b"], ["c", "d"]])
    summary = regions.summary()
    rows = regions.per_image
    used = rows["n_regions"][:, 1] > 0
    np.testing.assert_allclose(
        summary["some"]["nm_covering"],
        rows["nm_covering"][used, 1].astype(float).mean(),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        summary["all"]["nh_covering"], rows["nh_covering"].astype(float).mean(), rtol=1e-12
    )
    assert summary["images"] == 4 and summary["some"]["images"] == int(used.sum())


def test_all_ignored_image_is_skipped_and_counted():
    space, items = batches(3, 1)
    pred, gt, segs = items[0]
    gt[1] = -1  # second image: every pixel ignored
    segs[1] = -1
    regions, bsds = fill(space, [(pred, gt, segs)], [["kept", "blank"]])
    summary = regions.summary()
    assert summary["all"]["skipped"] == 1 and summary["all"]["images"] == 1
    assert not any(isinstance(v, float) and math.isnan(v) for v in summary["all"].values())
    assert bsds.summary()["skipped"] == 1
    blank = Accumulator.for_bsds()
    blank.add(evaluate_bsds_batch(pred, np.full_like(segs, -1), 5), ["x", "y"])
    with pytest.raises(ValueError, match="no image with a labelled annotator"):
        blank.summary()


def test_refuses_duplicates_and_mismatches():
    space, items = batches(4, 1)
    regions, bsds = fill(space, items, [["a", "b"]])
    with pytest.raises(ValueError, match="scored twice"):
        regions.merge(regions)
    with pytest.raises(ValueError, match="different kinds or settings"):
        regions.merge(bsds)
    other = Accumulator.for_regions(space, threshold=0.5)
    with pytest.raises(ValueError, match="different kinds or settings"):
        regions.merge(other)
    with pytest.raises(ValueError, match="1 image ids for a batch of 2"):
        regions.add(evaluate_batch(items[0][0], items[0][1], space), ["only-one"])


def quadtree(height: int, width: int, levels: int = 4) -> TreePrediction:
    """A content-blind quadtree: each node splits into its four quadrants, `levels` times."""
    starts = np.cumsum([0] + [4**d for d in range(levels + 1)])
    labels = np.zeros((levels + 1, height, width), np.int32)
    depth = np.concatenate([np.full(4**d, d) for d in range(levels + 1)]).astype(np.int32)
    parent = np.full(starts[-1], -1, np.int32)
    ys, xs = np.mgrid[0:height, 0:width]
    for d in range(1, levels + 1):
        n = 2**d
        labels[d] = starts[d] + (ys * n // height) * n + xs * n // width
        row, col = np.divmod(np.arange(4**d), n)
        parent[starts[d] : starts[d + 1]] = starts[d - 1] + (row // 2) * (n // 2) + col // 2
    return TreePrediction(labels[None], np.ones((1, starts[-1]), bool), depth[None], parent[None])


@pytest.mark.data
def test_bsds500_quadtree_covering_matches_metrics_md(shared_data):
    # docs/metrics.md: on BSDS500 a content-blind quadtree of 340 blocks gets an area-weighted
    # covering of about .38 (a real ~25-node tree about .65).
    import scipy.io

    acc = Accumulator.for_bsds()
    for path in sorted((shared_data / "bsds500/groundTruth/val").glob("*.mat")):
        gts = scipy.io.loadmat(path)["groundTruth"][0]
        segs = np.full((1, 9, *gts[0]["Segmentation"][0, 0].shape), -1, np.int32)
        for k, g in enumerate(gts):  # 4-9 annotators, padded to 9: two compiled shapes
            segs[0, k] = g["Segmentation"][0, 0]
        pred = quadtree(*segs.shape[2:])
        acc.add(evaluate_bsds_batch(pred, segs, 256, check_levels=False), [path.stem])
    summary = acc.summary()
    assert summary["images"] == 100 and summary["mean_nodes"] == 340
    assert abs(summary["best"] - 0.38) < 0.01
