"""Run in a subprocess by tests/test_sharding.py: the sharded pipeline vs the single-device API.

Usage: python tests/sharding_worker.py DEVICES [COORDINATOR NUM_PROCESSES PROCESS_ID]

Forces DEVICES host (CPU) devices before JAX starts, optionally joins a multi-process run
through `jax.distributed`, streams a small BSDS-like set (two GT shapes, so two buckets)
through a data-parallel step with the in-step BSDS metric, and compares every tree and score
with the unfused single-device path: `extract_features` -> `partition` ->
`evaluate_bsds_batch`. Prints one JSON line with the facts the test asserts.
"""

from __future__ import annotations

import json
import os
import sys

DEVICES = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from hiseg_jax.engine.batches import Item  # noqa: E402
from hiseg_jax.engine.metric import bsds_metric  # noqa: E402
from hiseg_jax.engine.sharding import initialize_distributed  # noqa: E402
from hiseg_jax.engine.step import make_step  # noqa: E402
from hiseg_jax.engine.stream import stream  # noqa: E402
from hiseg_jax.features import extract_features, preprocess  # noqa: E402
from hiseg_jax.metrics import evaluate_bsds_batch  # noqa: E402
from hiseg_jax.metrics.regions import TreePrediction  # noqa: E402
from hiseg_jax.models.vit import ViT, ViTConfig  # noqa: E402
from hiseg_jax.spectral.config import PartitionConfig  # noqa: E402
from hiseg_jax.spectral.partition import partition  # noqa: E402
from hiseg_jax.tree import patch_level_labels, upsample_labels  # noqa: E402

TINY_VIT = ViTConfig("dinov2", 4, 32, 2, 2, 64, layer_scale=True, posemb_grid=8)
CONFIG = PartitionConfig(n_parts=12, levels=3, kmeans_restarts=2, kmeans_max_iter=50)
SIZE = 32  # 8 x 8 patches
NUM_REGIONS = 8
ANNOTATORS = 3


def items(seed: int) -> list[Item]:
    """5 images with 20x28 GT and 2 with 28x20 GT: one canvas, so a single bucket."""
    rng = np.random.default_rng(seed)
    out = []
    for index, shape in enumerate([(20, 28)] * 5 + [(28, 20)] * 2):
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        image[: shape[0] // 2] //= 4  # a dark half: some structure to split on
        segs = rng.integers(1, NUM_REGIONS + 1, (1 + index % ANNOTATORS, *shape), dtype=np.int32)
        out.append(Item(f"img{index}", image, segs))
    return out


def main() -> None:
    if len(sys.argv) > 2:
        initialize_distributed(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    model = ViT(TINY_VIT, rngs=nnx.Rngs(0))
    metric = bsds_metric(NUM_REGIONS, ANNOTATORS)
    step = make_step(model, SIZE, CONFIG, metric=metric, features="tokens")
    mine = items(seed=jax.process_index())  # each process feeds its own images
    # One image per device: several per CPU device can deadlock in jaxlib's batched eigh
    # (see the warning of engine.step.make_step).
    batch = jax.local_device_count()
    results = list(stream(step, iter(mine), batch_size=batch, with_features=True))

    # The unfused single-device path, on all of this process's images in one batch.
    x = extract_features(model, preprocess([item.image for item in mine], SIZE, TINY_VIT))
    tree = partition(x, CONFIG)
    row = {item.name: index for index, item in enumerate(mine)}
    shapes = sorted({item.target.shape[1:] for item in mine})
    reference = {}  # BSDS scores of the unpadded GT, one evaluation per GT shape
    for shape in shapes:
        group = [item for item in mine if item.target.shape[1:] == shape]
        segs = np.full((len(group), ANNOTATORS, *shape), -1, np.int32)
        for b, item in enumerate(group):
            segs[b, : len(item.target)] = item.target - 1
        sub = tree[np.asarray([row[item.name] for item in group])]
        pixels = np.asarray(upsample_labels(patch_level_labels(sub), shape))
        pred = TreePrediction(pixels, sub.valid, sub.depth, sub.parent)
        scores = evaluate_bsds_batch(pred, segs, NUM_REGIONS)
        for b, item in enumerate(group):
            reference[item.name] = jax.tree.map(lambda a, b=b: np.asarray(a)[b], scores)

    checked, max_feature_diff = 0, 0.0
    for result in results:
        names, out = result.names, result.output
        index = np.asarray([row[name] for name in names])
        diff = np.abs(np.asarray(x)[index] - out.features).max()
        max_feature_diff = max(max_feature_diff, float(diff))
        for field in ("labels", "parent", "depth", "is_leaf", "valid", "parts"):
            want = np.asarray(getattr(tree, field))[index]
            np.testing.assert_array_equal(getattr(out.tree, field), want, field)
        assert out.tree.grid == tree.grid
        for b, name in enumerate(names):
            got = jax.tree.map(lambda a, b=b: a[b], out.scores)
            for field in got._fields:
                np.testing.assert_allclose(
                    getattr(got, field),
                    getattr(reference[name], field),
                    rtol=1e-6,
                    err_msg=f"{name} {field}",
                )
        checked += len(names)
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "local_devices": jax.local_device_count(),
                "processes": jax.process_count(),
                "mesh_devices": step.mesh.devices.size,
                "batches": [len(result.names) for result in results],
                "checked": checked,
                "compiled": max(program._cache_size() for program in step.programs),
                "max_feature_diff": max_feature_diff,
            }
        )
    )


if __name__ == "__main__":
    main()
