"""Shared by tests/test_batch_invariance.py and its forced-device worker: the real images,
the engine runs whose trees are compared, and how two leaf partitions are compared."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from sklearn.metrics import adjusted_rand_score

from hiseg_jax.engine.batches import Item
from hiseg_jax.engine.sharding import pad_batch, replicate, shard_batch
from hiseg_jax.engine.step import Step
from hiseg_jax.engine.stream import stream
from hiseg_jax.features import preprocess
from hiseg_jax.images import load_image

IMAGES, SIZE = 10, 448  # the first BSDS500 val images by name, 32 x 32 patches
TREE_FIELDS = ("labels", "parent", "depth", "is_leaf", "valid", "parts")


def val_images(shared: Path) -> dict[str, np.ndarray]:
    """The first `IMAGES` BSDS500 val images by name: {id: uint8 [H, W, 3]}."""
    files = sorted((shared / "bsds500" / "images" / "val").glob("*.jpg"))[:IMAGES]
    return {file.stem: load_image(file) for file in files}


def engine_trees(
    step: Step, images: dict[str, np.ndarray], order: list[str], batch_size: int
) -> dict[str, dict[str, np.ndarray]]:
    """The whole engine (`engine.stream`: backbone + partition, every batch padded to
    `batch_size`) over the images in `order`: {id: {tree field: host array}} plus the
    image's "features"."""
    items = [Item(name, images[name]) for name in order]
    out = {}
    for result in stream(step, items, batch_size=batch_size, with_features=True):
        for b, name in enumerate(result.names):
            tree = result.output.tree
            out[name] = {f: np.asarray(getattr(tree, f))[b] for f in TREE_FIELDS}
            out[name]["features"] = result.output.features[b]
    return out


def backbone_features(step: Step, images: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """The engine's backbone program alone, `rows` images per call (the last call padded):
    float32 [n, h, w, E] in the order of `images`."""
    pixels = preprocess(list(images.values()), step.image_size, step.vit)
    out = []
    for start in range(0, len(pixels), rows):
        chunk = pixels[start : start + rows]
        params, batch, _ = step.arguments(pad_batch(chunk, rows))
        features, _, _ = step.programs.backbone(params, batch)
        out.append(np.asarray(features)[: len(chunk)])
    return np.concatenate(out)


def partition_features(step: Step, features: np.ndarray, rows: int) -> list[np.ndarray]:
    """The engine's partition program alone on features [n, h, w, E], `rows` images per call:
    the tree labels int32 [L + 1, N] of every image."""
    key = replicate(jax.random.key(0), step.mesh)
    out = []
    for start in range(0, len(features), rows):
        chunk = pad_batch(features[start : start + rows], rows)
        flags = np.ones(rows, bool), np.zeros(rows, bool)  # finite, not one colour
        args = [shard_batch(a, step.mesh) for a in (chunk, *flags)]
        tree = step.programs.partition(*args, key)
        labels = np.asarray(tree.labels)
        out += list(labels[: min(rows, len(features) - start)])
    return out


def leaf_ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of the leaf partitions of two label arrays [L + 1, N]."""
    return float(adjusted_rand_score(a[-1], b[-1]))
