"""Every dataset builder on a tiny fake folder in its official layout: the prepared source
yields exactly the labels the folder encodes, in the hierarchy's pixel values; a missing
folder is named in the error."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from hiseg_jax.datasets import (
    BUILDERS,
    IGNORE,
    DatasetLayoutError,
    builder,
    level_maps,
    load,
    read_example,
)
from hiseg_jax.datasets.kitti_step import step_semantic_to_label_ids
from hiseg_jax.datasets.mapillary import mapillary_hierarchy
from hiseg_jax.datasets.pascal_part import read_pascal_part_mat
from hiseg_jax.datasets.potsdam import decode_potsdam_colours
from hiseg_jax.hierarchies import (
    label_space,
    load_hierarchy,
)
from hiseg_jax.images import ImageLoadError

H, W = 16, 24


@dataclasses.dataclass
class Fake:
    """A fake dataset folder: the split to load, name -> expected labels [A, H, W], a required
    path whose absence must be named; `in_hierarchy`: whether its values can be checked
    against the builder's hierarchy."""

    root: Path
    split: str
    expected: dict[str, np.ndarray]
    removable: Path
    in_hierarchy: bool = True
    image_shape: tuple[int, int] = (H, W)


FAKES: dict[str, Callable[[Path], Fake]] = {}


def fake(name: str) -> Callable:
    def register(make: Callable[[Path], Fake]) -> Callable[[Path], Fake]:
        FAKES[name] = make
        return make

    return register


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def pick(values: list[int], seed: int, shape: tuple[int, ...] = (H, W)) -> np.ndarray:
    """A label map drawing every one of `values` (the first few pixels) and random ones."""
    labels = rng(seed).choice(np.asarray(values), shape).astype(np.int32)
    labels.reshape(-1)[: len(values)] = values
    return labels


