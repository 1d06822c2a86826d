"""Pictures of a hierarchical segmentation: one per level, an overview, and the tree itself.

Everything works on plain NumPy arrays at pixel resolution (the per-level node-id maps
`level_labels: int [L + 1, H, W]` and the tree's `parent`, `depth`, `valid` rows of one
image), renders with Pillow and returns `uint8 [h, w, 3]`; `save_png` writes one. A node
has the same colour in every picture (`node_colors`, indexed by node id), so a region in
a level picture can be found in the tree picture by its colour; a region keeps its colour
from level to level while it does not split (its largest child inherits the colour), and
the children of a split take shades of their parent's colour, so splits can be followed.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import math
import os
import struct
import zlib

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


def node_colors(level_labels: np.ndarray) -> np.ndarray:
    """`uint8 [K, 3]` colours of node ids 0..K-1 (K = largest id + 1) that follow the tree.

    The tree is read from the nested label maps `level_labels: int [L + 1, H, W]` (a node's
    parent is the node its pixels belong to one level up). The root is grey; its children
    take distinct hues (golden-ratio steps, largest first); below, each node's largest child
    keeps its parent's colour and the others take shades of it (the hue shifted a little,
    alternately lighter and darker, more so for smaller siblings; `_shade`).
    """
    levels = np.asarray(level_labels)
    parent, born, area = _tree_from_levels(levels)
    hsv = np.zeros((len(parent), 3))
    colors = np.full((len(parent), 3), 128, np.uint8)
    for d in range(1, levels.shape[0]):
        new = np.flatnonzero(born == d)
        for p in np.unique(parent[new]):
            kids = sorted(new[parent[new] == p], key=lambda m: (-area[m], m))
            for rank, m in enumerate(kids):
                hsv[m] = _first_level_color(rank) if p == 0 else _shade(hsv[p], rank, d)
                colors[m] = [round(255 * c) for c in colorsys.hsv_to_rgb(*hsv[m])]
    return colors


def _first_level_color(rank: int) -> tuple[float, float, float]:
    """HSV of the `rank`-th largest child of the root: hues apart by the golden ratio."""
    return ((0.6 + rank * _GOLDEN) % 1.0, (0.8, 0.6)[rank // 6 % 2], (0.9, 0.75)[rank // 12 % 2])


def _shade(parent: np.ndarray, rank: int, depth: int) -> tuple[float, float, float]:
    """HSV of the `rank`-th largest child, born at `depth`, of a node coloured `parent`: rank
    0 keeps it, odd ranks are lighter and even ranks darker, the hue moving further for
    smaller siblings (by a step that varies with the depth, so that shades of one colour
    made at different depths differ)."""
    hue, saturation, value = parent
    if rank == 0:
        return hue, saturation, value
    step = (rank + 1) // 2 * (0.05 + 0.02 * (depth % 3))
    if rank % 2:
        lighter = min(1.0, value * 1.2 + 0.1)
        return (hue + step) % 1.0, max(0.3, saturation * 0.55 ** ((rank + 1) // 2)), lighter
    return (hue - step) % 1.0, saturation, max(0.3, value * 0.6 ** (rank // 2))


def _tree_from_levels(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parent, depth of birth, pixel area), each `[K]` over ids 0..K-1, of the nodes in
    nested label maps; -1 / 0 / 0 for ids that occur nowhere (and the root's parent)."""
    size = int(levels.max()) + 1
    parent, born = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
    area = np.zeros(size, np.int64)
    born[np.unique(levels[0])] = 0
    area[0] = levels[0].size
    for d in range(1, levels.shape[0]):
        upper, here = levels[d - 1].ravel(), levels[d].ravel()
        counts = np.bincount(here, minlength=size)
        new = np.flatnonzero((counts > 0) & (born < 0))
        born[new], area[new] = d, counts[new]
        pixel = np.zeros(size, np.int64)
        pixel[here] = np.arange(len(here))  # some pixel of each id (all share one parent)
        parent[new] = upper[pixel[new]]
    return parent, np.maximum(born, 0), area


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
    image: np.ndarray,
    level_labels: np.ndarray,
    *,
    panel_height: int = 240,
    columns: int = 5,
    colors: np.ndarray | None = None,
) -> np.ndarray:
    """`uint8 [h, w, 3]`: the image, then every level 1..L as `render_level`, side by side.

    Trailing levels identical to the one before (nothing split any more) are not repeated:
    the last panel's title says which levels it stands for. Panels wrap after `columns`.
    `colors` (by node id) defaults to `node_colors`.
    """
    image = _check_image(image)
    levels = _check_levels(level_labels, image)
    last = _last_changing_level(levels)
    scale = panel_height / image.shape[0]
    size = (max(1, round(image.shape[1] * scale)), panel_height)
    small_image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    colors = node_colors(levels) if colors is None else colors
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

    Regions covering less than `min_area` of the image get no tile (their parent's caption
    counts them as "+k"); rows of tiles are added top-down, one depth at a time, while the
    picture stays within `max_nodes` tiles and `max_columns` tiles across.
    """

    max_nodes: int = 100
    max_columns: int = 40
    min_area: float = 0.005
    thumb: int = 96


@dataclasses.dataclass(frozen=True)
class TreeTile:
    """One tile of the tree picture: node `top`, drawn at its depth, standing for the chain
    `top` .. `end` of nodes that each split into one region of at least `min_area` (plus
    smaller pieces, counted in `hidden` with every other child not drawn)."""

    top: int
    end: int
    children: list[int]  # `top`s of the tiles drawn below this one, largest first
    hidden: int


def render_tree(
    image: np.ndarray,
    level_labels: np.ndarray,
    parent: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    *,
    limits: TreeLimits | None = None,
    colors: np.ndarray | None = None,
) -> np.ndarray:
    """`uint8 [h, w, 3]`: the tree as tiles in rows by depth, each joined to its parent,
    with a legend below.

    A tile shows its node's region: the image cropped to the region's bounding box with
    everything outside the region faded and the region outlined, framed in the node's
    colour (`colors` by node id, default `node_colors`) and captioned with its id and share
    of the image. A region is drawn once, at the depth where it appears: a node whose only
    split is into one region of at least `min_area` plus smaller pieces is the same region
    one level down, so its chain is one tile ("to #k, depth d") and the next tiles below it
    are the regions it finally splits into. Siblings are ordered by area, largest first.
    """
    image = _check_image(image)
    levels = _check_levels(level_labels, image)
    limits = TreeLimits() if limits is None else limits
    parent, depth, valid = (np.asarray(a) for a in (parent, depth, valid))
    colors = node_colors(levels) if colors is None else colors
    area = _node_areas(levels, depth, valid)
    tiles = tree_tiles(parent, depth, valid, area / area[0], limits)
    column = _tidy_columns({m: tile.children for m, tile in tiles.items()})
    thumb, gap, row_gap, margin = limits.thumb, limits.thumb // 6, limits.thumb // 2, 60
    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=11)
    caption = 34
    rows = int(max(depth[m] for m in tiles)) + 1
    width = max(margin + (max(column.values()) + 1) * (thumb + gap) + gap, 480)
    legend = _legend_lines(limits, width - 2 * gap)
    row_height = thumb + caption + row_gap
    height = rows * row_height + len(legend) * 14 + gap
    canvas = Image.new("RGB", (round(width), height), _WHITE)
    draw = ImageDraw.Draw(canvas)

    def top_left(m: int) -> tuple[int, int]:
        return round(margin + gap + column[m] * (thumb + gap)), row_gap // 2 + int(
            depth[m]
        ) * row_height

    for d in range(rows):
        draw.text(
            (4, row_gap // 2 + d * row_height + thumb // 2),
            f"depth {d}",
            fill=_EDGE,
            font=small,
            anchor="lm",
        )
    for m, tile in tiles.items():
        (px, py) = top_left(m)
        for child in tile.children:
            cx, cy = top_left(child)
            mid = cy - row_gap // 4 - 2
            path = [(px + thumb // 2, py + thumb + caption - 2), (px + thumb // 2, mid)]
            path += [(cx + thumb // 2, mid), (cx + thumb // 2, cy - 2)]
            draw.line(path, fill=_EDGE, width=2)
    source, source_levels = _thumbnail_source(image, levels, thumb)
    for m, tile in tiles.items():
        x, y = top_left(m)
        color = tuple(int(c) for c in colors[m])
        mask = source_levels[depth[m]] == m
        draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], fill=color)
        canvas.paste(Image.fromarray(_region_tile(source, mask, thumb - 6, color)), (x + 3, y + 3))
        text = f"#{m} {_percent(area[m] / area[0])}" + (f" +{tile.hidden}" if tile.hidden else "")
        draw.text((x + thumb / 2, y + thumb + 2), text, fill=_INK, font=font, anchor="ma")
        if tile.end != m:
            chain = f"to #{tile.end}, depth {depth[tile.end]}"
            draw.text((x + thumb / 2, y + thumb + 18), chain, fill=_EDGE, font=small, anchor="ma")
    for i, line in enumerate(legend):
        draw.text((gap, rows * row_height + i * 14), line, fill=_INK, font=small)
    return np.asarray(canvas)


def tree_tiles(
    parent: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    share: np.ndarray,
    limits: TreeLimits,
) -> dict[int, TreeTile]:
    """The tiles of `render_tree`, by top node (see `TreeTile`): the root's, then the tiles
    born at each next depth while the picture stays within `limits`.

    parent, depth, valid: the tree's `[M]` rows; share: `[M]` each node's share of the image.
    """
    kids: dict[int, list[int]] = {int(m): [] for m in np.flatnonzero(valid)}
    for m in sorted(np.flatnonzero(valid & (parent >= 0)), key=lambda m: (-share[m], m)):
        kids[int(parent[m])].append(int(m))

    def drawable(m: int) -> list[int]:
        return [c for c in kids[m] if share[c] >= limits.min_area]

    def chain(m: int) -> list[int]:
        nodes = [m]
        while len(drawable(nodes[-1])) == 1:
            nodes.append(drawable(nodes[-1])[0])
        return nodes

    chains = {0: chain(0)}
    below: dict[int, list[int]] = {0: []}
    for d in range(1, int(depth[valid].max(initial=0)) + 1):
        row = [(t, c) for t in chains for c in drawable(chains[t][-1]) if depth[c] == d]
        if not row:
            continue
        fathers = {t for t, _ in row} | {t for t in below if below[t]}
        if len(chains) + len(row) > limits.max_nodes or (
            len(chains) + len(row) - len(fathers) > limits.max_columns
        ):
            break
        for t, c in row:
            below[t].append(c)
            below[c], chains[c] = [], chain(c)
    tiles = {}
    for t, nodes in chains.items():
        children = sum(len(kids[n]) for n in nodes)
        hidden = children - (len(nodes) - 1) - len(below[t])
        tiles[t] = TreeTile(t, nodes[-1], below[t], hidden)
    return tiles


def tree_legend(limits: TreeLimits) -> str:
    """The text printed below the tree picture: what a tile, "to #k" and "+n" mean."""
    small = _percent(limits.min_area)
    return (
        "Each tile: a region (its pixels, the rest faded), framed in its colour in overview.png "
        "and level_XX.png; #id and share of the image. A region is drawn once, at the depth "
        f'where it appears; "to #k, depth d": it stays one region (pieces under {small} '
        "aside) down to depth d, where it is node #k, and the tiles below it are its parts. "
        f"+n: n pieces split off that are not drawn (under {small} of the image, or deeper "
        "than the picture goes)."
    )


@functools.lru_cache(maxsize=64)
def _legend_lines(limits: TreeLimits, width: int) -> tuple[str, ...]:
    """The tree picture's legend in lines no wider than `width` pixels, laid out once per
    width (the width moves in steps of one tile column, so a run meets few)."""
    return tuple(_wrap(tree_legend(limits), ImageFont.load_default(size=11), width))


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """`text` broken into lines no wider than `width` pixels (greedy, at spaces)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _percent(share: float) -> str:
    """'37%', or one decimal below 10% ('0.6%')."""
    return f"{100 * share:.0f}%" if share >= 0.095 else f"{100 * share:.1f}%"


