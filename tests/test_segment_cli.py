"""`hiseg segment` on real images (and broken files) writes every promised, consistent file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from segment_cases import SMALL_FLAGS, check_hierarchy, write_bad_files

from hiseg_jax import export
from hiseg_jax.cli import main
from hiseg_jax.commands.segment import find_jobs, output_names
from hiseg_jax.images import SAMPLE_NAMES, load_image
from hiseg_jax.tree import upsample_labels

GOOD = {"chelsea": "chelsea.png", "nested/coffee": "nested/coffee.jpg", "gray": "gray.png"}


@pytest.fixture(scope="module")
def batch_run(default_checkpoint, tmp_path_factory) -> dict:
    """One CLI run over a folder of 3 real images (one nested, one grayscale) and 4 bad
    files, batch size 2 (so the last batch is padded), then a second, identical run."""
    import skimage.data

    folder = tmp_path_factory.mktemp("images")
    (folder / "nested").mkdir()
    Image.fromarray(skimage.data.chelsea()).save(folder / GOOD["chelsea"])
    Image.fromarray(skimage.data.coffee()[:200, :300]).save(folder / GOOD["nested/coffee"])
    Image.fromarray(skimage.data.camera()[::2, ::3]).save(folder / GOOD["gray"])
    bad = write_bad_files(folder)
    out = tmp_path_factory.mktemp("out")
    argv = [
        "segment",
        str(folder),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--backbone",
        str(default_checkpoint),
        *SMALL_FLAGS,
    ]
    return {"folder": folder, "out": out, "bad": bad, "argv": argv, "rc": main(argv)}


@pytest.mark.weights
@pytest.mark.slow
def test_bad_files_are_reported_and_the_rest_segmented(batch_run, capsys):
    assert batch_run["rc"] == 1
    out = batch_run["out"]
    made = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob(export.MARKER))
    assert made == sorted(GOOD)
    for name in batch_run["bad"]:
        assert not (out / Path(name).stem).exists()


@pytest.mark.weights
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_promised_file_is_consistent(batch_run, name):
    folder = batch_run["out"] / name
    image = load_image(batch_run["folder"] / GOOD[name])
    height, width = image.shape[:2]
    document = json.loads((folder / "tree.json").read_text())
    labels = np.load(folder / "labels.npz")
    levels, patch_levels = labels["levels"], labels["patch_levels"]
    assert (document["height"], document["width"]) == (height, width)
    assert levels.shape == (4, height, width) and patch_levels.shape == (4, 16, 16)
    assert labels["parts"].shape == (16, 16)
    np.testing.assert_array_equal(levels, upsample_labels(patch_levels, (height, width)))

    nodes = {node["id"]: node for node in document["nodes"]}
    assert document["n_nodes"] == len(nodes) and nodes[0]["parent"] is None
    size = max(nodes) + 1
    parent, depth, valid = np.full(size, -1), np.zeros(size, int), np.zeros(size, bool)
    for m, node in nodes.items():
        parent[m] = -1 if node["parent"] is None else node["parent"]
        depth[m], valid[m] = node["depth"], True
        assert node["children"] == sorted(c for c, n in nodes.items() if n["parent"] == m)
        mask = levels[node["depth"]] == m
        assert node["area"] == mask.sum() > 0
        assert node["patches"] == (patch_levels[node["depth"]] == m).sum()
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert node["bbox"] == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        assert node["leaf"] == (not node["children"])
    check_hierarchy(levels, parent, depth, valid)
    leaves = [m for m, node in nodes.items() if node["leaf"]]
    assert sum(nodes[m]["area"] for m in leaves) == height * width
    np.testing.assert_array_equal(labels["leaf_ids"], sorted(leaves))
    for m in leaves:
        assert labels["leaf_ids"][nodes[m]["descriptor"]] == m
    assert labels["leaf_descriptors"].shape == (len(leaves), 384)
    assert np.isfinite(labels["leaf_descriptors"]).all()

    for d in range(1, 4):
        with Image.open(folder / f"level_{d:02d}.png") as picture:
            assert picture.size == (width, height)
    assert not (folder / "level_04.png").exists() and not (folder / "level_00.png").exists()
    for picture in ("overview.png", "tree.png"):
        with Image.open(folder / picture) as opened:
            assert opened.width > 100 and opened.height > 100
    marker = json.loads((folder / export.MARKER).read_text())
    assert marker["settings"] == document["settings"]
    assert marker["settings"]["partition"]["levels"] == 3


@pytest.mark.weights
@pytest.mark.slow
def test_rerun_skips_finished_images(batch_run, capsys):
    out = batch_run["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(batch_run["argv"]) == 1
    summary = capsys.readouterr().out
    assert "0 segmented, 3 skipped (already done), 4 failed" in summary
    for name in batch_run["bad"]:
        assert name in summary
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_marker_requires_same_source_and_settings(tmp_path):
    settings = {"size": 224, "partition": {"levels": 3}}
    assert not export.is_done(tmp_path, "a.png", settings)
    export.mark_done(tmp_path, "a.png", settings)
    assert export.is_done(tmp_path, "a.png", settings)
    assert not export.is_done(tmp_path, "b.png", settings)
    assert not export.is_done(tmp_path, "a.png", {**settings, "size": 448})
    export.clear_marker(tmp_path)
    assert not export.is_done(tmp_path, "a.png", settings)
    (tmp_path / export.MARKER).write_text('{"source": "a.png", "sett')  # torn write
    assert not export.is_done(tmp_path, "a.png", settings)


def test_output_names_are_distinct():
    root = Path("/data")
    files = [root / "x.png", root / "x.jpg", root / "sub/x.png", Path("/o/x.png")]
    names = output_names([(f, root if f.is_relative_to(root) else f.parent) for f in files])
    assert names == ["x_png", "x_jpg", "sub/x", "x_png-2"]


def test_no_images_means_the_samples():
    jobs = find_jobs([])
    assert [job.name for job in jobs] == list(SAMPLE_NAMES)
    assert jobs[0].load().shape == (512, 512, 3)


@pytest.mark.weights
@pytest.mark.slow
def test_bad_settings_exit_with_a_message(tmp_path, capsys, default_checkpoint):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(image)
    argv = [
        "segment",
        str(image),
        "--out",
        str(tmp_path / "out"),
        "--backbone",
        str(default_checkpoint),
    ]
    assert main([*argv, "--size", "100"]) == 2
    assert "multiple of the patch size 14" in capsys.readouterr().err
    assert main([*argv, "--levels", "0"]) == 2
    assert "levels must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--adjacency", "cosine"])
