"""PartImageNet: ImageNet images of 158 classes in 11 super-categories with part masks."""

from __future__ import annotations

import functools
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
from hiseg_jax.files import AnyPath
from hiseg_jax.hierarchies import Hierarchy
from hiseg_jax.hierarchies.builders import build_partimagenet158, partimagenet158_pixel_values


class Partimagenet(SegmentationBuilder):
    """PartImageNet train / val / test (the splits hold disjoint classes: 109 / 19 / 30). The
    semantic part PNGs are stored unchanged: part ids 0..39, 40 background, the pixel values
    of the `partimagenet` hierarchy (11 super-categories -> their parts)."""

    HIERARCHY: ClassVar[str] = "partimagenet"
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    HOMEPAGE: ClassVar[str] = "https://github.com/TACJu/PartImageNet"
    LAYOUT: ClassVar[str] = (
        "  images/{train,val,test}/WNID_N.JPEG  (or images/SPLIT/WNID/WNID_N.JPEG)\n"
        "  annotations/{train,val,test}/WNID_N.png  and  annotations/{train,val,test}.json\n"
        "  (the PartImageNet_Seg release; its PartImageNet/ folder may be given instead)"
    )

    @staticmethod
    def _data(root: AnyPath) -> AnyPath:
        return first_existing(root / "PartImageNet", root)

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        data = self._data(root)
        return [data / "images" / split, data / "annotations" / split]

    def _pairs(self, root: AnyPath, split: str) -> Iterator[tuple[AnyPath, AnyPath]]:
        """(image, part mask) of every annotated image of `split`, sorted by name."""
        data = self._data(root)
        images = data / "images" / split
        for target in sorted((data / "annotations" / split).glob("*.png")):
            wnid = target.stem.split("_")[0]
            image = first_existing(
                images / f"{target.stem}.JPEG", images / wnid / f"{target.stem}.JPEG"
            )
            yield require_file(image, "PartImageNet image"), target

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        for image, target in self._pairs(root, split):
            yield Example(target.stem, image, read_label_image(target)[None])


@functools.cache
def _hierarchy_158(json_files: tuple[AnyPath, ...]) -> Hierarchy:
    return build_partimagenet158(json_files)


class Partimagenet158(Partimagenet):
    """PartImageNet-158: super-category -> ImageNet class (the file name's WordNet id) ->
    parts. Values are those of `build_partimagenet158` over the three official annotation
    JSON files (background 40; part p of the class ranked r among all 158 sorted WordNet ids
    = 100 * (r + 1) + p), which all splits need so that the ranks do not depend on the split."""

    HIERARCHY: ClassVar[str] = "partimagenet158"

    @classmethod
    def annotation_files(cls, root: AnyPath) -> tuple[AnyPath, ...]:
        return tuple(cls._data(root) / "annotations" / f"{s}.json" for s in cls.SPLITS)

    @classmethod
    def hierarchy(cls, root: AnyPath) -> Hierarchy:
        """The 158-class hierarchy of the files under `root`, as `build_partimagenet158`
        derives it (no such file is shipped)."""
        files = cls.annotation_files(root)
        return _hierarchy_158(tuple(require_file(f, "PartImageNet annotation") for f in files))

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        return [*super().required_paths(root, split), *self.annotation_files(root)]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        hierarchy = self.hierarchy(root)
        for image, target in self._pairs(root, split):
            parts = read_label_image(target)
            values = partimagenet158_pixel_values(parts, target.stem.split("_")[0], hierarchy)
            yield Example(target.stem, image, np.asarray(values, np.int32)[None])
