"""COCO-Stuff 164k: COCO 2017 images with stuff+thing label maps (171 classes, 27 groups)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from hiseg_jax.datasets.base import Example, SegmentationBuilder, read_label_image, require_file
from hiseg_jax.files import AnyPath


class Cocostuff(SegmentationBuilder):
    """COCO-Stuff 164k train2017 / val2017. The `stuffthingmaps` PNGs are stored unchanged:
    value = official label id - 1 (0..181; 171 ids in use), 255 = unlabeled, which are the
    pixel values of the `cocostuff` hierarchy (things/stuff -> indoor/outdoor -> 27
    super-categories -> 171 classes)."""

    HIERARCHY: ClassVar[str] = "cocostuff"
    HOMEPAGE: ClassVar[str] = "https://github.com/nightrome/cocostuff"
    LAYOUT: ClassVar[str] = (
        "  images/{train2017,val2017}/ID.jpg\n"
        "      http://images.cocodataset.org/zips/{train2017,val2017}.zip\n"
        "  annotations/{train2017,val2017}/ID.png\n"
        "      http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
        "stuffthingmaps_trainval2017.zip"
    )
    FOLDERS: ClassVar[dict[str, str]] = {"train": "train2017", "val": "val2017"}

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        folder = self.FOLDERS[split]
        return [root / "images" / folder, root / "annotations" / folder]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        folder = self.FOLDERS[split]
        for target in sorted((root / "annotations" / folder).glob("*.png")):
            image = require_file(root / "images" / folder / f"{target.stem}.jpg", "COCO image")
            yield Example(target.stem, image, read_label_image(target)[None])
