"""Pictures of a hierarchical segmentation: one per level, an overview, and the tree itself.

Everything works on plain NumPy arrays at pixel resolution (the per-level node-id maps
`level_labels: int [L + 1, H, W]` and the tree's `parent`, `depth`, `valid` rows of one
image), renders with Pillow and returns `uint8 [h, w, 3]`; `save_png` writes one. A node
has the same colour in every picture (`region_colors`, indexed by node id), so a region in
a level picture can be found in the tree picture by its colour.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

_GOLDEN = 0.618033988749895
_WHITE = (255, 255, 255)
_INK = (40, 40, 40)
_EDGE = (150, 150, 150)


def region_colors(n: int) -> np.ndarray:
    """`uint8 [n, 3]` distinct, saturated colours for node ids 0..n-1 (id 0, the root, grey).

    Hues step by the golden ratio so that nearby ids (siblings) differ strongly; saturation
    and value cycle with short periods so that ids whose hues nearly coincide still differ.
    """
    colors = [(128, 128, 128)]
    for i in range(1, n):
        hue = (i * _GOLDEN) % 1.0
        saturation = (0.95, 0.6, 0.8)[i % 3]
        value = (0.95, 0.75)[(i // 3) % 2]
        colors.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
    return np.asarray(colors[:n], dtype=np.uint8).reshape(n, 3)


def boundary_mask(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """`bool [H, W]`: pixels on the border between two different labels, `width` px thick."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    return edge


def render_level(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = 0.5,
    boundary_width: int | None = None,
    colors: np.ndarray | None = None,
) -> np.ndarray:
    """`uint8 [H, W, 3]`: `image` with each region of `labels: int [H, W]` tinted by its
    node's colour (blend weight `alpha`) and region borders drawn in white.

    `boundary_width` defaults to 1 px per 512 px of the longer side.
    """
    image = _check_image(image)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the image {image.shape[:2]}")
    if labels.min() < 0:
        raise ValueError("labels must be non-negative node ids")
    if colors is None:
        colors = region_colors(int(labels.max()) + 1)
    if boundary_width is None:
        boundary_width = max(1, round(max(labels.shape) / 512))
    tint = colors[labels].astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * tint
    out[boundary_mask(labels, boundary_width)] = _WHITE
    return np.round(out).astype(np.uint8)


def render_overview(
    image: np.ndarray, level_labels: np.ndarray, *, panel_height: int = 240, columns: int = 5
) -> np.ndarray:
    """`uint8 [h, w, 3]`: the image, then every level 1..L as `render_level`, side by side.

    Trailing levels identical to the one before (nothing split any more) are not repeated:
    the last panel's title says which levels it stands for. Panels wrap after `columns`.
    """
    image = _check_image(image)
    levels = _check_levels(level_labels, image)
    last = _last_changing_level(levels)
    scale = panel_height / image.shape[0]
    size = (max(1, round(image.shape[1] * scale)), panel_height)
    small_image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    colors = region_colors(int(levels.max()) + 1)
    panels = [(small_image, "image")]
    for depth in range(1, last + 1):
        small = _resize_labels(levels[depth], size)
        count = len(np.unique(levels[depth]))
        deepest = levels.shape[0] - 1
        name = f"levels {depth}-{deepest}" if depth == last < deepest else f"level {depth}"
        title = f"{name}: {count} region{'s' * (count != 1)}"
        panels.append((render_level(small_image, small, boundary_width=1, colors=colors), title))
    return _grid(panels, columns)


@dataclasses.dataclass(frozen=True)
class TreeLimits:
    """What `render_tree` shows, so that the picture stays legible (about 100 tiles at most).

    Whole depths are added top-down while the picture stays within `max_nodes` tiles and
    `max_columns` tiles across; nodes covering less than `min_area` of the image are left
    out (their parent's caption counts the hidden children as "+k").
    """

    max_nodes: int = 100
    max_columns: int = 40
    min_area: float = 0.005
    thumb: int = 96


