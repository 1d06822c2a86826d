"""Dataset builders on the real data of ../shared/data (skipped where it is absent): BSDS500
val, the VOC2012 samples, the ADE20K samples with their parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from hiseg_jax.datasets import level_maps, load, read_example
from hiseg_jax.hierarchies import label_space, load_hierarchy
from hiseg_jax.hierarchies.builders import ade20k_class_map

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")


def read_all(source) -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [read_example(item) for item in source]


def test_bsds500_val(shared_data, prepared):
    root = shared_data / "bsds500"
    items = read_all(load("bsds500", root, "val", prepared_dir=prepared))
    stems = sorted(p.stem for p in (root / "images" / "val").glob("*.jpg"))
    assert len(items) == 100 and [name for name, _, _ in items] == stems
    for name, image, labels in items:
        assert 4 <= labels.shape[0] <= 9, name
        assert image.shape[:2] == labels.shape[1:] and image.shape[:2] in ((321, 481), (481, 321))
        assert labels.min() == 1  # region ids start at 1, every pixel labelled
    name, _, labels = items[0]  # the stored maps are the .mat's, annotator by annotator
    mat = scipy.io.loadmat(root / "groundTruth" / "val" / f"{name}.mat")["groundTruth"][0]
    for a, entry in enumerate(mat):
        np.testing.assert_array_equal(labels[a], entry["Segmentation"][0, 0])


def test_voc2012_samples(shared_data, prepared):
    root = shared_data / "voc2012_samples"
    items = read_all(load("voc2012", root, "val", prepared_dir=prepared))
    assert sorted(n for n, _, _ in items) == sorted(
        p.name.removesuffix("_image.png") for p in root.glob("*_image.png")
    )
    assert len(items) == 14
    space = label_space(load_hierarchy("voc2012"))
    for name, image, labels in items:
        assert labels.shape == (1, *image.shape[:2]), name
        values = set(np.unique(labels).tolist())
        assert values <= set(range(21)) | {255}, (name, values)
        assert values & set(range(1, 21)), name  # every sample shows an object
        space.encode(labels)
    assert any(255 in labels for _, _, labels in items)  # object borders are ignored


def test_ade20k_samples_objects_and_parts(shared_data, prepared):
    root = shared_data / "ade20k_samples"
    items = read_all(load("ade20k", root, "train", prepared_dir=prepared))
    assert [n for n, _, _ in items] == [
        "ADE_train_00016869",
        "ADE_train_00016900",
        "ADE_train_00016964",
    ]
    hierarchy = load_hierarchy("ade20k_samples")
    depths = np.asarray(hierarchy.depths)
    parents = np.asarray(hierarchy.parents)
    folder = next(root.rglob("ADE_train_00016869.jpg")).parent
    for name, image, labels in items:
        assert labels.shape == (1, *image.shape[:2]), name
        label_space(hierarchy).encode(labels)  # every value is in the hierarchy
        objects, parts = level_maps(labels[0], hierarchy)
        is_part = depths[parts] == 2
        assert is_part.any(), name
        # every part pixel lies inside an object, the part's parent
        np.testing.assert_array_equal(parents[parts[is_part]], objects[is_part])
        assert np.all(depths[objects] == 1)
        # no annotated part pixel is lost, and object / part classes are the PNGs'
        raw_parts = ade20k_class_map(np.asarray(Image.open(folder / f"{name}_parts_1.png")))
        raw_objects = ade20k_class_map(np.asarray(Image.open(folder / f"{name}_seg.png")))
        assert is_part.sum() == (raw_parts > 0).sum()
        np.testing.assert_array_equal(labels[0] // 4096, raw_objects)
        np.testing.assert_array_equal(labels[0] % 4096, raw_parts)