def save(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    """Write `array` (uint8 [H, W] or [H, W, 3]) to `path`; `palette`: a P-mode PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, np.uint8))
    if palette:
        image.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
    image.save(path)
    return path


def save_image(path: Path, seed: int, shape: tuple[int, int] = (H, W)) -> Path:
    return save(path, rng(seed).integers(0, 256, (*shape, 3)))


def value_of(hierarchy: str, path: str) -> int:
    h = load_hierarchy(hierarchy)
    return h.values[h.index(path)]


@fake("cocostuff")
def _cocostuff(root: Path) -> Fake:
    expected = {}
    for seed, key in enumerate(["000000000139", "000000000285"]):
        labels = pick([0, 92, 181, 255, 5, 120], seed)
        save_image(root / "images" / "val2017" / f"{key}.jpg", seed)
        save(root / "annotations" / "val2017" / f"{key}.png", labels)
        expected[key] = labels[None]
    return Fake(root, "val", expected, root / "annotations" / "val2017")


@fake("cityscapes")
def _cityscapes(root: Path) -> Fake:
    expected = {}
    for seed, key in enumerate(["frankfurt_000000_000294", "frankfurt_000001_000538"]):
        labels = pick([0, 7, 11, 24, 26, 33, 9, 3], seed)
        city = "frankfurt"
        save_image(root / "leftImg8bit" / "val" / city / f"{key}_leftImg8bit.png", seed)
        save(root / "gtFine" / "val" / city / f"{key}_gtFine_labelIds.png", labels)
        save(root / "gtFine" / "val" / city / f"{key}_gtFine_color.png", labels + 1)  # decoy
        expected[key] = labels[None]
    return Fake(root, "val", expected, root / "gtFine" / "val")


TRAIN_ID_NAMES = [
    "flat/road",
    "flat/sidewalk",
    "construction/building",
    "construction/wall",
    "construction/fence",
    "object/pole",
    "object/traffic light",
    "object/traffic sign",
    "nature/vegetation",
    "nature/terrain",
    "sky/sky",
    "human/person",
    "human/rider",
    "vehicle/car",
    "vehicle/truck",
    "vehicle/bus",
    "vehicle/train",
    "vehicle/motorcycle",
    "vehicle/bicycle",
]  # Cityscapes trainIds


@fake("kitti_step")
def _kitti_step(root: Path) -> Fake:
    expected = {}
    table = {t: value_of("cityscapes", n) for t, n in enumerate(TRAIN_ID_NAMES)}
    table[IGNORE] = value_of("cityscapes", "void/unlabeled")
    for seed, (seq, frame) in enumerate([("0002", "000000"), ("0002", "000001")]):
        semantic = pick([*range(19), 255], seed)
        panoptic = np.stack([semantic, *rng(seed).integers(0, 256, (2, H, W))], axis=-1)
        save_image(root / "training" / "image_02" / seq / f"{frame}.png", seed)
        save(root / "kitti-step" / "panoptic_maps" / "val" / seq / f"{frame}.png", panoptic)
        expected[f"{seq}_{frame}"] = np.vectorize(table.get)(semantic)[None]
    return Fake(root, "val", expected, root / "training" / "image_02")


VISTAS_LABELS = [
    {"name": "animal--bird", "evaluate": True},
    {"name": "construction--barrier--fence", "evaluate": True},
    {"name": "construction--flat--road", "evaluate": True},
    {"name": "void--ego-vehicle", "evaluate": True},
    {"name": "void--unlabeled", "evaluate": False},
]


def _vistas(root: Path, config: str, labels_dir: str) -> Fake:
    root.mkdir(parents=True)
    (root / config).write_text(json.dumps({"labels": VISTAS_LABELS}))
    expected = {}
    for seed, key in enumerate(["--2DSkH0rAh6Yk-wiSbxsw", "0035fkbjWljhaftpVM37-g"]):
        labels = pick([0, 1, 2, 3, 4], seed)
        save_image(root / "validation" / "images" / f"{key}.jpg", seed)
        save(root / "validation" / labels_dir / f"{key}.png", labels, palette=True)
        expected[key] = labels[None]
    return Fake(root, "val", expected, root / config)


@fake("mapillary_vistas")
def _mapillary_v12(root: Path) -> Fake:
    return _vistas(root, "config.json", "labels")


@fake("mapillary_vistas_v2")
def _mapillary_v20(root: Path) -> Fake:
    f = _vistas(root, "config_v2.0.json", "v2.0/labels")
    return dataclasses.replace(f, removable=root / "validation" / "v2.0" / "labels")


POTSDAM_COLOURS = [
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
    (0, 0, 0),
]  # classes 0..5, then the ignored boundary


@fake("potsdam")
def _potsdam(root: Path) -> Fake:
    expected = {}
    tile_h, tile_w = 800, 1250  # 2 x 3 crops of 400 px; the last 50 columns are dropped
    for seed, tile in enumerate(["2_13", "2_10"]):  # 2_13: ISPRS test tile (val); 2_10: train
        classes = pick(list(range(7)), seed, (tile_h, tile_w))
        colours = np.asarray(POTSDAM_COLOURS, np.uint8)[classes]
        save_image(root / "2_Ortho_RGB" / f"top_potsdam_{tile}_RGB.tif", seed, (tile_h, tile_w))
        save(root / "5_Labels_all" / f"top_potsdam_{tile}_label.tif", colours)
        if tile == "2_13":
            values = np.where(classes == 6, IGNORE, classes)
            for row in range(2):
                for col in range(3):
                    crop = values[row * 400 : (row + 1) * 400, col * 400 : (col + 1) * 400]
                    expected[f"{tile}_{row}_{col}"] = crop[::2, ::2][None]
    return Fake(root, "val", expected, root / "5_Labels_all", image_shape=(200, 200))


def _pascal_part_object(
    cls: str, index: int, mask: np.ndarray, parts: list[tuple[str, np.ndarray]]
) -> tuple:
    table = np.zeros((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
    for j, (name, part_mask) in enumerate(parts):
        table[0, j]["part_name"], table[0, j]["mask"] = name, part_mask.astype(np.uint8)
    return cls, index, mask.astype(np.uint8), table if parts else np.zeros((0, 0))


def _save_pascal_part(path: Path, key: str, objects: list[tuple]) -> None:
    dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    table = np.zeros((1, len(objects)), dtype=dtype)
    for i, obj in enumerate(objects):
        for field, value in zip(("class", "class_ind", "mask", "parts"), obj, strict=True):
            table[0, i][field] = value
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"], anno[0, 0]["objects"] = key, table if objects else np.zeros((0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"anno": anno})


def _box(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top:bottom, left:right] = True
    return mask


@fake("pascal_part")
def _pascal_part(root: Path) -> Fake:
    voc = root / "VOCdevkit" / "VOC2010"
    person, car, boat = _box(0, 16, 0, 10), _box(2, 12, 12, 24), _box(12, 16, 8, 20)
    head, hand = _box(0, 4, 2, 8), _box(8, 10, 0, 3)
    wheel1, wheel2 = _box(9, 12, 12, 15), _box(9, 12, 20, 24)
    objects = [
        _pascal_part_object("person", 15, person, [("head", head), ("lhand", hand)]),
        _pascal_part_object("car", 7, car, [("wheel_1", wheel1), ("wheel_2", wheel2)]),
        _pascal_part_object("boat", 4, boat, []),
    ]
    _save_pascal_part(root / "Annotations_Part" / "2008_000001.mat", "2008_000001", objects)
    _save_pascal_part(root / "Annotations_Part" / "2008_000002.mat", "2008_000002", [])
    for seed, key in enumerate(["2008_000001", "2008_000002"]):
        save_image(voc / "JPEGImages" / f"{key}.jpg", seed)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000001\n2008_000002\n")
    labels = np.full((H, W), value_of("pascalpart", "background"), np.int32)
    for mask, path in [
        (person, "person"),
        (head, "person/head"),
        (hand, "person/lhand"),
        (car, "car"),
        (wheel1, "car/wheel"),
        (wheel2, "car/wheel"),
        (boat, "boat"),
    ]:
        labels[mask] = value_of("pascalpart", path)
    # 2008_000002 lists no object: skipped.
    return Fake(root, "val", {"2008_000001": labels[None]}, root / "Annotations_Part")


PARTIMAGENET_CATEGORIES = [
    (0, "Quadruped Head", "Quadruped"),
    (1, "Quadruped Body", "Quadruped"),
    (33, "Aeroplane Head", "Aeroplane"),
    (34, "Aeroplane Body", "Aeroplane"),
]
# split -> (WordNet id, part ids drawn); the sorted WordNet ids rank n01440764 0, n01443537 1,
# n02000000 2, n02690373 3.
PARTIMAGENET_IMAGES = {
    "train": [("n01443537", [1])],
    "test": [("n02000000", [33])],
    "val": [("n01440764", [0, 1, 40]), ("n02690373", [33, 34, 40])],
}


def _partimagenet_folder(root: Path) -> dict[str, np.ndarray]:
    """The PartImageNet_Seg layout; returns the val part masks by name."""
    data = root / "PartImageNet"
    masks = {}
    for split, images in PARTIMAGENET_IMAGES.items():
        entries, annotations = [], []
        for n, (wnid, parts) in enumerate(images):
            key = f"{wnid}_{100 + n}"
            mask = pick(parts, n)
            # one image flat under images/SPLIT, the other in its WordNet-id folder
            image_dir = data / "images" / split / (wnid if n else "")
            save_image(image_dir / f"{key}.JPEG", n)
            save(data / "annotations" / split / f"{key}.png", mask)
            entries.append({"id": n, "file_name": f"{key}.JPEG", "height": H, "width": W})
            annotations += [
                {"id": 10 * n + p, "image_id": n, "category_id": p} for p in parts if p != 40
            ]
            masks[key] = mask
        categories = [
            {"id": i, "name": name, "supercategory": sup}
            for i, name, sup in PARTIMAGENET_CATEGORIES
        ]
        (data / "annotations" / f"{split}.json").write_text(
            json.dumps({"images": entries, "annotations": annotations, "categories": categories})
        )
    return {k: m for k, m in masks.items() if k.startswith(("n01440764", "n02690373"))}


@fake("partimagenet")
def _partimagenet(root: Path) -> Fake:
    masks = _partimagenet_folder(root)
    return Fake(
        root,
        "val",
        {k: m[None] for k, m in masks.items()},
        root / "PartImageNet" / "annotations" / "val",
    )


@fake("partimagenet158")
def _partimagenet158(root: Path) -> Fake:
    masks = _partimagenet_folder(root)
    rank = {"n01440764": 0, "n02690373": 3}
    expected = {
        k: np.where(m == 40, 40, 100 * (rank[k[:9]] + 1) + m)[None] for k, m in masks.items()
    }
    return Fake(root, "val", expected, root / "PartImageNet" / "annotations" / "test.json")


def _ade_colour(classes: np.ndarray, seed: int) -> np.ndarray:
    """ADE's encoding: class = R / 10 * 256 + G; B (instances) arbitrary."""
    blue = rng(seed).integers(0, 256, classes.shape)
    return np.stack([classes // 256 * 10, classes % 256, blue], axis=-1)


@fake("ade20k")
def _ade20k(root: Path) -> Fake:
    folder = root / "ADE20K_2021_17_01" / "images" / "ADE" / "validation" / "urban" / "street"
    expected = {}
    for seed, key in enumerate(["ADE_val_00000001", "ADE_val_00000002"]):
        objects = pick([0, 1277, 3000, 165], seed)
        save_image(folder / f"{key}.jpg", seed)
        save(folder / f"{key}_seg.png", _ade_colour(objects, seed))
        parts = np.zeros((H, W), np.int32)
        if seed == 0:  # the second image has no parts file
            parts = np.where(objects == 1277, pick([0, 2000, 6], 5), 0)
            save(folder / f"{key}_parts_1.png", _ade_colour(parts, seed))
        expected[key] = np.where(objects > 0, objects * 4096 + parts, 0)[None]
    # The shipped ade20k_samples hierarchy lists only the real samples' classes.
    return Fake(root, "val", expected, folder.parents[1], in_hierarchy=False)


def _bsds_mat(path: Path, segmentations: list[np.ndarray]) -> None:
    cell = np.empty((1, len(segmentations)), dtype=object)
    for a, seg in enumerate(segmentations):
        entry = np.zeros((1, 1), dtype=[("Segmentation", "O"), ("Boundaries", "O")])
        entry[0, 0]["Segmentation"] = seg.astype(np.uint16)
        entry[0, 0]["Boundaries"] = np.zeros(seg.shape, np.uint8)
        cell[0, a] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"groundTruth": cell})


@fake("bsds500")
def _bsds500(root: Path) -> Fake:
    data = root / "BSR" / "BSDS500" / "data"  # the official archive's layout
    expected = {}
    for seed, (key, annotators) in enumerate([("101085", 3), ("3096", 2)]):
        segs = [pick(list(range(1, 6 + a)), seed + 10 * a) for a in range(annotators)]
        save_image(data / "images" / "val" / f"{key}.jpg", seed)
        _bsds_mat(data / "groundTruth" / "val" / f"{key}.mat", segs)
        expected[key] = np.stack(segs)
    return Fake(
        root,
        "val",
        dict(sorted(expected.items())),
        data / "groundTruth" / "val",
        in_hierarchy=False,
    )  # annotator segmentations: no classes


@fake("voc2012")
def _voc2012(root: Path) -> Fake:
    voc = root / "VOCdevkit" / "VOC2012"
    expected = {}
    for seed, key in enumerate(["2007_000033", "2007_000042"]):
        labels = pick([0, 1, 15, 20, 255], seed)
        save_image(voc / "JPEGImages" / f"{key}.jpg", seed)
        save(voc / "SegmentationClass" / f"{key}.png", labels, palette=True)
        expected[key] = labels[None]
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(expected) + "\n")
    return Fake(root, "val", expected, voc / "SegmentationClass")