def render_tree(
    image: np.ndarray,
    level_labels: np.ndarray,
    parent: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    *,
    limits: TreeLimits | None = None,
) -> np.ndarray:
    """`uint8 [h, w, 3]`: the tree as tiles laid out by depth, each joined to its parent.

    A tile shows its node's region: the image cropped to the region's bounding box with
    everything outside the region faded, framed in the node's colour and captioned with
    its id and share of the image. Siblings are ordered by area, largest first.
    """
    image = _check_image(image)
    levels = _check_levels(level_labels, image)
    limits = TreeLimits() if limits is None else limits
    parent, depth, valid = (np.asarray(a) for a in (parent, depth, valid))
    area = _node_areas(levels, depth, valid)
    shown = _select_nodes(parent, depth, valid, area / area[0], limits)
    children = {m: [] for m in shown}
    for m in sorted(shown, key=lambda m: (-area[m], m)):
        if m != 0:
            children[int(parent[m])].append(m)
    hidden = {m: int(np.sum(valid & (parent == m))) - len(children[m]) for m in shown}
    column = _tidy_columns(children)
    colors = region_colors(max(len(valid), 1))
    thumb, gap, caption, row_gap = limits.thumb, limits.thumb // 6, 20, limits.thumb // 2
    rows = int(max(depth[m] for m in shown)) + 1
    n_columns = max(column.values()) + 1
    width, height = n_columns * (thumb + gap) + gap, rows * (thumb + caption + row_gap)
    canvas = Image.new("RGB", (round(width), height), _WHITE)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)

    def top_left(m: int) -> tuple[int, int]:
        x = gap + column[m] * (thumb + gap)
        return round(x), row_gap // 2 + int(depth[m]) * (thumb + caption + row_gap)

    for m in shown:
        if m == 0:
            continue
        (px, py), (cx, cy) = top_left(int(parent[m])), top_left(m)
        mid = py + thumb + caption + row_gap // 4
        path = [(px + thumb // 2, py + thumb + caption - 2), (px + thumb // 2, mid)]
        path += [(cx + thumb // 2, mid), (cx + thumb // 2, cy - 2)]
        draw.line(path, fill=_EDGE, width=2)
    small, small_levels = _thumbnail_source(image, levels, thumb)
    for m in shown:
        x, y = top_left(m)
        mask = small_levels[depth[m]] == m
        tile = _region_tile(small, mask, thumb - 6)
        draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], fill=tuple(colors[m].tolist()))
        canvas.paste(Image.fromarray(tile), (x + 3, y + 3))
        text = f"#{m} {_percent(area[m] / area[0])}" + (f" +{hidden[m]}" if hidden[m] else "")
        draw.text((x + thumb / 2, y + thumb + 2), text, fill=_INK, font=font, anchor="ma")
    return np.asarray(canvas)


def _percent(share: float) -> str:
    """'37%', or one decimal below 10% ('0.6%')."""
    return f"{100 * share:.0f}%" if share >= 0.095 else f"{100 * share:.1f}%"


def save_png(path: str | os.PathLike[str], picture: np.ndarray) -> None:
    """Write a `uint8 [H, W, 3]` picture as PNG."""
    Image.fromarray(picture).save(path, format="PNG", optimize=False)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    return image


def _check_levels(level_labels: np.ndarray, image: np.ndarray) -> np.ndarray:
    levels = np.asarray(level_labels)
    if levels.ndim != 3 or levels.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"level_labels must be [L + 1, H, W] with H, W = {image.shape[:2]}, got {levels.shape}"
        )
    return levels


def _last_changing_level(levels: np.ndarray) -> int:
    """The deepest level that differs from the level above it (at least 1 when L >= 1)."""
    last = min(1, levels.shape[0] - 1)
    for d in range(2, levels.shape[0]):
        if not np.array_equal(levels[d], levels[d - 1]):
            last = d
    return last


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of `int [H, W]` labels to `size = (width, height)`."""
    rows = ((2 * np.arange(size[1]) + 1) * labels.shape[0]) // (2 * size[1])
    cols = ((2 * np.arange(size[0]) + 1) * labels.shape[1]) // (2 * size[0])
    return labels[rows[:, None], cols[None, :]]


def _grid(panels: list[tuple[np.ndarray, str]], columns: int) -> np.ndarray:
    """Panels of equal height with a title above each, `columns` per row, on white."""
    title, gap = 22, 8
    font = ImageFont.load_default(size=15)
    height = panels[0][0].shape[0]
    width = max(max(p.shape[1], math.ceil(font.getlength(text))) for p, text in panels)
    n_rows = -(-len(panels) // columns)
    n_cols = min(columns, len(panels))
    canvas = Image.new(
        "RGB", (n_cols * (width + gap) + gap, n_rows * (height + title + gap) + gap), _WHITE
    )
    draw = ImageDraw.Draw(canvas)
    for i, (panel, text) in enumerate(panels):
        x = gap + (i % columns) * (width + gap)
        y = gap + (i // columns) * (height + title + gap)
        draw.text((x, y + 2), text, fill=_INK, font=font)
        canvas.paste(Image.fromarray(panel), (x, y + title))
    return np.asarray(canvas)


def _node_areas(levels: np.ndarray, depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`int64 [M]`: pixels of each valid node (counted at its own depth), 0 elsewhere."""
    area = np.zeros(len(valid), dtype=np.int64)
    for d in np.unique(depth[valid]):
        counts = np.bincount(levels[d].ravel(), minlength=len(valid))[: len(valid)]
        at_depth = valid & (depth == d)
        area[at_depth] = counts[at_depth]
    return area


def _select_nodes(
    parent: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    share: np.ndarray,
    limits: TreeLimits,
) -> list[int]:
    """Node ids to draw: the root, then whole depths while the limits allow (TreeLimits)."""
    shown = [0]
    for d in range(1, int(depth[valid].max(initial=0)) + 1):
        shown_set = set(shown)
        row = [
            int(m)
            for m in np.flatnonzero(valid & (depth == d))
            if int(parent[m]) in shown_set and share[m] >= limits.min_area
        ]
        if not row:
            break
        columns = len(_displayed_leaves(parent, shown + row))
        if len(shown) + len(row) > limits.max_nodes or columns > limits.max_columns:
            break
        shown += row
    return shown


def _displayed_leaves(parent: np.ndarray, nodes: list[int]) -> list[int]:
    """Nodes of `nodes` that are nobody's parent within `nodes`."""
    parents = {int(parent[m]) for m in nodes if m != 0}
    return [m for m in nodes if m not in parents]


def _tidy_columns(children: dict[int, list[int]]) -> dict[int, float]:
    """Column of each node: leaves take consecutive columns left to right in depth-first
    order, a parent sits midway between its first and last child."""
    column: dict[int, float] = {}
    next_leaf = 0

    def place(m: int) -> None:
        nonlocal next_leaf
        for child in children[m]:
            place(child)
        if children[m]:
            column[m] = (column[children[m][0]] + column[children[m][-1]]) / 2
        else:
            column[m] = next_leaf
            next_leaf += 1

    place(0)
    return column


def _thumbnail_source(
    image: np.ndarray, levels: np.ndarray, thumb: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels shrunk so that the smallest region crop still has about `thumb` px
    of detail while big images are not cropped at full resolution for every tile."""
    scale = min(1.0, 4 * thumb / max(image.shape[:2]))
    if scale == 1.0:
        return image, levels
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    return small, np.stack([_resize_labels(level, size) for level in levels])


def _region_tile(image: np.ndarray, mask: np.ndarray, side: int) -> np.ndarray:
    """`uint8 [side, side, 3]`: the region's bounding box (a little padded) scaled to fit,
    pixels outside the region faded to a pale grey, centred on a light background."""
    tile = Image.new("RGB", (side, side), (235, 235, 235))
    if not mask.any():
        return np.asarray(tile)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    pad = max(1, round(0.04 * max(rows[-1] - rows[0], cols[-1] - cols[0])))
    y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, mask.shape[0])
    x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, mask.shape[1])
    crop = image[y0:y1, x0:x1].astype(np.float32)
    inside = mask[y0:y1, x0:x1, None]
    crop = np.where(inside, crop, 0.12 * crop.mean(axis=2, keepdims=True) + 0.88 * 255.0)
    crop = crop.astype(np.uint8)
    scale = side / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    crop_image = Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS)
    tile.paste(crop_image, ((side - size[0]) // 2, (side - size[1]) // 2))
    return np.asarray(tile)
