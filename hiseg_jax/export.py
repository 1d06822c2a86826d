"""One image's segmentation as files: `tree.json`, `labels.npz` and the pictures.

`image_folder(final, source, settings)` yields a temporary folder for one image's files and,
when its block completes, writes the completion marker into it and renames it to `final`
(`files.staged_folder`): every file written for an image goes through it, so an image
folder either holds all of its files, marker included, or does not exist.

Layout of an image's folder (what `hiseg segment` writes, `done.json` last):
  tree.json       image size, patch grid, settings, and a flat node list sorted by id:
                  {"id", "parent" (null for the root), "depth", "children" (ids),
                   "area" (pixels at the image's own size), "bbox" ([x0, y0, x1, y1],
                   x1/y1 exclusive; null when the node covers no pixel), "patches",
                   "leaf", "descriptor" (row of the leaf in labels.npz's
                   leaf_descriptors; null for inner nodes)}.
                  Node ids are the ones in the label maps.
  labels.npz      levels int32 [L + 1, H, W] node id of every pixel at every depth;
                  patch_levels int32 [L + 1, h, w]; parts int32 [h, w] stage-A part of
                  every patch; leaf_ids int32 [K]; leaf_descriptors float32 [K, E].
  level_XX.png    depth XX = 01..L: the image with that depth's regions (render_level).
  overview.png    the image and all depths side by side (render_overview).
  tree.png        the tree with region thumbnails (render_tree).
  viewer.html     the interactive viewer (hiseg_jax.viewer; unless turned off).
  done.json       completion marker: {"source", "settings"}, written last.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from hiseg_jax import pictures, viewer
from hiseg_jax.files import (
    AnyPath,
    files_below,
    is_remote,
    local_lock_path,
    staged_folder,
    write_text,
)

MARKER = "done.json"


def node_records(
    levels: np.ndarray,
    patch_levels: np.ndarray,
    parent: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    is_leaf: np.ndarray,
) -> list[dict[str, Any]]:
    """The JSON node list (module docstring) of one image.

    levels: int [L + 1, H, W] pixel label maps; patch_levels: int [L + 1, h, w];
    parent, depth, valid, is_leaf: [M] rows of the tree.
    """
    slots = len(valid)
    area = np.zeros(slots, np.int64)
    patches = np.zeros(slots, np.int64)
    boxes: list[list[int] | None] = [None] * slots
    for d in np.unique(depth[valid]):
        here = valid & (depth == d)
        area[here] = np.bincount(levels[d].ravel(), minlength=slots)[:slots][here]
        patches[here] = np.bincount(patch_levels[d].ravel(), minlength=slots)[:slots][here]
        for m, box in enumerate(ndimage.find_objects(levels[d] + 1, max_label=slots)):
            if box is not None and here[m]:
                boxes[m] = [box[1].start, box[0].start, box[1].stop, box[0].stop]
    children: dict[int, list[int]] = {int(m): [] for m in np.flatnonzero(valid)}
    for m in np.flatnonzero(valid & (parent >= 0)):
        children[int(parent[m])].append(int(m))
    leaf_row = {int(m): k for k, m in enumerate(np.flatnonzero(is_leaf))}
    return [
        {
            "id": int(m),
            "parent": None if parent[m] < 0 else int(parent[m]),
            "depth": int(depth[m]),
            "children": children[int(m)],
            "area": int(area[m]),
            "bbox": boxes[m],
            "patches": int(patches[m]),
            "leaf": bool(is_leaf[m]),
            "descriptor": leaf_row.get(int(m)),
        }
        for m in np.flatnonzero(valid)
    ]


def write_image_outputs(
    folder: Path,
    image: np.ndarray,
    levels: np.ndarray,
    patch_levels: np.ndarray,
    tree_rows: dict[str, np.ndarray],
    descriptors: np.ndarray,
    info: dict[str, Any],
    *,
    with_viewer: bool = True,
) -> None:
    """Write one image's files (module docstring) into `folder`, except the marker.

    image: uint8 [H, W, 3]; levels: int32 [L + 1, H, W]; patch_levels: int32 [L + 1, h, w];
    tree_rows: the tree's "parent", "depth", "valid", "is_leaf" [M] and "parts" [N] of this
    image; descriptors: float32 [M, E] (leaf rows used); info: extra top-level JSON fields
    ("image", if given, titles the viewer page).
    """
    folder.mkdir(parents=True, exist_ok=True)
    parent, depth, valid, is_leaf = (tree_rows[k] for k in ("parent", "depth", "valid", "is_leaf"))
    nodes = node_records(levels, patch_levels, parent, depth, valid, is_leaf)
    document = {
        **info,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "grid": [int(s) for s in patch_levels.shape[1:]],
        "levels": int(levels.shape[0] - 1),
        "n_nodes": len(nodes),
        "n_leaves": int(is_leaf.sum()),
        "nodes": nodes,
    }
    write_text(folder / "tree.json", _json_one_node_per_line(document))
    leaf_ids = np.flatnonzero(is_leaf).astype(np.int32)
    np.savez_compressed(
        folder / "labels.npz",
        levels=levels.astype(np.int32),
        patch_levels=patch_levels.astype(np.int32),
        parts=tree_rows["parts"].reshape(patch_levels.shape[1:]).astype(np.int32),
        leaf_ids=leaf_ids,
        leaf_descriptors=descriptors[leaf_ids].astype(np.float32),
    )
    colors = pictures.node_colors(levels)
    for d in range(1, levels.shape[0]):
        # a depth where nothing split has the picture above it: its bytes are reused
        if d == 1 or not np.array_equal(levels[d], levels[d - 1]):
            png = pictures.encode_png(pictures.render_level(image, levels[d], colors=colors))
        (folder / f"level_{d:02d}.png").write_bytes(png)
    overview = pictures.render_overview(image, levels, colors=colors)
    pictures.save_png(folder / "overview.png", overview)
    tree_picture = pictures.render_tree(image, levels, parent, depth, valid, colors=colors)
    pictures.save_png(folder / "tree.png", tree_picture)
    if with_viewer:
        title = str(info.get("image", folder.name))
        data = viewer.page_data(image, levels, parent, depth, valid, title=title)
        write_text(folder / viewer.PAGE, viewer.page_html(data))


def is_done(folder: AnyPath, source: str, settings: dict[str, Any]) -> bool:
    """True if `folder` holds a finished result of `source` made with the same `settings`."""
    return done_settings(folder, source) == settings


def done_settings(folder: AnyPath, source: str) -> dict[str, Any] | None:
    """The settings of `folder`'s finished result of `source`, or None (not finished, or of
    another source)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("source") != source:
        return None
    return marker.get("settings")


