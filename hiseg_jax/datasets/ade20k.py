"""ADE20K (full 2021_17_01 release) with parts: objects -> parts."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from hiseg_jax.datasets.base import (
    Example,
    SegmentationBuilder,
    first_existing,
    read_label_image,
    require_file,
)
from hiseg_jax.files import AnyPath, files_below
from hiseg_jax.hierarchies.builders import ade20k_class_map, ade20k_pixel_values

SPLIT_FOLDERS = {"train": "training", "val": "validation"}


def read_ade20k_labels(stem: AnyPath) -> np.ndarray:
    """`STEM_seg.png` (+ `STEM_parts_1.png` when present) -> int32 [H, W] pixel values
    object * 4096 + part (part 0: the object's pixels outside its parts; 0 = unlabeled),
    as `hiseg_jax.hierarchies.builders.ade20k_pixel_values` encodes them."""
    seg = require_file(stem.with_name(f"{stem.name}_seg.png"), "ADE20K object mask")
    objects = ade20k_class_map(read_label_image(seg, colour=True))
    parts_file = stem.with_name(f"{stem.name}_parts_1.png")
    parts = (
        ade20k_class_map(read_label_image(parts_file, colour=True))
        if parts_file.exists()
        else np.zeros_like(objects)
    )
    if parts.shape != objects.shape:
        raise ValueError(f"{parts_file}: {parts.shape} parts for {objects.shape} objects")
    return ade20k_pixel_values(objects, parts)


class Ade20k(SegmentationBuilder):
    """ADE20K_2021_17_01 training / validation, with the first level of parts
    (`*_parts_1.png`); parts of parts (`*_parts_2.png`) and instances are not encoded: one
    int32 value cannot hold three ADE class indices. HIERARCHY names the hierarchy built
    over the shipped samples; ADE's 3,688 classes call for one built over the images scored
    (`hiseg_jax.hierarchies.builders.build_ade20k_hierarchy`, same pixel values)."""

    HIERARCHY: ClassVar[str] = "ade20k_samples"
    HOMEPAGE: ClassVar[str] = "https://groups.csail.mit.edu/vision/datasets/ADE20K/"
    LAYOUT: ClassVar[str] = (
        "  ADE20K_2021_17_01/images/ADE/{training,validation}/SCENE.../ADE_*_NNNNNNNN.jpg\n"
        "      with ADE_*_seg.png and ADE_*_parts_1.png beside each image\n"
        "  (the ADE20K_2021_17_01 folder itself may be given instead)"
    )

    @staticmethod
    def _split_dir(root: AnyPath, split: str) -> AnyPath:
        release = first_existing(root / "ADE20K_2021_17_01", root)
        return release / "images" / "ADE" / SPLIT_FOLDERS[split]

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        return [self._split_dir(root, split)]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        found = files_below(self._split_dir(root, split))
        for image in sorted(p for p in found if fnmatch.fnmatchcase(p.name, "ADE_*.jpg")):
            stem = image.with_suffix("")
            yield Example(stem.name, image, read_ade20k_labels(stem)[None])
