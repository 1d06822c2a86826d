"""Shared by the segment API, CLI, tree and CRF tests: one small, fast partition setting (so
that the whole pipeline compiles once per test session), the checks every result must
pass, and a small hand-built tree."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from hiseg_jax.tree import Tree

# Small on purpose: 224 px -> a 16 x 16 grid; few parts, levels and k-means restarts.
SIZE = 224
SMALL = {"n_parts": 32, "levels": 3, "max_kways": 4, "kmeans_restarts": 2, "kmeans_max_iter": 100}
PARTITION_FLAGS = [
    "--size",
    str(SIZE),
    "--n-parts",
    "32",
    "--levels",
    "3",
    "--max-kways",
    "4",
    "--kmeans-restarts",
    "2",
    "--kmeans-max-iter",
    "100",
]
# Nearest upsampling instead of the default guided filter: faster, for the tests where the
# refinement is not what is tested (test_segment_cli's batch run keeps the default).
SMALL_FLAGS = [*PARTITION_FLAGS, "--refine", "none"]


def check_hierarchy(
    levels: np.ndarray, parent: np.ndarray, depth: np.ndarray, valid: np.ndarray
) -> None:
    """Pixel label maps `levels [L + 1, H, W]` agree with the tree rows `[M]`: the root covers
    the image, every valid node is non-empty at its depth and keeps its pixels at every
    deeper level, each inner node is exactly the union of its children, every pixel at every
    depth carries a valid node of that depth (or a shallower leaf), so leaves partition it."""
    assert (levels[0] == 0).all()
    for d in range(levels.shape[0]):
        ids = np.unique(levels[d])
        assert valid[ids].all() and (depth[ids] <= d).all()
    for m in np.flatnonzero(valid):
        mask = levels[depth[m]] == m
        children = np.flatnonzero(valid & (parent == m))
        if len(children):
            union = np.isin(levels[depth[m] + 1], children)
            np.testing.assert_array_equal(union, mask, err_msg=f"node {m} != union of children")
        else:
            for d in range(depth[m], levels.shape[0]):
                np.testing.assert_array_equal(levels[d] == m, mask, err_msg=f"leaf {m} moved")


def _zero_by_zero_png() -> bytes:
    """A PNG whose header declares a 0 x 0 image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def write_bad_files(folder: Path) -> dict[str, str]:
    """Bad image files in `folder`: name -> a phrase their error message must contain."""
    buffer = folder / "whole.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(buffer, quality=90)
    data = buffer.read_bytes()
    buffer.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "zero_size.png").write_bytes(_zero_by_zero_png())
    return {
        "truncated.jpg": "truncated",
        "text.png": "not an image",
        "empty.png": "empty",
        "zero_size.png": "not an image",
    }


def small_tree() -> tuple[Tree, np.ndarray]:
    """Two images on a 2 x 3 grid, M = 5 slots; returns the tree and features [2, 2, 3, 4]."""
    labels = np.array(
        [
            [[0] * 6, [1, 1, 2, 2, 2, 2], [1, 1, 3, 3, 4, 4]],
            [[0] * 6, [1, 2, 1, 2, 1, 2], [1, 2, 1, 2, 1, 2]],
        ],
        np.int32,
    )
    parent = np.array([[-1, 0, 0, 2, 2], [-1, 0, 0, -1, -1]], np.int32)
    depth = np.array([[0, 1, 1, 2, 2], [0, 1, 1, 0, 0]], np.int32)
    valid = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    is_leaf = np.array([[0, 1, 0, 1, 1], [0, 1, 1, 0, 0]], bool)
    tree = Tree(labels, parent, depth, is_leaf, valid, np.zeros((2, 6), np.int32), grid=(2, 3))
    features = np.random.default_rng(2).normal(size=(2, 2, 3, 4)).astype(np.float32)
    return tree, features
