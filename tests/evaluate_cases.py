"""Shared by the `hiseg evaluate` tests: a tiny fake VOC2012 folder (pairs layout) with an
unreadable image and an image whose labels are not VOC classes, and one small, fast setting
(so that the pipeline compiles once per test session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hiseg_jax.datasets.voc2012 import voc_palette
from hiseg_jax.spectral.config import PartitionConfig

SIZE = 112  # 8 x 8 patches of 14 px
SMALL = PartitionConfig(n_parts=16, levels=3, max_kways=4, kmeans_restarts=2, kmeans_max_iter=100)
SMALL_FLAGS = [
    "--size",
    str(SIZE),
    "--n-parts",
    "16",
    "--levels",
    "3",
    "--max-kways",
    "4",
    "--kmeans-restarts",
    "2",
    "--kmeans-max-iter",
    "100",
    "--refine",  # nearest upsampling: the refinement is tested in test_evaluate.py
    "none",
]
SHAPES = ((60, 80), (80, 60), (60, 80), (60, 80), (80, 60), (60, 80))  # (H, W) of 0..5
BROKEN = 2  # index (and name) of the unreadable image
BAD_LABELS = 5  # index (and name) of the image labelled with a value outside VOC (30)


def make_voc_pairs(root: Path) -> Path:
    """`root` with N_image.png / N_target.png for N in 0..5: background (0), a person box
    (15) and a cat disc (8) in distinct noisy colours, object borders ignored (255); image
    BROKEN is not a PNG, image BAD_LABELS has a box of value 30."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for n, (h, w) in enumerate(SHAPES):
        target = np.zeros((h, w), np.uint8)
        top, left = rng.integers(4, h // 3), rng.integers(4, w // 3)
        target[top : top + h // 2, left : left + w // 3] = 15
        yy, xx = np.mgrid[:h, :w]
        target[(yy - 2 * h // 3) ** 2 + (xx - 2 * w // 3) ** 2 < (min(h, w) // 6) ** 2] = 8
        edge = np.zeros_like(target, bool)
        edge[1:] |= target[1:] != target[:-1]
        edge[:, 1:] |= target[:, 1:] != target[:, :-1]
        target[edge] = 255
        if n == BAD_LABELS:
            target[:4, :4] = 30
        colours = {0: (40, 90, 200), 15: (220, 60, 40), 8: (60, 200, 80), 255: (128, 128, 128)}
        image = np.zeros((h, w, 3), np.float64)
        for value, colour in colours.items():
            image[target == value] = colour
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        label = Image.fromarray(target, mode="P")
        label.putpalette(voc_palette(256).ravel().tolist())
        label.save(root / f"{n}_target.png")
        if n == BROKEN:
            (root / f"{n}_image.png").write_bytes(b"this is not an image")
        else:
            Image.fromarray(image).save(root / f"{n}_image.png")
    return root
