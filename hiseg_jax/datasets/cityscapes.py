"""Cityscapes fine annotations (gtFine): 19 evaluated classes in 7 categories."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from hiseg_jax.datasets.base import Example, SegmentationBuilder, read_label_image, require_file
from hiseg_jax.files import AnyPath


class Cityscapes(SegmentationBuilder):
    """Cityscapes gtFine train / val. The `*_gtFine_labelIds.png` maps are stored unchanged:
    raw label ids 0..33, the pixel values of the `cityscapes` hierarchy (7 categories -> 19
    evaluated classes; the ids whose official trainId is 255, void included, are ignored)."""

    HIERARCHY: ClassVar[str] = "cityscapes"
    HOMEPAGE: ClassVar[str] = "https://www.cityscapes-dataset.com/downloads/"
    LAYOUT: ClassVar[str] = (
        "  leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png  "
        "(leftImg8bit_trainvaltest.zip)\n"
        "  gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png  (gtFine_trainvaltest.zip)"
    )
    SUFFIX: ClassVar[str] = "_gtFine_labelIds.png"

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        return [root / "leftImg8bit" / split, root / "gtFine" / split]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        for target in sorted((root / "gtFine" / split).glob(f"*/*{self.SUFFIX}")):
            key = target.name.removesuffix(self.SUFFIX)
            city = root / "leftImg8bit" / split / target.parent.name
            image = require_file(city / f"{key}_leftImg8bit.png", "Cityscapes image")
            yield Example(key, image, read_label_image(target)[None])
