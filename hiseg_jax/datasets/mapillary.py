"""Mapillary Vistas (v1.2: 66 classes; v2.0: 124 classes). Class names such as
`construction--barrier--fence` spell their own hierarchy, derived here from `config*.json`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import ClassVar

from hiseg_jax.datasets.base import (
    DatasetLayoutError,
    Example,
    SegmentationBuilder,
    first_existing,
    read_label_image,
    require_file,
)
from hiseg_jax.files import AnyPath
from hiseg_jax.hierarchies import Hierarchy, parse_hierarchy

SPLIT_FOLDERS = {"train": "training", "val": "validation"}


def read_config_labels(config: AnyPath) -> list[dict]:
    """The `labels` list of a Vistas config file (class index = position in the list)."""
    try:
        labels = json.loads(config.read_text(encoding="utf-8"))["labels"]
    except (OSError, ValueError, KeyError) as err:
        raise DatasetLayoutError(f"{config}: not a Mapillary Vistas config ({err!r})") from err
    if not labels or any("name" not in entry for entry in labels):
        raise DatasetLayoutError(f"{config}: 'labels' must list entries with a 'name'")
    return labels


def mapillary_hierarchy(config: AnyPath, name: str) -> Hierarchy:
    """The label hierarchy spelt by a Vistas config's class names: `a--b--c` is node `a/b/c`
    with pixel value = its class index; groups (`a`, `a/b`) carry no value. Classes with
    `"evaluate": false` (unlabeled) are ignored; all others are foreground."""
    labels = read_config_labels(config)
    value_of: dict[str, int] = {}
    type_of: dict[str, str] = {}
    order: list[str] = []
    for index, entry in enumerate(labels):
        parts = entry["name"].split("--")
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            if path not in type_of:
                order.append(path)
                type_of[path] = "ignore"
        value_of["/".join(parts)] = index
        if entry.get("evaluate", True):
            for depth in range(1, len(parts) + 1):
                type_of["/".join(parts[:depth])] = "foreground"
    lines = [f"{path} | {value_of.get(path, '-')} | {type_of[path]}" for path in order]
    return parse_hierarchy("\n".join(lines), name)


class MapillaryVistas(SegmentationBuilder):
    """Mapillary Vistas v1.2 training / validation. The label PNGs (palette indices) are
    stored unchanged: value = class index in the config's `labels` list (0..65; 65 =
    unlabeled), the pixel values of the hierarchy its class names spell (`hierarchy(root)`)."""

    HIERARCHY: ClassVar[str] = "mapillary_vistas"
    HOMEPAGE: ClassVar[str] = "https://www.mapillary.com/dataset/vistas"
    LABELS_VERSION: ClassVar[str] = "v1.2"
    CONFIGS: ClassVar[tuple[str, ...]] = ("config.json", "config_v1.2.json")
    LAYOUT: ClassVar[str] = (
        "  config.json (or config_v1.2.json)\n"
        "  {training,validation}/images/ID.jpg\n"
        "  {training,validation}/labels/ID.png (or {training,validation}/v1.2/labels/ID.png)"
    )

    @classmethod
    def config(cls, root: AnyPath) -> AnyPath:
        """The config file of this labels version under `root`."""
        return first_existing(*(root / c for c in cls.CONFIGS))

    @classmethod
    def hierarchy(cls, root: AnyPath) -> Hierarchy:
        """The hierarchy spelt by the class names of `root`'s config (no file is shipped)."""
        return mapillary_hierarchy(require_file(cls.config(root), "Vistas config"), cls.HIERARCHY)

    def _labels_dir(self, root: AnyPath, split: str) -> AnyPath:
        folder = root / SPLIT_FOLDERS[split]
        return first_existing(folder / self.LABELS_VERSION / "labels", folder / "labels")

    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        images = root / SPLIT_FOLDERS[split] / "images"
        return [self.config(root), images, self._labels_dir(root, split)]

    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        num_classes = len(read_config_labels(self.config(root)))
        images = root / SPLIT_FOLDERS[split] / "images"
        for target in sorted(self._labels_dir(root, split).glob("*.png")):
            image = require_file(images / f"{target.stem}.jpg", "Vistas image")
            labels = read_label_image(target)
            if labels.max() >= num_classes:
                raise DatasetLayoutError(
                    f"{target}: class index {labels.max()} but the config "
                    f"lists {num_classes} classes (wrong version?)"
                )
            yield Example(target.stem, image, labels[None])


class MapillaryVistasV2(MapillaryVistas):
    """Mapillary Vistas v2.0 labels (124 classes; the last, unlabeled, is ignored)."""

    HIERARCHY: ClassVar[str] = "mapillary_vistas_v2"
    LABELS_VERSION: ClassVar[str] = "v2.0"
    CONFIGS: ClassVar[tuple[str, ...]] = ("config_v2.0.json",)
    LAYOUT: ClassVar[str] = (
        "  config_v2.0.json\n"
        "  {training,validation}/images/ID.jpg\n"
        "  {training,validation}/v2.0/labels/ID.png"
    )

    def _labels_dir(self, root: AnyPath, split: str) -> AnyPath:
        return root / SPLIT_FOLDERS[split] / self.LABELS_VERSION / "labels"