def test_every_builder_has_a_fake():
    assert set(FAKES) == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(FAKES))
def test_prepared_source_yields_the_folder_labels(name, tmp_path):
    f = FAKES[name](tmp_path / "raw")
    source = load(name, f.root, f.split, prepared_dir=tmp_path / "prepared")
    assert len(source) == len(f.expected)
    for item, (key, labels) in zip(source, f.expected.items(), strict=True):
        got_name, image, got = read_example(item)
        assert got_name == key
        assert image.dtype == np.uint8 and image.shape == (*f.image_shape, 3)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, labels)


@pytest.mark.parametrize("name", sorted(FAKES))
def test_labels_are_values_of_the_builder_hierarchy(name, tmp_path):
    """The fake labels cover the values the builder writes: every one must encode in the
    builder's hierarchy (the metrics' scoring space), shipped or derived from the files."""
    f = FAKES[name](tmp_path / "raw")
    if not f.in_hierarchy:
        pytest.skip(f"{name}: no fixed hierarchy to check fake values against")
    try:
        hierarchy = BUILDERS[name].hierarchy(f.root)
    except ValueError as err:
        if "unknown hierarchy" not in str(err):
            raise
        pytest.skip(f"{name}: {err}")
    space = label_space(hierarchy)
    for labels in f.expected.values():
        assert (space.encode(labels) >= 0).any()  # raises on a value the hierarchy lacks


