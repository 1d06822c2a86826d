"""Pictures from hand-made trees: colours that follow the tree, borders where labels change,
the tree picture's tiles (each region once, chains of unsplit regions collapsed)."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image

from hiseg_jax import export, pictures
from hiseg_jax.pictures import (
    TreeLimits,
    boundary_mask,
    node_colors,
    region_colors,
    render_level,
    render_overview,
    render_tree,
    tree_legend,
    tree_tiles,
)

H, W = 60, 90


def handmade_tree() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """root 0 -> top 1, bottom 2; 1 -> left 3, right 4; 3 -> three row bands 5, 6, 7.

    Returns level_labels [4, H, W], parent, depth, valid [M = 10] (slots 8, 9 unused).
    """
    y, x = np.mgrid[:H, :W]
    top = y < H // 2
    levels = np.zeros((4, H, W), np.int32)
    levels[1] = np.where(top, 1, 2)
    levels[2] = np.where(top, np.where(x < W // 2, 3, 4), 2)
    levels[3] = np.where(levels[2] == 3, 5 + y // 10, levels[2])
    parent = np.array([-1, 0, 0, 1, 1, 3, 3, 3, -1, -1])
    depth = np.array([0, 1, 1, 2, 2, 3, 3, 3, 0, 0])
    valid = np.arange(10) < 8
    return levels, parent, depth, valid


def gray_image() -> np.ndarray:
    return np.full((H, W, 3), 120, np.uint8)


def test_region_colors_are_distinct():
    colors = region_colors(64).astype(int)
    assert colors.shape == (64, 3)
    distance = np.abs(colors[:, None] - colors[None]).sum(-1)
    assert (distance[~np.eye(64, dtype=bool)] > 0).all()
    siblings = np.abs(colors[1:-1] - colors[2:]).sum(-1)  # consecutive ids
    assert siblings.min() > 60


def test_boundary_mask_marks_exactly_label_changes():
    labels = np.zeros((6, 8), int)
    labels[:, 5:] = 1
    edge = boundary_mask(labels)
    assert edge[:, 5].all() and edge.sum() == 6
    assert boundary_mask(labels, width=2)[:, 4:7].all()
    assert not boundary_mask(np.zeros((5, 5), int)).any()
    with pytest.raises(ValueError, match="width"):
        boundary_mask(labels, width=0)


def test_render_level_colours_regions_and_draws_borders():
    levels, *_ = handmade_tree()
    out = render_level(gray_image(), levels[3], boundary_width=1)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    edge = boundary_mask(levels[3])
    inside = {m: out[(levels[3] == m) & ~edge] for m in (2, 4, 5, 6, 7)}
    for m, pixels in inside.items():
        assert (pixels == pixels[0]).all(), f"region {m} is not uniformly tinted"
    tints = np.array([pixels[0] for pixels in inside.values()], int)
    assert (np.abs(tints[:, None] - tints[None]).sum(-1) + np.eye(5, dtype=int) > 0).all()
    assert (out[edge] == 255).all()
    assert (out[~edge] != 255).any(axis=-1).all()


def test_render_level_checks_shapes():
    levels, *_ = handmade_tree()
    with pytest.raises(ValueError, match="do not match"):
        render_level(gray_image(), levels[1][:, :10])
    with pytest.raises(ValueError, match="uint8"):
        render_level(gray_image().astype(float), levels[1])


def test_overview_has_one_panel_per_changing_level():
    levels, *_ = handmade_tree()
    deeper = np.concatenate([levels, levels[-1:], levels[-1:]])  # depths 4, 5 change nothing
    out = render_overview(gray_image(), deeper, panel_height=120, columns=10)
    panel_width, gap = 180, 8  # titles are narrower than the panels
    assert out.shape[1] == 4 * (panel_width + gap) + gap  # image + levels 1..3, not 4, 5
    wrapped = render_overview(gray_image(), deeper, panel_height=120, columns=2)
    assert wrapped.shape[0] > out.shape[0] and wrapped.shape[1] < out.shape[1]


def shares(levels, depth, valid) -> np.ndarray:
    return np.array(
        [(levels[depth[m]] == m).mean() if valid[m] else 0.0 for m in range(len(valid))]
    )


def chain_tree() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """root 0 -> left 1 (60 columns), right 2; 1 splits off a 1-pixel crumb at depth 2
    (3 = 1 less the crumb, 4 = the crumb) and again at depth 3 (5, 6), then 5 splits into
    7 (top half less the crumbs) and 8 (bottom half) at depth 4.
    Returns level_labels [5, H, W], parent, depth, valid [M = 9]."""
    y, x = np.mgrid[:H, :W]
    levels = np.zeros((5, H, W), np.int32)
    levels[1] = np.where(x < 60, 1, 2)
    levels[2] = np.where(levels[1] == 1, 3, 2)
    levels[2][0, 0] = 4
    levels[3] = np.where(levels[2] == 3, 5, levels[2])
    levels[3][1, 0] = 6
    levels[4] = np.where(levels[3] == 5, np.where(y < H // 2, 7, 8), levels[3])
    parent = np.array([-1, 0, 0, 1, 1, 3, 3, 5, 5])
    depth = np.array([0, 1, 1, 2, 2, 3, 3, 4, 4])
    return levels, parent, depth, np.ones(9, bool)


def test_node_colors_follow_the_tree():
    levels, parent, depth, valid = chain_tree()
    colors = node_colors(levels).astype(int)
    assert colors.shape == (9, 3) and (colors[0] == 128).all()
    for continuation, region in ((3, 1), (5, 3), (8, 5)):  # the largest child keeps it
        np.testing.assert_array_equal(colors[continuation], colors[region])
    assert np.abs(colors[1] - colors[2]).sum() > 150  # the root's children: other hues
    hsv = {m: colorsys.rgb_to_hsv(*(colors[m] / 255)) for m in range(1, 9)}
    for m in (4, 6, 7):  # a shade of the parent's colour: a nearby hue, visibly different
        hue_gap = abs(hsv[m][0] - hsv[int(parent[m])][0])
        assert min(hue_gap, 1 - hue_gap) < 0.1
        assert np.abs(colors[m] - colors[parent[m]]).sum() > 40


def test_tree_tiles_collapse_chains_of_unsplit_regions():
    levels, parent, depth, valid = chain_tree()
    tiles = tree_tiles(parent, depth, valid, shares(levels, depth, valid), TreeLimits())
    assert sorted(tiles) == [0, 1, 2, 7, 8]  # 3 and 5 are 1 less a crumb: one tile with 1
    assert (tiles[1].end, tiles[1].children, tiles[1].hidden) == (5, [8, 7], 2)
    assert tiles[0].children == [1, 2] and tiles[0].end == 0 and tiles[0].hidden == 0
    assert tiles[2].children == [] and tiles[7].end == 7


def test_tree_tiles_of_a_tree_without_chains_and_the_limits():
    levels, parent, depth, valid = handmade_tree()
    share = shares(levels, depth, valid)
    tiles = tree_tiles(parent, depth, valid, share, TreeLimits())
    assert sorted(tiles) == list(range(8))
    assert tiles[3].children == [5, 6, 7] and all(t.hidden == 0 for t in tiles.values())
    few = tree_tiles(parent, depth, valid, share, TreeLimits(max_nodes=6))  # depth 3: 8 tiles
    assert sorted(few) == [0, 1, 2, 3, 4] and few[3].hidden == 3
    narrow = tree_tiles(parent, depth, valid, share, TreeLimits(max_columns=4))
    assert sorted(narrow) == [0, 1, 2, 3, 4]  # depth 3 would make 5 columns
    big = tree_tiles(parent, depth, valid, share, TreeLimits(min_area=0.2))  # 5-7: 1/12 each
    assert sorted(big) == [0, 1, 2, 3, 4] and big[3].hidden == 3


def test_tree_picture_draws_each_tile_once_framed_in_its_colour():
    levels, parent, depth, valid = chain_tree()
    colors = node_colors(levels)
    out = render_tree(gray_image(), levels, parent, depth, valid, limits=TreeLimits(thumb=48))
    frame = 48 * 48 - 42 * 42
    for m, tiles in ((2, 1), (7, 1), (8, 2)):  # 8 continues 1's region and colour
        count = (out == colors[m]).all(-1).sum()
        assert tiles * frame <= count < (tiles + 1) * frame, f"node {m}: {count} pixels"
    for m in (4, 6):  # the crumbs get no tile
        assert not (out == colors[m]).all(-1).any()
    deeper = render_tree(gray_image(), *handmade_tree(), limits=TreeLimits(thumb=48))
    assert out.shape[0] > deeper.shape[0]  # rows go by depth: 0..4 here, 0..3 there


def test_tree_picture_outlines_a_small_scattered_region():
    y, x = np.mgrid[:H, :W]
    levels = np.zeros((2, H, W), np.int32)
    levels[1] = np.where((y % 20 < 3) & (x % 30 < 3), 2, 1)  # nine 3 x 3 specks
    parent, depth, valid = np.array([-1, 0, 0]), np.array([0, 1, 1]), np.ones(3, bool)
    share = (levels[1] == 2).mean()
    assert 0.005 < share < 0.02
    colors = np.array([[128, 128, 128], [10, 200, 10], [200, 10, 10]], np.uint8)
    out = render_tree(
        gray_image(), levels, parent, depth, valid, colors=colors, limits=TreeLimits(thumb=48)
    )
    frame = 48 * 48 - 42 * 42
    assert (out == colors[2]).all(-1).sum() > frame + 50  # the frame and outlines


def test_tree_picture_explains_its_marks():
    levels, parent, depth, valid = chain_tree()
    out = render_tree(gray_image(), levels, parent, depth, valid, limits=TreeLimits(thumb=48))
    bottom = out[-40:]  # the legend: dark text below the last row
    assert (bottom.sum(-1) < 200).any()
    assert "+n" in tree_legend(TreeLimits()) and "0.5%" in tree_legend(TreeLimits())


def test_save_png_decodes_to_the_picture(tmp_path):
    """Pillow reads back exactly the pixels written, for a level picture and for noise
    (where the Sub filter's differences wrap around modulo 256); bad input is refused."""
    levels, *_ = handmade_tree()
    noise = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    for picture in (render_level(gray_image(), levels[2]), noise):
        pictures.save_png(tmp_path / "x.png", picture)
        with Image.open(tmp_path / "x.png") as file:
            assert file.format == "PNG" and file.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(file), picture)
    with pytest.raises(ValueError, match="image must be uint8"):
        pictures.encode_png(noise.astype(np.float32))


