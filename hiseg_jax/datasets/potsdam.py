"""ISPRS Potsdam: 6000 x 6000 aerial tiles with 6 colour-coded classes, cut into crops."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
from PIL import Image

from hiseg_jax.datasets.base import (
    IGNORE,
    Example,
    SegmentationBuilder,
    first_existing,
    read_label_image,
    require_file,
)
from hiseg_jax.files import AnyPath

# ISPRS class colours, in class-value order: impervious surfaces, building, low vegetation,
# tree, car, clutter/background.
COLOURS = np.array(
    [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)], np.int32
)
# The 14 tiles of the ISPRS benchmark's test set (labels public since 2018); the other 24
# labelled tiles are its training set.
TEST_TILES = frozenset(
    {
        (2, 13),
        (2, 14),
        (3, 13),
        (3, 14),
        (4, 13),
        (4, 14),
        (4, 15),
        (5, 13),
        (5, 14),
        (5, 15),
        (6, 13),
        (6, 14),
        (6, 15),
        (7, 13),
    }
)
_TILE = re.compile(r"top_potsdam_(\d+)_(\d+)_RGB\.tif$")


def decode_potsdam_colours(rgb: np.ndarray) -> np.ndarray:
    """ISPRS colour labels [H, W, 3] -> class values 0..5 [H, W]; any other colour (the black
    boundary of the `noBoundary` labels) is IGNORE. Channels are thresholded at 128, so
    compression noise around 0 / 255 does not matter."""
    bits = (np.asarray(rgb) >= 128).astype(np.int32)
    code = bits[..., 0] * 4 + bits[..., 1] * 2 + bits[..., 2]
    table = np.full(8, IGNORE, np.int32)
    table[(COLOURS >= 128) @ np.array([4, 2, 1])] = np.arange(len(COLOURS))
    return table[code]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Potsdam(SegmentationBuilder):
    """Potsdam RGB tiles with full-reference labels, following the IIC / STEGO crop protocol:
    each tile is cut into a grid of non-overlapping CROP x CROP crops (6000 / 400 = 15 x 15;
    a border narrower than CROP is dropped), each downscaled by SCALE (to 200 x 200: image by
    area averaging, labels by taking the top-left pixel of each SCALE x SCALE block, i.e.
    nearest). Crops are named TILE_ROW_COL. Values: the 6 ISPRS classes 0..5 (colour order
    in `COLOURS`; STEGO's 3-class variant merges {0, 4}, {1, 5}, {2, 3}), 255 ignored. Splits:
    train = the 24 ISPRS training tiles, val = the 14 ISPRS test tiles."""

    HIERARCHY: ClassVar[str] = "potsdam"
    HOMEPAGE: ClassVar[str] = (
        "https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx"
    )
    LAYOUT: ClassVar[str] = (
        "  2_Ortho_RGB/top_potsdam_R_C_RGB.tif\n"
        "  5_Labels_all/top_potsdam_R_C_label.tif  (or 5_Labels_for_participants/)"
    )
    CROP: ClassVar[int] = 400
    SCALE: ClassVar[int] = 2

    @staticmethod
    def _labels_dir(root: AnyPath) -> AnyPath:
        return first_existing(root / "5_Labels_all", root / "5_Labels_for_participants")

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        return [root / "2_Ortho_RGB", self._labels_dir(root)]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        tiles = []
        for image_path in (root / "2_Ortho_RGB").glob("top_potsdam_*_RGB.tif"):
            match = _TILE.search(image_path.name)
            if match and ((int(match[1]), int(match[2])) in TEST_TILES) == (split == "val"):
                tiles.append(((int(match[1]), int(match[2])), image_path))
        for _, image_path in sorted(tiles):
            label_name = image_path.name.replace("_RGB.tif", "_label.tif")
            labels_path = require_file(self._labels_dir(root) / label_name, "Potsdam label tile")
            yield from self._crops(image_path, labels_path)

    def _crops(self, image_path: AnyPath, labels_path: AnyPath) -> Iterator[Example]:
        with image_path.open("rb") as file, Image.open(file) as tile:
            image = np.asarray(tile.convert("RGB"))
        labels = decode_potsdam_colours(read_label_image(labels_path, colour=True))
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{labels_path}: {labels.shape} labels for a {image.shape[:2]} image")
        tile_name = image_path.name.removeprefix("top_potsdam_").removesuffix("_RGB.tif")
        size, step = self.CROP, self.SCALE
        for row in range(image.shape[0] // size):
            for col in range(image.shape[1] // size):
                window = np.s_[row * size : (row + 1) * size, col * size : (col + 1) * size]
                crop = Image.fromarray(image[window]).reduce(step)
                yield Example(
                    f"{tile_name}_{row}_{col}",
                    _png(np.asarray(crop)),
                    labels[window][::step, ::step][None],
                )
