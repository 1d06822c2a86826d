"""The viewer's files without a browser: the embedded data decodes to exactly the label maps,
bad input is refused with one line, the page is self-contained and small, the Python API and
notebook display, the gallery, and `hiseg segment` writing (or, with --no-viewer, not
writing) pages and the gallery. The page's behaviour is tested in test_viewer_browser.py."""

from __future__ import annotations

import base64
import html
import json
import re
import zlib
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from viewer_cases import page_text, random_hierarchy

import hiseg_jax
from hiseg_jax import export, pictures, viewer
from hiseg_jax.api import ImageSegmentation, SegmentationResult
from hiseg_jax.cli import main
from hiseg_jax.engine.batches import Failure, Item
from hiseg_jax.tree import Tree, patch_level_labels, upsample_labels

HEIGHT, WIDTH = 321, 481


def _photo(height: int, width: int) -> np.ndarray:
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height)))


def _args(tree: dict, image: np.ndarray) -> tuple:
    return image, tree["levels"], tree["parent"], tree["depth"], tree["valid"]


def _embedded(text: str) -> dict:
    """The JSON of a page's #hiseg-data element."""
    found = re.search(r'<script id="hiseg-data" type="application/json">(.*?)</script>', text)
    assert found is not None
    return json.loads(found[1])


def _decoded_levels(data: dict, levels: int) -> np.ndarray:
    """int [L + 1, H, W] rebuilt as the page does: leaf indices -> leaf ids -> ancestors."""
    raw = zlib.decompress(base64.b64decode(data["leaves"]))
    cells = np.frombuffer(raw, "<u2" if data["leafBytes"] == 2 else np.uint8)
    leaf = np.asarray(data["leafIds"])[cells].reshape(data["height"], data["width"])
    nodes = data["nodes"]
    parent = dict(zip(nodes["id"], nodes["parent"], strict=True))
    depth = dict(zip(nodes["id"], nodes["depth"], strict=True))

    def up(m: int, d: int) -> int:
        while depth[m] > d:
            m = parent[m]
        return m

    lut = {m: [up(m, d) for d in range(levels + 1)] for m in data["leafIds"]}
    return np.stack([np.vectorize(lambda m, d=d: lut[m][d])(leaf) for d in range(levels + 1)])


@pytest.mark.parametrize("seed", [0, 4])
def test_embedded_data_is_exactly_the_label_maps(seed):
    tree = random_hierarchy(HEIGHT, WIDTH, seed=seed)
    data = viewer.page_data(*_args(tree, _photo(HEIGHT, WIDTH)), title="t")
    assert data["leafBytes"] == 1
    np.testing.assert_array_equal(_decoded_levels(data, 4), tree["levels"])
    nodes = np.flatnonzero(tree["valid"])
    assert data["nodes"]["id"] == nodes.tolist()
    for m, area in zip(nodes, data["nodes"]["area"], strict=True):
        assert area == (tree["levels"][tree["depth"][m]] == m).sum() > 0
    colors = pictures.node_colors(tree["levels"])  # the colours of the PNGs
    assert data["nodes"]["color"] == ["#{:02x}{:02x}{:02x}".format(*colors[m]) for m in nodes]


def test_more_than_256_leaves_use_16_bits():
    leaf = np.arange(40 * 30).reshape(30, 40).repeat(2, 0).repeat(2, 1)  # 1200 leaves
    parent = np.r_[-1, np.zeros(1200, int)]
    depth = np.r_[0, np.ones(1200, int)]
    levels = np.stack([np.zeros_like(leaf), leaf + 1])
    image = np.zeros((60, 80, 3), np.uint8)
    data = viewer.page_data(image, levels, parent, depth, np.ones(1201, bool), title="t")
    assert data["leafBytes"] == 2
    np.testing.assert_array_equal(_decoded_levels(data, 1), levels)