def test_root_only_tree_renders():
    levels = np.zeros((3, H, W), np.int32)
    parent, depth, valid = np.array([-1, -1]), np.array([0, 0]), np.array([True, False])
    tree = render_tree(gray_image(), levels, parent, depth, valid, limits=TreeLimits(thumb=48))
    assert tree.shape[1] == 480 and 48 < tree.shape[0] < 200  # one tile and the legend
    overview = render_overview(gray_image(), levels, panel_height=120)
    assert overview.shape[1] == 2 * (180 + 8) + 8  # the image and one (unsplit) level


def test_image_outputs_draw_every_level_and_reuse_an_unchanged_one(tmp_path):
    """Each level_XX.png decodes to that level's picture; a depth where nothing split (the
    last one here) gets the bytes of the picture above it."""
    levels, parent, depth, valid = handmade_tree()
    levels = np.concatenate([levels, levels[-1:]])
    is_leaf = np.isin(np.arange(10), [2, 4, 5, 6, 7])
    rows = dict(parent=parent, depth=depth, valid=valid, is_leaf=is_leaf)
    rows["parts"] = levels[-1].ravel()
    image = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    descriptors = np.zeros((10, 4), np.float32)
    export.write_image_outputs(
        tmp_path, image, levels, levels, rows, descriptors, {}, with_viewer=False
    )
    colors = pictures.node_colors(levels)
    for d in range(1, levels.shape[0]):
        with Image.open(tmp_path / f"level_{d:02d}.png") as file:
            drawn = render_level(image, levels[d], colors=colors)
            np.testing.assert_array_equal(np.asarray(file), drawn)
    last, above = (tmp_path / f"level_{d:02d}.png" for d in (4, 3))
    assert last.read_bytes() == above.read_bytes()