def encode_png(picture: np.ndarray) -> bytes:
    """The PNG file (8-bit RGB, not interlaced) of a `uint8 [H, W, 3]` picture.

    Every row takes PNG's "Sub" filter (each byte minus the byte of the pixel to its left)
    and the whole is deflated at zlib level 1 with run-length matching: the pictures are
    flat tints with thin borders, whose filtered rows are mostly runs of zeros. About 2x
    faster than Pillow at its fastest level (which tries five filters on every row) for
    about 9% more bytes (`benchmarks/png_encoding.py`); `hiseg segment` writes about a dozen
    pictures per image."""
    picture = _check_image(picture)
    height, width = picture.shape[:2]
    rows = picture.reshape(height, 3 * width)
    filtered = rows.copy()
    filtered[:, 3:] -= rows[:, :-3]  # uint8 wrap-around is PNG's modulo-256 difference
    raw = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1)  # 1: Sub
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", deflate.compress(raw.tobytes()) + deflate.flush()),
            _png_chunk(b"IEND", b""),
        ]
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def save_png(path: str | os.PathLike[str], picture: np.ndarray) -> None:
    """Write a `uint8 [H, W, 3]` picture as a PNG file (`encode_png`)."""
    with open(path, "wb") as file:
        file.write(encode_png(picture))


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


def _region_tile(
    image: np.ndarray, mask: np.ndarray, side: int, color: tuple[int, ...] = _INK
) -> np.ndarray:
    """`uint8 [side, side, 3]`: the region's bounding box (a little padded) scaled to fit,
    pixels outside the region faded to a pale grey, centred on a light background. A region
    filling under a fifth of its box (small or scattered) is also outlined in `color`, so
    that a region of a few pixels still shows."""
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
    scaled = np.array(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))
    region = _resize_labels(inside[..., 0].astype(np.int8), size) > 0
    if inside.mean() < 0.2:
        grown = ndimage.binary_dilation(region, iterations=1)
        scaled[ndimage.binary_dilation(grown, iterations=1) & ~grown] = color
    tile.paste(Image.fromarray(scaled), ((side - size[0]) // 2, (side - size[1]) // 2))
    return np.asarray(tile)