@pytest.mark.parametrize("name", sorted(FAKES))
def test_missing_path_is_named(name, tmp_path):
    f = FAKES[name](tmp_path / "raw")
    if f.removable.is_dir():
        shutil.rmtree(f.removable)
    else:
        f.removable.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(str(f.removable))):
        load(name, f.root, f.split, prepared_dir=tmp_path / "prepared")


def test_missing_data_folder_and_bad_arguments(tmp_path):
    with pytest.raises(DatasetLayoutError, match=re.escape(str(tmp_path / "nowhere"))):
        load("cocostuff", tmp_path / "nowhere", "val", prepared_dir=tmp_path / "prepared")
    with pytest.raises(ValueError, match="unknown dataset 'coco'.*cocostuff"):
        load("coco", tmp_path, "val")
    with pytest.raises(ValueError, match="no split 'test'"):
        load("cocostuff", tmp_path, "test")


def test_missing_image_file_is_named(tmp_path):
    f = _cocostuff(tmp_path / "raw")
    image = f.root / "images" / "val2017" / "000000000285.jpg"
    image.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(str(image))):
        load("cocostuff", f.root, "val", prepared_dir=tmp_path / "prepared")


def test_split_is_prepared_alone_and_once(tmp_path):
    f = _cocostuff(tmp_path / "raw")  # only val2017 exists
    b, _ = builder("cocostuff", f.root, tmp_path / "prepared", split="val")
    assert b.available_splits(f.root) == ["val"]
    first = load("cocostuff", f.root, "val", prepared_dir=tmp_path / "prepared")
    shutil.rmtree(f.root / "images")  # the prepared split no longer reads the raw files
    again = load("cocostuff", f.root, "val", prepared_dir=tmp_path / "prepared")
    assert [read_example(x)[0] for x in again] == [read_example(x)[0] for x in first]
    with pytest.raises(DatasetLayoutError, match="train2017"):
        load("cocostuff", f.root, "train", prepared_dir=tmp_path / "prepared")


