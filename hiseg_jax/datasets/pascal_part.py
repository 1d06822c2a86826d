"""PASCAL-Part: VOC2010 images with object and part masks (objects -> parts)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import scipy.io

from hiseg_jax.datasets.base import (
    Example,
    SegmentationBuilder,
    first_existing,
    require_file,
)
from hiseg_jax.files import AnyPath
from hiseg_jax.hierarchies import load_hierarchy

_INSTANCE_SUFFIX = re.compile(r"_\d+$")  # engine_1, wheel_2, door_3, ... -> one part class


@functools.cache
def pascalpart_values() -> tuple[dict[int, int], dict[tuple[int, str], int]]:
    """From the `pascalpart` hierarchy file: VOC class index -> object value, and (VOC class
    index, part name) -> part value. The file's encoding gives object class c the value
    100 * c, which is how its top-level foreground nodes are matched to class indices."""
    h = load_hierarchy(PascalPart.HIERARCHY)
    objects: dict[int, int] = {}
    parts: dict[tuple[int, str], int] = {}
    for name, value, node_type, parent in zip(h.names, h.values, h.types, h.parents, strict=True):
        if parent < 0 and node_type == "foreground":
            objects[value // 100] = value
        elif parent >= 0:
            parts[(h.values[parent] // 100, name)] = value
    return objects, parts


def read_pascal_part_mat(path: AnyPath) -> np.ndarray | None:
    """One `Annotations_Part/*.mat` file -> int32 [H, W] `pascalpart` pixel values: every
    object's mask painted with its class value, then its parts' masks with their part values
    (numbered parts such as `wheel_2` merged into `wheel`); 0 elsewhere. None when the file
    lists no object. A part name the hierarchy does not list raises ValueError naming it."""
    objects, parts = pascalpart_values()
    with path.open("rb") as file:
        anno = scipy.io.loadmat(file)["anno"][0, 0]
    instances = anno["objects"]
    labels = None
    for obj in instances.reshape(-1) if instances.size else ():
        mask = np.asarray(obj["mask"]) > 0
        if labels is None:
            labels = np.zeros(mask.shape, np.int32)
        cls = int(obj["class_ind"].reshape(-1)[0])
        labels[mask] = objects[cls]
        for part in obj["parts"].reshape(-1) if obj["parts"].size else ():
            name = _INSTANCE_SUFFIX.sub("", str(part["part_name"].reshape(-1)[0]))
            if (cls, name) not in parts:
                raise ValueError(
                    f"{path}: part {name!r} of class {cls} is not in the pascalpart hierarchy"
                )
            labels[np.asarray(part["mask"]) > 0] = parts[(cls, name)]
    return labels


class PascalPart(SegmentationBuilder):
    """PASCAL-Part on VOC2010 train / val (VOC2010 `ImageSets/Main` lists; every listed image
    needs its `.mat`). Values: the `pascalpart` hierarchy's (background 0, object class c
    100 * c, its j-th part 100 * c + j); images without any annotated object are skipped."""

    HIERARCHY: ClassVar[str] = "pascalpart"
    HOMEPAGE: ClassVar[str] = "https://roozbehm.info/pascal-parts/pascal-parts.html"
    LAYOUT: ClassVar[str] = (
        "  VOCdevkit/VOC2010/{JPEGImages,ImageSets/Main/{train,val}.txt}\n"
        "      http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar\n"
        "  Annotations_Part/ID.mat  (or VOCdevkit/VOC2010/Annotations_Part/)\n"
        "      http://roozbehm.info/pascal-parts/trainval.tar.gz"
    )

    @staticmethod
    def _voc(root: AnyPath) -> AnyPath:
        return root / "VOCdevkit" / "VOC2010"

    def _annotations(self, root: AnyPath) -> AnyPath:
        return first_existing(root / "Annotations_Part", self._voc(root) / "Annotations_Part")

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        voc = self._voc(root)
        return [
            voc / "JPEGImages",
            voc / "ImageSets" / "Main" / f"{split}.txt",
            self._annotations(root),
        ]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        voc = self._voc(root)
        for key in (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            mat = require_file(self._annotations(root) / f"{key}.mat", "Pascal-Part annotation")
            labels = read_pascal_part_mat(mat)
            if labels is not None:
                image = require_file(voc / "JPEGImages" / f"{key}.jpg", "VOC2010 image")
                yield Example(key, image, labels[None])
