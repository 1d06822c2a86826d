"""Interactive viewer: one self-contained HTML page per segmented image, and a run gallery.

A page embeds everything it shows (no network, no server, no external script or font) and
opens by double-click in any current browser:
  image    the photo as a JPEG data URI;
  leaves   the leaf of every pixel at the image's own size, as leaf indices (uint8, or
           uint16 little-endian past 256 leaves) compressed with zlib, decoded in the page
           by `DecompressionStream` (no canvas read-back, which privacy settings may blur);
  tree     every node's id, parent, depth and area in pixels, and its colour
           (`pictures.node_colors`, so the page matches the PNGs).
Every level's label map follows from the leaves and the tree (a pixel at depth d shows its
leaf's ancestor at depth d, or the leaf itself where it stopped splitting above d), which
`page_data` checks against the given `levels [L + 1, H, W]` so that the page shows exactly
`labels.npz`. The page's code and style live in `viewer_assets/` (package data).

    page = hiseg_jax.viewer_page(result, 0, image)   # in a notebook: displays inline
    page.save("cat.html")                            # or hiseg_jax.write_viewer(...)
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
import re
import zlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from hiseg_jax import pictures
from hiseg_jax.files import AnyPath, absolute, as_path, write_text

if TYPE_CHECKING:
    from hiseg_jax.api import SegmentationResult

PAGE = "viewer.html"
GALLERY = "index.html"
JPEG_QUALITY = 90
_ASSETS = resources.files("hiseg_jax") / "viewer_assets"


@dataclasses.dataclass(frozen=True)
class ViewerPage:
    """One image's viewer page (`html`: the whole document); displays inline in notebooks."""

    html: str
    title: str

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to `path` (atomically: temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, self.html)
        return path

    def _repr_html_(self) -> str:
        """The page in an iframe (`srcdoc`), so that its style and keys stay its own."""
        return (
            f'<iframe title="{html.escape(self.title)}" srcdoc="{html.escape(self.html)}" '
            'style="width: 100%; height: 760px; border: 1px solid #ddd; border-radius: 6px">'
            "</iframe>"
        )


def viewer_page(
    result: SegmentationResult, index: int, image: np.ndarray, *, title: str | None = None
) -> ViewerPage:
    """The viewer page of image `index` of `result` (`hiseg_jax.segment`'s output).

    image: uint8 [H, W, 3], the image that was segmented (`result` keeps no pixels).
    """
    if not 0 <= index < len(result):
        raise ValueError(f"index {index} is out of range for a result of {len(result)} images")
    rows = (
        np.asarray(row[index]) for row in (result.tree.parent, result.tree.depth, result.tree.valid)
    )
    title = f"image {index}" if title is None else title
    data = page_data(image, result.level_labels[index], *rows, title=title)
    return ViewerPage(page_html(data), title)


def write_viewer(
    path: str | os.PathLike[str],
    result: SegmentationResult,
    index: int,
    image: np.ndarray,
    *,
    title: str | None = None,
) -> Path:
    """Write the viewer page of image `index` of `result` to `path` (see `viewer_page`)."""
    name = Path(path).stem if title is None else title
    return viewer_page(result, index, image, title=name).save(path)


def page_data(
    image: np.ndarray,
    levels: np.ndarray,
    parent: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    *,
    title: str,
) -> dict[str, Any]:
    """The JSON the page reads (module docstring), checked against the label maps.

    image: uint8 [H, W, 3]; levels: int [L + 1, H, W] node id of every pixel at every depth
    (the `labels.npz` maps); parent, depth, valid: the tree's [M] rows of this image.
    ValueError if a level does not follow from the leaves and the tree.
    """
    image = np.asarray(image)
    levels = np.asarray(levels)
    parent, depth = (np.asarray(a).astype(np.int64) for a in (parent, depth))
    valid = np.asarray(valid, bool)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if levels.ndim != 3 or levels.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"levels must be [L + 1, H, W] with H, W = {image.shape[:2]}, got {levels.shape}"
        )
    leaf_ids, leaf_index = np.unique(levels[-1], return_inverse=True)
    if leaf_ids.min() < 0 or leaf_ids.max() >= len(valid) or not valid[leaf_ids].all():
        raise ValueError("the deepest level holds ids that are not nodes of the tree")
    if len(leaf_ids) > 1 << 16:
        raise ValueError(f"{len(leaf_ids)} leaves: the viewer shows at most 65536")
    ancestors = leaf_ancestors(leaf_ids, parent, depth, levels.shape[0] - 1)
    for d in range(levels.shape[0]):
        if not np.array_equal(ancestors[d][leaf_index.reshape(levels.shape[1:])], levels[d]):
            raise ValueError(f"level {d} does not follow from the leaves and the tree")
    nodes = np.flatnonzero(valid)
    area = np.zeros(len(valid), np.int64)
    for d in np.unique(depth[nodes]):
        counts = np.bincount(levels[d].ravel(), minlength=len(valid))[: len(valid)]
        here = valid & (depth == d)
        area[here] = counts[here]
    colors = pictures.node_colors(levels)  # grey for ids found in no level, as there
    colors = np.pad(colors, ((0, max(0, len(valid) - len(colors))), (0, 0)), constant_values=128)
    cells = leaf_index.astype("<u2" if len(leaf_ids) > 256 else np.uint8)
    return {
        "title": title,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "levels": int(levels.shape[0] - 1),
        "image": _jpeg_data_uri(image),
        "leaves": base64.b64encode(zlib.compress(cells.tobytes(), 9)).decode("ascii"),
        "leafBytes": cells.dtype.itemsize,
        "leafIds": leaf_ids.tolist(),
        "nodes": {
            "id": nodes.tolist(),
            "parent": parent[nodes].tolist(),
            "depth": depth[nodes].tolist(),
            "area": area[nodes].tolist(),
            "color": ["#{:02x}{:02x}{:02x}".format(*colors[m]) for m in nodes],
        },
    }


