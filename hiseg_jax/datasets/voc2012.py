"""PASCAL VOC 2012 semantic segmentation (20 object classes + background, 255 = ignore)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
from PIL import Image

from hiseg_jax.datasets.base import IGNORE, Example, SegmentationBuilder
from hiseg_jax.files import AnyPath


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC colour map as uint8 [n, 3]: class c's colour spreads c's bits over R, G, B."""
    palette = np.zeros((n, 3), np.uint8)
    for c in range(n):
        v, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (v & 1) << shift
            g |= ((v >> 1) & 1) << shift
            b |= ((v >> 2) & 1) << shift
            v >>= 3
        palette[c] = (r, g, b)
    return palette


def decode_voc_target(path: AnyPath) -> np.ndarray:
    """A VOC label PNG as int32 [H, W] class ids: palette mode directly, RGB via the palette.

    RGB colours outside the 21 class colours (the white (224, 224, 192) border) are IGNORE.
    """
    with path.open("rb") as file, Image.open(file) as image:
        if image.mode == "P":
            return np.asarray(image, np.int32)
        rgb = np.asarray(image.convert("RGB"), np.int32)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    palette = voc_palette(21).astype(np.int32)
    keys = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    labels = np.full(code.shape, IGNORE, np.int32)
    for cls, key in enumerate(keys):
        labels[code == key] = cls
    return labels


class Voc2012(SegmentationBuilder):
    """VOC2012 `SegmentationClass` train/val, or a folder of `N_image.png`/`N_target.png` pairs."""

    HIERARCHY: ClassVar[str] = "voc2012"
    HOMEPAGE: ClassVar[str] = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
    LAYOUT: ClassVar[str] = (
        "  VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/{split}.txt}\n"
        "      http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar\n"
        "  (or a flat folder of N_image.png / N_target.png pairs, RGB VOC palette: split 'val')"
    )

    @staticmethod
    def _voc(root: AnyPath) -> AnyPath:
        return root / "VOCdevkit" / "VOC2012"

    @staticmethod
    def _pairs(root: AnyPath) -> list[AnyPath]:
        return sorted(root.glob("*_image.png"), key=lambda p: (len(p.name), p.name))

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        if not self._voc(root).exists() and self._pairs(root):
            return [root] if split == "val" else [root / f"{split} (pairs layout has only val)"]
        voc = self._voc(root)
        return [
            voc / "JPEGImages",
            voc / "SegmentationClass",
            voc / "ImageSets" / "Segmentation" / f"{split}.txt",
        ]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        voc = self._voc(root)
        if not voc.exists():
            for image_path in self._pairs(root):
                key = image_path.name.removesuffix("_image.png")
                target = image_path.with_name(f"{key}_target.png")
                yield Example(key, image_path, decode_voc_target(target)[None])
            return
        ids = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        for key in ids:
            target = decode_voc_target(voc / "SegmentationClass" / f"{key}.png")
            yield Example(key, voc / "JPEGImages" / f"{key}.jpg", target[None])
