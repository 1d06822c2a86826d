"""An image's tree does not depend on its batch (issue 15, item 1), on the first 10 BSDS500
val images at 448 px with the default settings.

Skipped unless `../shared/data` and the converted default checkpoint exist. Compiled shapes
are few on purpose (a partition program compiles in ~1 min on 2 cores), so:
- batch 4 through the whole engine (`engine.stream`), in name order and reversed: every
  image has other neighbours, and four of them sit in a padded last batch in one order and
  not in the other. Required: bit-identical trees and features.
- batch sizes 1, 2, 4, 8: the engine's backbone program at each size, its features through
  the engine's partition program at batch 4. Required: leaf partitions with adjusted Rand
  index >= 0.95 to the batch-4 engine run.
- 1 vs 4 forced host devices: the whole engine at batch 4 in a subprocess (one image per
  device: the partition program runs at a local batch of 1 there). Required as above.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from batch_cases import (
    IMAGES,
    SIZE,
    TREE_FIELDS,
    backbone_features,
    engine_trees,
    leaf_ari,
    partition_features,
    val_images,
)

from hiseg_jax.engine.step import make_step
from hiseg_jax.weights.checkpoint import load_backbone

pytestmark = [pytest.mark.slow, pytest.mark.data, pytest.mark.weights]

MIN_ARI = 0.95
BATCH_SIZES = (1, 2, 8)  # besides 4
WORKER = Path(__file__).with_name("batch_invariance_worker.py")
REPO = WORKER.parents[1]


@pytest.fixture(scope="module")
def four_devices(shared_data, default_checkpoint, tmp_path_factory) -> subprocess.Popen:
    """The 4-device worker, started at once so that its compilation overlaps this
    process's (XLA compiles on one core); `.out` names its result file."""
    out = tmp_path_factory.mktemp("devices") / "trees.npz"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    args = [sys.executable, str(WORKER), "4", str(shared_data), str(default_checkpoint), str(out)]
    process = subprocess.Popen(
        args, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.out = out
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def runs(four_devices, shared_data, default_checkpoint) -> dict:
    """{"images", "forward", "reversed": engine trees at batch 4, "features": {batch size:
    features}, "labels": {batch size: labels [L + 1, N] per image}}."""
    images = val_images(shared_data)
    assert len(images) == IMAGES
    step = make_step(load_backbone(default_checkpoint), SIZE)
    names = list(images)
    forward = engine_trees(step, images, names, batch_size=4)
    backward = engine_trees(step, images, names[::-1], batch_size=4)
    features = {4: np.stack([forward[name]["features"] for name in names])}
    for rows in BATCH_SIZES:
        features[rows] = backbone_features(step, images, rows)
    labels = {rows: partition_features(step, x, 4) for rows, x in features.items()}
    return dict(names=names, forward=forward, reversed=backward, features=features, labels=labels)


def test_batch_4_trees_do_not_depend_on_neighbours_or_padding(runs):
    forward, backward = runs["forward"], runs["reversed"]
    identical = [
        name
        for name in runs["names"]
        if all(np.array_equal(forward[name][f], backward[name][f]) for f in TREE_FIELDS)
    ]
    same_features = sum(
        np.array_equal(forward[n]["features"], backward[n]["features"]) for n in runs["names"]
    )
    print(
        f"\nbatch 4, other neighbours: {len(identical)}/{IMAGES} identical trees, "
        f"{same_features}/{IMAGES} identical features"
    )
    assert len(identical) == IMAGES
    assert min(int(forward[n]["valid"].sum()) for n in runs["names"]) > 1


def test_the_engine_partition_program_reproduces_the_engine(runs):
    """The batch-4 partition program alone, on the engine's batch-4 features, gives the
    engine's trees: the comparisons across batch sizes measure the backbone's batch shape."""
    for name, labels in zip(runs["names"], runs["labels"][4], strict=True):
        np.testing.assert_array_equal(labels, runs["forward"][name]["labels"], name)


@pytest.mark.parametrize("rows", BATCH_SIZES)
def test_leaf_partitions_agree_across_batch_sizes(runs, rows):
    base, other = runs["labels"][4], runs["labels"][rows]
    aris = [leaf_ari(a, b) for a, b in zip(base, other, strict=True)]
    identical = sum(np.array_equal(a, b) for a, b in zip(base, other, strict=True))
    diff = float(np.abs(runs["features"][rows] - runs["features"][4]).max())
    print(
        f"\nbatch {rows} vs 4: features max |diff| {diff:.2e}, {identical}/{IMAGES} identical "
        f"trees, {sum(a >= MIN_ARI for a in aris)}/{IMAGES} leaf ARI >= {MIN_ARI}, "
        f"min ARI {min(aris):.3f}"
    )
    assert min(aris) >= MIN_ARI, dict(zip(runs["names"], np.round(aris, 3), strict=True))


def test_leaf_partitions_agree_across_device_counts(runs, four_devices):
    _, err = four_devices.communicate(timeout=1200)
    assert four_devices.returncode == 0, err[-4000:]
    saved = np.load(four_devices.out)
    aris, identical, diff = [], 0, 0.0
    for name in runs["names"]:
        mine = runs["forward"][name]
        aris.append(leaf_ari(mine["labels"], saved[f"{name}/labels"]))
        identical += all(np.array_equal(mine[f], saved[f"{name}/{f}"]) for f in TREE_FIELDS)
        diff = max(diff, float(np.abs(mine["features"] - saved[f"{name}/features"]).max()))
    print(
        f"\n4 devices vs 1: features max |diff| {diff:.2e}, {identical}/{IMAGES} identical "
        f"trees, {sum(a >= MIN_ARI for a in aris)}/{IMAGES} leaf ARI >= {MIN_ARI}, "
        f"min ARI {min(aris):.3f}"
    )
    assert min(aris) >= MIN_ARI, dict(zip(runs["names"], np.round(aris, 3), strict=True))