def page_html(data: dict[str, Any]) -> str:
    """The whole HTML document of one image's viewer, from its `page_data`."""
    return _fill(
        "page.html",
        TITLE=html.escape(data["title"]),
        STYLE=_asset("viewer.css"),
        SCRIPT=_asset("viewer.js"),
        DATA=_script_json(data),
    )


def leaf_ancestors(
    leaf_ids: np.ndarray, parent: np.ndarray, depth: np.ndarray, levels: int
) -> np.ndarray:
    """int [L + 1, K]: the node of each leaf at depths 0..L (the leaf itself below its depth)."""
    out = np.empty((levels + 1, len(leaf_ids)), np.int64)
    node = np.asarray(leaf_ids, np.int64).copy()
    for d in range(levels, -1, -1):
        deeper = depth[node] > d
        node[deeper] = parent[node[deeper]]
        out[d] = node
    return out


def write_gallery(out: str | os.PathLike[str], folders: list[AnyPath]) -> AnyPath:
    """Write `out/index.html` (atomically, unless it already says this) linking the image
    `folders` (inside `out`).

    Each card shows the image's first level picture and links its viewer page (or, for an
    image written without one, its overview picture).
    """
    out = as_path(out)
    cards = [_card(out, folder) for folder in folders]
    count = f"{len(cards)} image{'s' * (len(cards) != 1)}"
    document = _fill(
        "gallery.html",
        TITLE=html.escape(f"hiseg segment: {Path(absolute(out)).name}"),
        STYLE=_asset("viewer.css"),
        COUNT=count,
        CARDS="\n".join(cards) or '<p class="empty">No finished image yet.</p>',
    )
    path = out / GALLERY
    if not path.is_file() or path.read_text(encoding="utf-8") != document:
        write_text(path, document)  # unchanged: left as it is (a no-op rerun stays one)
    return path


def _card(out: AnyPath, folder: AnyPath) -> str:
    """One gallery card: thumbnail, name, size and node counts, links to the image's files."""
    name = folder.relative_to(out).as_posix()
    try:
        info = json.loads((folder / "tree.json").read_text())
        facts = (
            f"{info['width']} × {info['height']} px · {info['n_nodes']} nodes · "
            f"{info['n_leaves']} leaves · {info['levels']} levels"
        )
    except (OSError, ValueError, KeyError):
        facts = "tree.json unreadable"
    first_level = sorted(folder.glob("level_*.png"))[:1]
    thumb = (
        f'<img src="{_href(name, first_level[0].name)}" alt="" loading="lazy">'
        if first_level
        else ""
    )
    has_page = (folder / PAGE).is_file()
    target = _href(name, PAGE if has_page else "overview.png")
    links = " · ".join(
        f'<a href="{_href(name, file)}">{"viewer" if file == PAGE else file}</a>'
        for file in (PAGE, "overview.png", "tree.png", "tree.json")
        if (folder / file).is_file()
    )
    note = "" if has_page else ' <span class="muted">(no viewer)</span>'
    return (
        f'<article class="card"><a class="thumb" href="{target}">{thumb}</a>'
        f'<h2><a href="{target}">{html.escape(name)}</a>{note}</h2>'
        f'<p class="muted">{html.escape(facts)}</p><p class="links">{links}</p></article>'
    )


def _href(name: str, file: str) -> str:
    return html.escape(quote(f"{name}/{file}"))


def _jpeg_data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _script_json(data: dict[str, Any]) -> str:
    """JSON safe inside a <script> element (no "</" or "<!--" can end it early)."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def _fill(template: str, **fields: str) -> str:
    """`template` (a file of viewer_assets) with each `{{NAME}}` replaced by `fields[NAME]`."""
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda match: fields[match[1]], _asset(template))
