"""Label hierarchy files parse, are consistent and have the official class counts; the
scoring space merges background, drops ignore and encodes raw maps; builders derive files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hiseg_jax.hierarchies import (
    ancestor_matrix,
    available_hierarchies,
    flat_label_space,
    format_hierarchy,
    label_space,
    load_hierarchy,
    parse_hierarchy,
)
from hiseg_jax.hierarchies.builders import (
    ade20k_class_map,
    ade20k_pixel_values,
    build_ade20k_hierarchy,
    build_partimagenet158,
    partimagenet158_pixel_values,
)

SHIPPED = available_hierarchies()


def test_expected_files_are_shipped():
    assert set(SHIPPED) == {
        "voc2012",
        "cocostuff",
        "cityscapes",
        "pascalpart",
        "partimagenet",
        "potsdam",
        "ade20k_samples",
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_file_is_consistent_and_round_trips(name):
    h = load_hierarchy(name)
    assert all(p < i for i, p in enumerate(h.parents))  # parents exist, defined first
    values = [v for v in h.values if v is not None]
    assert len(values) == len(set(values))
    assert parse_hierarchy(format_hierarchy(h), name) == h
    space = label_space(h)
    assert space.region_sets[:, 0].sum() == 0  # the image root is never scored
    # Every raw value encodes to a node of its own type (or -1 when ignored).
    for value, node_type in zip(h.values, h.types, strict=True):
        if value is not None:
            encoded = int(space.encode(np.array([value]))[0])
            assert (encoded == -1) == (node_type == "ignore")


def set_size(space, name):
    return int(space.region_set(name).sum())


def test_voc2012():
    space = label_space(load_hierarchy("voc2012"))
    assert space.num_nodes == 22 and space.set_names == ("all",)  # root + bg + 20 classes
    assert set_size(space, "all") == 21
    np.testing.assert_array_equal(space.encode(np.array([0, 1, 20, 255])), [1, 2, 21, -1])


def test_cocostuff():
    h = load_hierarchy("cocostuff")
    values = sorted(v for v in h.values if v is not None and v != 255)
    assert len(values) == 171 and values[0] == 0 and values[-1] == 181
    assert {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}.isdisjoint(values)  # removed ids
    space = label_space(h)
    assert [set_size(space, f"depth{d}") for d in (1, 2, 3, 4)] == [2, 4, 27, 171]
    depth3 = {space.names[i].split("/")[-1] for i in np.flatnonzero(space.region_set("depth3"))}
    assert {"person", "vehicle", "kitchen", "textile", "ground", "water", "solid"} <= depth3
    assert space.names[space.encode(np.array([0]))[0]] == "things/outdoor/person/person"
    assert space.names[space.encode(np.array([181]))[0]] == "stuff/outdoor/solid/wood"


def test_cityscapes():
    space = label_space(load_hierarchy("cityscapes"))
    assert set_size(space, "depth1") == 7 and set_size(space, "depth2") == 19
    encoded = space.encode(np.arange(34))
    assert (encoded >= 0).sum() == 19  # the 19 train classes; every other id is ignored
    assert space.names[encoded[7]] == "flat/road" and encoded[9] == -1  # parking ignored
    # Categories hold their classes: "flat" contains road and sidewalk, not parking.
    flat = space.names.index("flat")
    assert space.ancestor[flat, encoded[7]] and space.ancestor[flat, encoded[8]]


def test_part_datasets():
    space = label_space(load_hierarchy("partimagenet"))
    assert set_size(space, "depth1") == 12 and set_size(space, "depth2") == 41  # + background
    assert space.encode(np.array([40]))[0] == 1  # the merged background
    pascal = load_hierarchy("pascalpart")
    objects = [p for p, d in zip(pascal.paths, pascal.depths, strict=True) if d == 1]
    assert len(objects) == 22  # background, 20 classes, void
    space = label_space(pascal)
    assert space.names[space.encode(np.array([1501]))[0]] == "person/head"
    assert space.names[space.encode(np.array([400]))[0]] == "boat"


TOY = """
# a toy: fg grouping node with a background and an ignore child
animal | - | foreground
animal/cat | 1 | foreground
animal/cat/ear | 2 | foreground
animal/shadow | 3 | background
animal/blur | 4 | ignore
sky | 5 | background
void | 255 | ignore
"""


def test_label_space_merges_background_and_drops_ignore():
    space = label_space(parse_hierarchy(TOY, "toy"))
    assert space.names == ("(image)", "background", "animal", "animal/cat", "animal/cat/ear")
    np.testing.assert_array_equal(space.parent, [-1, 0, 0, 2, 3])
    np.testing.assert_array_equal(
        space.encode(np.array([[1, 2, 3], [4, 5, 255]])), [[3, 4, 1], [-1, 1, -1]]
    )
    # A depth cut holds that depth's nodes and shallower leaves (background at every depth).
    np.testing.assert_array_equal(space.region_set("depth1"), [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(space.region_set("depth3"), [0, 1, 0, 0, 1])
    with pytest.raises(ValueError, match=r"not in hierarchy 'toy': \[6, 7\]"):
        space.encode(np.array([1, 6, 7]))
    with pytest.raises(ValueError, match="no region set"):
        space.region_set("depth9")


def test_encode_sparse_values_and_flat_spaces():
    sparse = parse_hierarchy("a | 5000000 | foreground\nb | 9 | foreground", "sparse")
    space = label_space(sparse)  # value range too wide for a dense table
    np.testing.assert_array_equal(space.encode(np.array([9, 5000000])), [2, 1])
    with pytest.raises(ValueError, match=r"\[10\]"):
        space.encode(np.array([10]))
    flat = flat_label_space(4, ignore_values=(255,), unscored=(0,))
    np.testing.assert_array_equal(flat.encode(np.array([0, 3, 255])), [0, 3, -1])
    np.testing.assert_array_equal(flat.region_sets, [[0, 1, 1, 1]])
    with pytest.raises(ValueError, match="cycle"):
        ancestor_matrix(np.array([1, 0]))


@pytest.mark.parametrize(
    "text, message",
    [
        ("a | 1", "expected 'path | value | type'"),
        ("a/b | 1 | foreground", "parent 'a' is not defined"),
        ("a | 1 | foreground\na | 2 | foreground", "duplicate path"),
        ("a | 1 | foreground\nb | 1 | foreground", "value 1 already used by 'a'"),
        ("a | x | foreground", "value must be an integer"),
        ("a | 1 | thing", "type must be one of"),
        ("a | - | foreground", "no pixel value in its subtree"),
        ("a | - | background\na/b | 1 | foreground", "subtree makes it 'foreground'"),
        ("a | - | ignore\na/b | 1 | background\na/c | 2 | ignore", "mixes background and ignore"),
        ("a /b | 1 | foreground", "stray spaces"),
        ("# only a comment", "no nodes"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_hierarchy(text, "bad")


def test_unknown_hierarchy():
    with pytest.raises(ValueError, match="unknown hierarchy 'nope'; available"):
        load_hierarchy("nope")


def test_ade20k_builder_reproduces_the_shipped_samples(shared_data):
    from PIL import Image

    root = shared_data / "ade20k_samples/ADE20K_2021_17_01/images/ADE/training/urban/street"
    stems = sorted(p.with_suffix("") for p in root.glob("ADE_train_*.json"))
    assert len(stems) == 3
    built = build_ade20k_hierarchy(stems, "ade20k_samples")
    assert built == load_hierarchy("ade20k_samples")
    space = label_space(built)
    assert "car/wheel" in space.names and set_size(space, "depth1") == 24
    for stem in stems:  # every pixel of the samples encodes
        objects = ade20k_class_map(np.asarray(Image.open(f"{stem}_seg.png").convert("RGB")))
        parts = ade20k_class_map(np.asarray(Image.open(f"{stem}_parts_1.png").convert("RGB")))
        encoded = space.encode(ade20k_pixel_values(objects, parts))
        assert encoded.shape == objects.shape and (encoded >= 0).mean() > 0.5


def test_partimagenet158_builder(tmp_path):
    data = {
        "categories": [
            {"id": 0, "name": "Quadruped Head", "supercategory": "Quadruped"},
            {"id": 1, "name": "Quadruped Body", "supercategory": "Quadruped"},
            {"id": 31, "name": "Boat Body", "supercategory": "Boat"},
        ],
        "images": [
            {"id": 1, "file_name": "n02000000_1.JPEG"},
            {"id": 2, "file_name": "n01000000_7.JPEG"},
            {"id": 3, "file_name": "n03000000_2.JPEG"},
        ],
        "annotations": [
            {"image_id": 1, "category_id": 0},
            {"image_id": 2, "category_id": 1},
            {"image_id": 3, "category_id": 31},
        ],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    h = build_partimagenet158([path])
    # Sorted WordNet ids rank n01 -> 0, n02 -> 1, n03 -> 2: part p of rank r = 100 (r + 1) + p.
    assert h.paths == (
        "quadruped",
        "quadruped/n01000000",
        "quadruped/n01000000/head",
        "quadruped/n01000000/body",
        "quadruped/n02000000",
        "quadruped/n02000000/head",
        "quadruped/n02000000/body",
        "boat",
        "boat/n03000000",
        "boat/n03000000/body",
        "background",
    )
    assert h.values[h.index("quadruped/n02000000/body")] == 201
    np.testing.assert_array_equal(
        partimagenet158_pixel_values(np.array([0, 1, 40]), "n02000000", h), [200, 201, 40]
    )
    data["annotations"].append({"image_id": 1, "category_id": 31})
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="has parts of"):
        build_partimagenet158([path])