def test_bad_input_is_refused_with_one_line():
    tree = random_hierarchy(60, 80, grid=(12, 16), seed=4)
    image = _photo(60, 80)
    moved = tree["levels"].copy()
    m = int(np.flatnonzero(tree["valid"] & (tree["depth"] == 2))[0])
    moved[2][moved[2] != m] = m  # level 2 no longer follows from the leaves
    cases = {
        "level 2 does not follow from the leaves": (image, moved),
        "image must be uint8": (image.astype(np.float32), tree["levels"]),
        "levels must be [L + 1, H, W]": (image[:50], tree["levels"]),
    }
    for message, (picture, levels) in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            viewer.page_data(picture, levels, *_args(tree, image)[2:], title="t")
    unused = int(np.flatnonzero(~tree["valid"])[0])
    with pytest.raises(ValueError, match="not nodes of the tree"):
        viewer.page_data(image, tree["levels"] * 0 + unused, *_args(tree, image)[2:], title="t")


def test_page_is_self_contained_and_under_1_mb():
    tree = random_hierarchy(HEIGHT, WIDTH, seed=4, split=0.75)
    assert 25 <= tree["valid"].sum() <= 60
    text = page_text(*_args(tree, _photo(HEIGHT, WIDTH)), title="<b>cat</b>")
    size = len(text.encode("utf-8"))
    print(f"viewer page for a {WIDTH} x {HEIGHT} image, {tree['valid'].sum()} nodes: {size} bytes")
    assert size < 1_000_000
    assert "<title>&lt;b&gt;cat&lt;/b&gt; · hiseg viewer</title>" in text
    references = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', text)
    assert all(ref.startswith("data:") for ref in references), references
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
    assert "@import" not in text and "url(" not in text
    assert "default-src 'none'" in text  # the page forbids itself any fetch


def _result(images: list[np.ndarray], grid: tuple[int, int] = (16, 16)) -> SegmentationResult:
    """A SegmentationResult of random trees over the patch grid, as `segment` returns."""
    trees = [
        random_hierarchy(*grid, grid=grid, seed=b + 4, roughen=False) for b in range(len(images))
    ]
    parent = np.stack([t["parent"] for t in trees])
    valid = np.stack([t["valid"] for t in trees])
    has_children = np.stack([np.isin(np.arange(valid.shape[1]), p[p >= 0]) for p in parent])
    tree = Tree(
        labels=jnp.asarray(
            np.stack([t["levels"].reshape(t["levels"].shape[0], -1) for t in trees])
        ),
        parent=jnp.asarray(parent),
        depth=jnp.asarray(np.stack([t["depth"] for t in trees])),
        is_leaf=jnp.asarray(valid & ~has_children),
        valid=jnp.asarray(valid),
        parts=jnp.zeros((len(images), grid[0] * grid[1]), jnp.int32),
        grid=grid,
    )
    levels = tuple(
        np.asarray(upsample_labels(t["levels"], image.shape[:2]))
        for t, image in zip(trees, images, strict=True)
    )
    return SegmentationResult(tree, levels, np.zeros((len(images), valid.shape[1], 4), np.float32))


def _page_of(result: SegmentationResult, b: int, image: np.ndarray, title: str) -> str:
    rows = (
        np.asarray(row[b]) for row in (result.tree.parent, result.tree.depth, result.tree.valid)
    )
    return page_text(image, result.level_labels[b], *rows, title=title)


def test_python_api_writes_and_displays_a_page(tmp_path):
    images = [_photo(90, 120), _photo(64, 64)]
    result = _result(images)
    shown = hiseg_jax.viewer_page(result, 1, images[1], title="second")
    expected = _page_of(result, 1, images[1], "second")
    assert shown.html == expected
    shown = shown._repr_html_()
    assert (
        shown.startswith("<iframe")
        and html.unescape(re.search(r'srcdoc="([^"]*)"', shown)[1]) == expected
    )
    path = hiseg_jax.write_viewer(tmp_path / "cat.html", result, 0, images[0])
    assert path.read_text(encoding="utf-8") == _page_of(result, 0, images[0], "cat")
    assert [p.name for p in tmp_path.iterdir()] == ["cat.html"]
    with pytest.raises(ValueError, match="index 2 is out of range"):
        hiseg_jax.viewer_page(result, 2, images[0])
    with pytest.raises(ValueError, match="levels must be"):
        hiseg_jax.viewer_page(result, 0, images[1])


