"""KITTI-STEP: KITTI tracking frames with panoptic maps over the 19 Cityscapes classes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from hiseg_jax.datasets.base import (
    IGNORE,
    Example,
    SegmentationBuilder,
    first_existing,
    read_label_image,
    require_file,
)
from hiseg_jax.files import AnyPath

# Cityscapes trainId 0..18 -> its raw label id (road 7, sidewalk 8, ..., bicycle 33).
TRAIN_ID_TO_LABEL_ID = np.array(
    [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], np.int32
)
UNLABELED_LABEL_ID = 0  # Cityscapes 'unlabeled' (ignored): where STEP has 255


def step_semantic_to_label_ids(semantic: np.ndarray) -> np.ndarray:
    """STEP semantic ids (Cityscapes trainIds 0..18, 255 void) [H, W] -> Cityscapes label
    ids, the `cityscapes` hierarchy's pixel values. Any other value raises ValueError."""
    semantic = np.asarray(semantic, np.int32)
    known = ((semantic >= 0) & (semantic < len(TRAIN_ID_TO_LABEL_ID))) | (semantic == IGNORE)
    if not np.all(known):
        raise ValueError(
            f"KITTI-STEP semantic ids outside 0..18 and 255: "
            f"{np.unique(semantic[~known])[:10].tolist()}"
        )
    table = np.append(TRAIN_ID_TO_LABEL_ID, UNLABELED_LABEL_ID)
    return table[np.where(semantic == IGNORE, len(TRAIN_ID_TO_LABEL_ID), semantic)]


class KittiStep(SegmentationBuilder):
    """KITTI-STEP train / val (both from KITTI tracking's `training` frames). The panoptic
    PNG holds the semantic id in R (instance = G * 256 + B, unused); semantic ids become
    Cityscapes label ids so that the `cityscapes` hierarchy (7 categories -> 19 classes)
    applies; void (255) becomes 0 ('unlabeled', ignored)."""

    HIERARCHY: ClassVar[str] = "cityscapes"
    HOMEPAGE: ClassVar[str] = "https://www.cvlibs.net/datasets/kitti/eval_step.php"
    LAYOUT: ClassVar[str] = (
        "  training/image_02/SEQ/FRAME.png\n"
        "      https://s3.eu-central-1.amazonaws.com/avg-kitti/data_tracking_image_2.zip\n"
        "  panoptic_maps/{train,val}/SEQ/FRAME.png  (or kitti-step/panoptic_maps/...)\n"
        "      https://storage.googleapis.com/gresearch/tf-deeplab/data/kitti-step.tar.gz"
    )

    @staticmethod
    def _maps(root: AnyPath) -> AnyPath:
        return first_existing(root / "panoptic_maps", root / "kitti-step" / "panoptic_maps")

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        return [root / "training" / "image_02", self._maps(root) / split]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        for target in sorted((self._maps(root) / split).glob("*/*.png")):
            seq, frame = target.parent.name, target.stem
            image = require_file(
                root / "training" / "image_02" / seq / f"{frame}.png", "KITTI tracking frame"
            )
            semantic = read_label_image(target, colour=True)[..., 0]
            yield Example(f"{seq}_{frame}", image, step_semantic_to_label_ids(semantic)[None])