def test_mislabelled_label_image_is_refused(tmp_path):
    f = _cocostuff(tmp_path / "raw")
    target = f.root / "annotations" / "val2017" / "000000000139.png"
    save(target, np.zeros((H, W, 3)))  # a colour picture instead of the id map
    with pytest.raises(DatasetLayoutError, match="single-channel"):
        load("cocostuff", f.root, "val", prepared_dir=tmp_path / "prepared")


def test_label_size_must_match_the_image(tmp_path):
    f = _cocostuff(tmp_path / "raw")
    save(f.root / "annotations" / "val2017" / "000000000139.png", np.zeros((H, W + 1)))
    with pytest.raises(ValueError, match="labels are 16x25 but the image is 16x24"):
        load("cocostuff", f.root, "val", prepared_dir=tmp_path / "prepared")


def test_read_example_decodes_and_reports_unreadable_images():
    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 3, 3), 7, np.uint8)).save(buffer, format="PNG")
    labels = np.ones((1, 2, 3), np.int32)
    name, image, got = read_example({"name": b"x1", "image": buffer.getvalue(), "labels": labels})
    assert name == "x1" and image.shape == (2, 3, 3) and np.all(image == 7)
    np.testing.assert_array_equal(got, labels)
    with pytest.raises(ImageLoadError, match="broken"):
        read_example({"name": b"broken", "image": b"not an image", "labels": labels})


