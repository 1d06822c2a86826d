"""Pictures from a hand-made tree: colours per region, borders where labels change, layout."""

from __future__ import annotations

import numpy as np
import pytest

from hiseg_jax import pictures
from hiseg_jax.pictures import (
    TreeLimits,
    boundary_mask,
    region_colors,
    render_level,
    render_overview,
    render_tree,
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


def test_tree_picture_draws_every_node_in_its_colour():
    levels, parent, depth, valid = handmade_tree()
    limits = TreeLimits(thumb=48)
    out = render_tree(gray_image(), levels, parent, depth, valid, limits=limits)
    n_columns, n_rows = 5, 4  # leaves 5, 6, 7, 4, 2 side by side; depths 0..3
    assert out.shape[0] == n_rows * (48 + 20 + 24)
    assert out.shape[1] == n_columns * (48 + 8) + 8
    colors = region_colors(10)
    for m in range(8):
        assert (out == colors[m]).all(-1).sum() > 40, f"frame of node {m} missing"
    for m in (8, 9):
        assert not (out == colors[m]).all(-1).any()


def test_tree_picture_limits_depth_by_node_budget():
    levels, parent, depth, valid = handmade_tree()
    limits = TreeLimits(thumb=48, max_nodes=6)  # depth 3 would make 8 nodes
    out = render_tree(gray_image(), levels, parent, depth, valid, limits=limits)
    assert out.shape[0] == 3 * (48 + 20 + 24)
    colors = region_colors(10)
    assert not (out == colors[5]).all(-1).any()


def test_tree_picture_hides_tiny_regions():
    levels, parent, depth, valid = handmade_tree()
    limits = TreeLimits(thumb=48, min_area=0.2)  # nodes 5, 6, 7 cover 1/12 of the image
    out = render_tree(gray_image(), levels, parent, depth, valid, limits=limits)
    assert out.shape[0] == 3 * (48 + 20 + 24)


def test_save_png(tmp_path):
    levels, *_ = handmade_tree()
    pictures.save_png(tmp_path / "x.png", render_level(gray_image(), levels[2]))
    assert (tmp_path / "x.png").stat().st_size > 100


def test_root_only_tree_renders():
    levels = np.zeros((3, H, W), np.int32)
    parent, depth, valid = np.array([-1, -1]), np.array([0, 0]), np.array([True, False])
    tree = render_tree(gray_image(), levels, parent, depth, valid, limits=TreeLimits(thumb=48))
    assert tree.shape == (48 + 20 + 24, 48 + 2 * 8, 3)
    overview = render_overview(gray_image(), levels, panel_height=120)
    assert overview.shape[1] == 2 * (180 + 8) + 8  # the image and one (unsplit) level