def test_gallery_links_every_folder(tmp_path):
    for name, with_page in (("a b", True), ("nested/c&d", False)):
        folder = tmp_path / name
        folder.mkdir(parents=True)
        info = {"width": 4, "height": 3, "n_nodes": 5, "n_leaves": 3, "levels": 2}
        (folder / "tree.json").write_text(json.dumps(info))
        pictures.save_png(folder / "level_01.png", np.zeros((3, 4, 3), np.uint8))
        pictures.save_png(folder / "overview.png", np.zeros((3, 4, 3), np.uint8))
        if with_page:
            (folder / viewer.PAGE).write_text("<html></html>")
    folders = [tmp_path / "a b", tmp_path / "nested/c&d"]
    gallery = viewer.write_gallery(tmp_path, folders).read_text(encoding="utf-8")
    assert "2 images" in gallery
    assert 'href="a%20b/viewer.html"' in gallery and 'src="a%20b/level_01.png"' in gallery
    assert 'href="nested/c%26d/overview.png"' in gallery and "nested/c&amp;d" in gallery
    assert "4 × 3 px · 5 nodes · 3 leaves · 2 levels" in gallery
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b", "index.html", "nested"]


@pytest.fixture
def fake_pipeline(monkeypatch):
    """`hiseg segment` with the backbone and `segment_stream` replaced by random trees (no
    model); records how many images each run segmented."""
    from hiseg_jax.commands import segment as command

    calls = []

    def fake_segment_stream(items, model, size, **kwargs):
        items = list(items)
        loaded = [item for item in items if isinstance(item, Item)]
        calls.append(len(loaded))
        yield from (item for item in items if isinstance(item, Failure))
        result = _result([item.image for item in loaded])
        patch_levels = np.asarray(patch_level_labels(result.tree))
        for b, item in enumerate(loaded):
            yield ImageSegmentation(
                item,
                result.tree[b],
                patch_levels[b],
                result.level_labels[b],
                result.leaf_descriptors[b],
            )

    model = SimpleNamespace(config=SimpleNamespace(patch_size=14))
    monkeypatch.setattr(command, "load_backbone", lambda name: model)
    monkeypatch.setattr(command, "segment_stream", fake_segment_stream)
    return calls


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(_photo(40 + 10 * i, 50)).save(folder / name)


def test_segment_writes_pages_and_refreshes_the_gallery(tmp_path, fake_pipeline):
    images, out = tmp_path / "images", tmp_path / "out"
    _images(images, ["a.png", "b.png"])
    assert main(["segment", str(images), "--out", str(out)]) == 0
    for name in ("a", "b"):
        data = _embedded((out / name / viewer.PAGE).read_text(encoding="utf-8"))
        labels = np.load(out / name / "labels.npz")["levels"]
        np.testing.assert_array_equal(_decoded_levels(data, labels.shape[0] - 1), labels)
        assert data["title"] == name
    gallery = (out / "index.html").read_text(encoding="utf-8")
    assert "2 images" in gallery and 'href="a/viewer.html"' in gallery

    _images(images, ["a.png", "b.png", "c.png"])  # a resumed run with one more image
    assert main(["segment", str(images), "--out", str(out)]) == 0
    assert fake_pipeline == [2, 1]
    gallery = (out / "index.html").read_text(encoding="utf-8")
    assert "3 images" in gallery and all(f'href="{n}/viewer.html"' in gallery for n in "abc")
    assert not list(out.glob(".*"))  # no temporary file left


def test_no_viewer_writes_no_page_and_no_gallery(tmp_path, fake_pipeline):
    images, out = tmp_path / "images", tmp_path / "out"
    _images(images, ["a.png"])
    assert main(["segment", str(images), "--out", str(out), "--no-viewer"]) == 0
    assert (out / "a" / export.MARKER).is_file()
    assert not (out / "a" / viewer.PAGE).exists() and not (out / "index.html").exists()