def finished_folders(out: AnyPath) -> list[AnyPath]:
    """The image folders under `out` that hold a completion marker, sorted; hidden folders
    (temporary ones) are skipped."""
    return sorted(
        marker.parent
        for marker in files_below(out)
        if marker.name == MARKER
        and not any(part.startswith(".") for part in marker.relative_to(out).parts)
    )


def mark_done(folder: Path, source: str, settings: dict[str, Any]) -> None:
    """Write the completion marker (atomically: a reader sees all of it or none)."""
    write_text(folder / MARKER, json.dumps({"source": source, "settings": settings}, indent=1))


@contextlib.contextmanager
def image_folder(final: AnyPath, source: str, settings: dict[str, Any]) -> Iterator[Path]:
    """Yield the temporary folder of one image's files; when the block completes, write the
    marker there and rename the folder to `final` (an exception discards it).

    The caller must hold the image's lock (`image_lock_path`)."""
    with staged_folder(final, last=MARKER) as folder:
        yield folder
        mark_done(folder, source, settings)


def image_lock_path(final: AnyPath) -> Path:
    """The lock file of the image folder `final`: a hidden sibling of it (on an object
    store: a local file, `files.local_lock_path`)."""
    if is_remote(final):
        return local_lock_path(final)
    return final.with_name(f".{final.name}.lock")


def _json_one_node_per_line(document: dict[str, Any]) -> str:
    """JSON text of `document` (whose last key is "nodes"), indented, one node per line."""
    head = json.dumps({k: v for k, v in document.items() if k != "nodes"}, indent=1)
    nodes = ",\n  ".join(json.dumps(node) for node in document["nodes"])
    return f'{head[:-2]},\n "nodes": [\n  {nodes}\n ]\n}}\n'
