"""Hierarchies that must be derived from a dataset's own annotation files, and the pixel
encodings that go with them.

- ADE20K (full 2021 release): objects -> parts. ADE's vocabulary is large (3,688 object
  names, and any object may have parts, themselves any of those names), so no fixed file can
  list it: `build_ade20k_hierarchy` collects every (object, part) pair that co-occurs at a
  pixel of the given images. `ade20k_samples.txt` is that build over the three samples in
  `../shared/data/ade20k_samples`; build the file for a real evaluation over the images you
  score (parts of parts, `*_parts_2.png`, are not used).
- PartImageNet-158 (super-category -> ImageNet class -> parts): the class of an image is its
  file name's WordNet id, which only the annotation files list, so `build_partimagenet158`
  derives it from the official COCO-style annotation JSON files. Not shipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hiseg_jax.files import AnyPath, as_path
from hiseg_jax.hierarchies.hierarchy import Hierarchy, parse_hierarchy

ADE_PART_STRIDE = 4096  # > 3,688 ADE20K class indices
PARTIMAGENET_BACKGROUND = 40
PARTIMAGENET158_STRIDE = 100  # > 41 part values


def ade20k_class_map(rgb: np.ndarray) -> np.ndarray:
    """ADE20K `*_seg.png` / `*_parts_N.png` RGB [H, W, 3] -> int32 class index [H, W]
    (R / 10 * 256 + G, 0 = unlabeled), as the dataset documents."""
    rgb = np.asarray(rgb).astype(np.int32)
    return rgb[..., 0] // 10 * 256 + rgb[..., 1]


def ade20k_pixel_values(objects: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Object and part class maps [H, W] -> hierarchy pixel values: object * 4096 + part
    (part 0: the object's pixels outside its parts); 0 where the object is unlabeled."""
    objects = np.asarray(objects, np.int32)
    return np.where(objects > 0, objects * ADE_PART_STRIDE + np.asarray(parts, np.int32), 0)


def _ade_names(annotation: Path) -> dict[int, str]:
    """ADE class index -> first synonym, from one image's JSON annotation."""
    data = json.loads(annotation.read_text(encoding="latin-1"))["annotation"]["object"]
    return {
        o["name_ndx"]: o["name"].split(",")[0].strip().replace("/", "-").replace("|", "-")
        for o in data
    }


def _unique_names(indices: list[int], names: dict[int, str]) -> dict[int, str]:
    """Display name per index; duplicates among siblings get their ADE index appended."""
    base = {i: names.get(i, f"class {i}") for i in indices}
    counts: dict[str, int] = {}
    for n in base.values():
        counts[n] = counts.get(n, 0) + 1
    return {i: n if counts[n] == 1 else f"{n} [{i}]" for i, n in base.items()}


def build_ade20k_hierarchy(stems: Iterable[Path], name: str = "ade20k") -> Hierarchy:
    """Objects -> parts of ADE20K images given by path stems (`.../ADE_train_00016869`, next
    to `_seg.png`, `_parts_1.png`, `.json`). Every object is foreground with value
    object * 4096; each part co-occurring with it at some pixel (occluders included, so that
    every pixel encodes) is a child with value object * 4096 + part; 0 (unlabeled) is
    ignored."""
    from PIL import Image

    pairs: set[tuple[int, int]] = set()
    names: dict[int, str] = {}
    for stem in stems:
        stem = Path(stem)
        objects = ade20k_class_map(np.asarray(Image.open(f"{stem}_seg.png").convert("RGB")))
        parts = ade20k_class_map(np.asarray(Image.open(f"{stem}_parts_1.png").convert("RGB")))
        values = np.unique(ade20k_pixel_values(objects, parts))
        pairs |= {(int(v) // ADE_PART_STRIDE, int(v) % ADE_PART_STRIDE) for v in values if v}
        names.update(_ade_names(Path(f"{stem}.json")))
    objects_seen = sorted({o for o, _ in pairs})
    object_names = _unique_names(objects_seen, names)
    lines = ["unlabeled | 0 | ignore"]
    for obj in sorted(objects_seen, key=lambda o: (object_names[o], o)):
        lines.append(f"{object_names[obj]} | {obj * ADE_PART_STRIDE} | foreground")
        part_ids = sorted(p for o, p in pairs if o == obj and p)
        part_names = _unique_names(part_ids, names)
        for part in sorted(part_ids, key=lambda p: (part_names[p], p)):
            lines.append(
                f"{object_names[obj]}/{part_names[part]} | "
                f"{obj * ADE_PART_STRIDE + part} | foreground"
            )
    return parse_hierarchy("\n".join(lines), name)


def build_partimagenet158(
    annotation_files: Iterable[AnyPath], name: str = "partimagenet158"
) -> Hierarchy:
    """Super-category -> ImageNet class (WordNet id) -> parts, from PartImageNet's COCO-style
    JSON files (`images[].file_name` = `<wnid>_<n>.JPEG`, `annotations[].category_id` = part
    id, `categories[]` = id, "Quadruped Head", supercategory). Values: background 40; part p
    of the class ranked r among the sorted WordNet ids = 100 * (r + 1) + p (see
    `partimagenet158_pixel_values`)."""
    categories: dict[int, tuple[str, str]] = {}
    class_super: dict[str, str] = {}
    for path in annotation_files:
        data = json.loads(as_path(path).read_text())
        for c in data["categories"]:
            sup = c["supercategory"].strip()
            categories[c["id"]] = (sup.lower(), c["name"].strip()[len(sup) :].strip().lower())
        wnid_of = {im["id"]: im["file_name"].split("_")[0] for im in data["images"]}
        for ann in data["annotations"]:
            wnid, sup = wnid_of[ann["image_id"]], categories[ann["category_id"]][0]
            if class_super.setdefault(wnid, sup) != sup:
                raise ValueError(f"{wnid} has parts of {class_super[wnid]!r} and {sup!r}")
    lines = []
    wnids = sorted(class_super)
    for sup in dict.fromkeys(s for s, _ in categories.values()):
        lines.append(f"{sup} | - | foreground")
        for rank, wnid in enumerate(wnids):
            if class_super[wnid] != sup:
                continue
            lines.append(f"{sup}/{wnid} | - | foreground")
            for part_id, (s, part) in sorted(categories.items()):
                if s == sup:
                    value = PARTIMAGENET158_STRIDE * (rank + 1) + part_id
                    lines.append(f"{sup}/{wnid}/{part} | {value} | foreground")
    lines.append(f"background | {PARTIMAGENET_BACKGROUND} | background")
    return parse_hierarchy("\n".join(lines), name)


def partimagenet158_pixel_values(parts: np.ndarray, wnid: str, hierarchy: Hierarchy) -> np.ndarray:
    """A PartImageNet part mask [H, W] (0..39, 40 background) of an image of class `wnid` ->
    the pixel values of `build_partimagenet158`'s hierarchy."""
    pairs = zip(hierarchy.paths, hierarchy.depths, strict=True)
    wnids = sorted(p.split("/")[1] for p, d in pairs if d == 2)
    if wnid not in wnids:
        raise ValueError(f"{wnid} is not a class of hierarchy {hierarchy.name!r}")
    parts = np.asarray(parts, np.int32)
    rank = wnids.index(wnid)
    return np.where(
        parts == PARTIMAGENET_BACKGROUND, parts, PARTIMAGENET158_STRIDE * (rank + 1) + parts
    )