def test_level_maps_follow_the_hierarchy():
    h = load_hierarchy("cityscapes")
    labels = np.array([[7, 26], [0, 23]])
    levels = level_maps(labels, h)
    assert levels.shape == (2, 2, 2)
    names = np.array(h.paths)[levels]
    np.testing.assert_array_equal(names[0], [["flat", "vehicle"], ["void", "sky"]])
    np.testing.assert_array_equal(
        names[1], [["flat/road", "vehicle/car"], ["void/unlabeled", "sky/sky"]]
    )
    shallow = level_maps(np.array([0, 1500, 1501]), load_hierarchy("pascalpart"))
    names = np.array(load_hierarchy("pascalpart").paths)[shallow]
    np.testing.assert_array_equal(
        names, [["background", "person", "person"], ["background", "person", "person/head"]]
    )
    with pytest.raises(ValueError, match=r"not in hierarchy 'cityscapes': \[34\]"):
        level_maps(np.array([7, 34]), h)


def test_kitti_step_rejects_unknown_semantic_ids():
    with pytest.raises(ValueError, match=r"outside 0..18 and 255: \[19\]"):
        step_semantic_to_label_ids(np.array([[0, 19]]))


def test_potsdam_colours_tolerate_noise():
    noisy = np.array([[[250, 252, 255], [3, 0, 251], [0, 2, 0], [128, 0, 10]]])
    np.testing.assert_array_equal(decode_potsdam_colours(noisy), [[0, 1, IGNORE, 5]])


def test_mapillary_hierarchy_from_class_names(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"labels": VISTAS_LABELS}))
    h = mapillary_hierarchy(tmp_path / "config.json", "vistas")
    assert h.paths == (
        "animal",
        "animal/bird",
        "construction",
        "construction/barrier",
        "construction/barrier/fence",
        "construction/flat",
        "construction/flat/road",
        "void",
        "void/ego-vehicle",
        "void/unlabeled",
    )
    assert h.values == (None, 0, None, None, 1, None, 2, None, 3, 4)
    assert h.types[-1] == "ignore" and h.types[h.index("void")] == "foreground"


def test_pascal_part_unknown_part_is_named(tmp_path):
    obj = _pascal_part_object("cat", 8, _box(0, 4, 0, 4), [("wing", _box(0, 2, 0, 2))])
    _save_pascal_part(tmp_path / "x.mat", "x", [obj])
    with pytest.raises(ValueError, match="part 'wing' of class 8"):
        read_pascal_part_mat(tmp_path / "x.mat")
