"""BSDS500 (Berkeley Segmentation Dataset): 4-9 human segmentations per image, no classes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import scipy.io

from hiseg_jax.datasets.base import Example, SegmentationBuilder, first_existing
from hiseg_jax.files import AnyPath
from hiseg_jax.hierarchies import Hierarchy


def read_bsds_mat(path: AnyPath) -> np.ndarray:
    """The human segmentations of one `groundTruth/*.mat` file as int32 [A, H, W] (ids from 1)."""
    with path.open("rb") as file:
        gt = scipy.io.loadmat(file)["groundTruth"][0]
    return np.stack([np.asarray(g["Segmentation"][0, 0], np.int32) for g in gt])


class Bsds500(SegmentationBuilder):
    """BSDS500 train/val/test; labels are per-annotator region ids (`LABEL_AXIS = 'annotator'`)."""

    HIERARCHY: ClassVar[str] = ""  # no classes
    LABEL_AXIS: ClassVar[str] = "annotator"
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    HOMEPAGE: ClassVar[str] = (
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html"
    )
    LAYOUT: ClassVar[str] = (
        "  images/{split}/ID.jpg and groundTruth/{split}/ID.mat\n"
        "  (or the official archive's BSR/BSDS500/data/ with the same two folders:\n"
        "  http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz)"
    )

    @classmethod
    def hierarchy(cls, root: AnyPath) -> Hierarchy:
        """BSDS500 has no classes: always raises ValueError."""
        raise ValueError("bsds500 holds per-annotator region ids: it has no label hierarchy")

    @staticmethod
    def _data_root(root: AnyPath) -> AnyPath:
        return first_existing(root / "BSR" / "BSDS500" / "data", root)

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        data = self._data_root(root)
        return [data / "images" / split, data / "groundTruth" / split]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        data = self._data_root(root)
        for image_path in sorted((data / "images" / split).glob("*.jpg")):
            mat = data / "groundTruth" / split / f"{image_path.stem}.mat"
            if mat.exists():
                yield Example(image_path.stem, image_path, read_bsds_mat(mat))
