"""Reading prepared items: name, decoded image, label maps; per-level maps of a hierarchy."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from PIL import Image

from hiseg_jax.hierarchies import Hierarchy
from hiseg_jax.images import ImageLoadError, pil_to_rgb


def read_example(item: Mapping[str, object]) -> tuple[str, np.ndarray, np.ndarray]:
    """An item of a prepared source -> (name, image uint8 [H, W, 3], labels int32 [A, H, W]).

    The image is decoded as `hiseg_jax.images.load_image` decodes files; one that cannot be
    decoded raises `ImageLoadError` naming the item, so a caller can report and skip it."""
    raw_name = item["name"]
    name = raw_name.decode("utf-8") if isinstance(raw_name, bytes) else str(raw_name)
    try:
        with Image.open(io.BytesIO(item["image"])) as image:
            image.load()
            rgb = pil_to_rgb(image, name=name)
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"{name}: cannot decode the image ({err})") from err
    return name, rgb, np.asarray(item["labels"], np.int32)


def level_maps(labels: np.ndarray, hierarchy: Hierarchy) -> np.ndarray:
    """Raw label map(s) `[..., H, W]` in `hierarchy`'s pixel values -> int32 `[D, ..., H, W]`,
    D = the hierarchy's depth: at level d (0 = coarsest) the node index (into
    `hierarchy.paths`) of each pixel's ancestor at depth d + 1, or of its own node where that
    is shallower. A value the hierarchy does not list raises ValueError naming it."""
    labels = np.asarray(labels)
    depths = hierarchy.depths
    num_levels = max(depths)
    lineage = np.empty((num_levels, len(hierarchy)), np.int32)
    for node in range(len(hierarchy)):
        chain = [node]
        while hierarchy.parents[chain[0]] >= 0:
            chain.insert(0, hierarchy.parents[chain[0]])
        lineage[:, node] = [chain[min(d, len(chain) - 1)] for d in range(num_levels)]
    valued = [(v, i) for i, v in enumerate(hierarchy.values) if v is not None]
    keys = np.asarray(sorted(v for v, _ in valued), np.int64)
    nodes = np.asarray([i for _, i in sorted(valued)], np.int32)
    pos = np.clip(np.searchsorted(keys, labels), 0, len(keys) - 1)
    unknown = keys[pos] != labels
    if np.any(unknown):
        bad = np.unique(labels[unknown])
        raise ValueError(f"label values not in hierarchy {hierarchy.name!r}: {bad[:10].tolist()}")
    return lineage[:, nodes[pos]]
