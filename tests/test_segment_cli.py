"""`hiseg segment` on real images (and broken files) writes every promised, consistent file;
its output folder is checked first, image folders appear whole or not at all (kill -9), and
runs sharing an output folder skip each other's images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from segment_cases import PARTITION_FLAGS, SMALL_FLAGS, check_hierarchy, write_bad_files

from hiseg_jax import export, locks
from hiseg_jax.cli import build_parser, main
from hiseg_jax.commands import segment as segment_command
from hiseg_jax.commands.options import partition_config
from hiseg_jax.commands.segment import find_jobs, output_names
from hiseg_jax.crf.dense_crf import CRFConfig
from hiseg_jax.crf.guided import GuidedConfig
from hiseg_jax.engine.batches import Failure
from hiseg_jax.features import DEFAULT_FEATURES, feature_parts
from hiseg_jax.images import SAMPLE_NAMES, load_image
from hiseg_jax.tree import upsample_labels

GOOD = {"chelsea": "chelsea.png", "nested/coffee": "nested/coffee.jpg", "gray": "gray.png"}


def small_run(
    images: Path, out: Path, checkpoint: Path, flags: list[str] = SMALL_FLAGS
) -> list[str]:
    """`hiseg segment` arguments: `images` into `out`, batches of 2, the small settings
    (`flags`: without a refinement unless told)."""
    return [
        "segment",
        str(images),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--backbone",
        str(checkpoint),
        *flags,
    ]


@pytest.fixture(scope="module")
def batch_run(default_checkpoint, tmp_path_factory) -> dict:
    """One CLI run with the default refinement (the guided filter) over a folder of 3 real
    images (one nested, one grayscale) and 4 bad files, batch size 2 (so the last batch is
    padded), then a second, identical run."""
    import skimage.data

    folder = tmp_path_factory.mktemp("images")
    (folder / "nested").mkdir()
    Image.fromarray(skimage.data.chelsea()).save(folder / GOOD["chelsea"])
    Image.fromarray(skimage.data.coffee()[:200, :300]).save(folder / GOOD["nested/coffee"])
    Image.fromarray(skimage.data.camera()[::2, ::3]).save(folder / GOOD["gray"])
    bad = write_bad_files(folder)
    out = tmp_path_factory.mktemp("out")
    argv = small_run(folder, out, default_checkpoint, PARTITION_FLAGS)
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
    # The guided filter moves the leaves' borders onto the image's edges: most pixels keep
    # the leaf of the patch under them (nearest upsampling), not all.
    nearest = upsample_labels(patch_levels, (height, width))
    assert 0.5 < (levels[-1] == nearest[-1]).mean() < 1.0

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
    # the default features join unit-length 384-wide parts (tokens, blocks 9 and 6)
    span = 384 * len(feature_parts(DEFAULT_FEATURES))
    assert labels["leaf_descriptors"].shape == (len(leaves), span)
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
    assert marker["settings"]["refine"] == {"method": "guided", **asdict(GuidedConfig())}


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
    with pytest.raises(SystemExit):
        main([*argv, "--features", "tokens+pixels"])
    assert "'pixels' is not one of tokens, keys, blockNN" in capsys.readouterr().err


def tiny_images(folder: Path, count: int) -> list[str]:
    """`count` small distinct PNG crops of a sample image in `folder`; their stems."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    source = skimage.data.astronaut()
    names = []
    for i in range(count):
        name = f"crop{i}"
        Image.fromarray(source[40 * i : 40 * i + 200, 30 * i : 30 * i + 240]).save(
            folder / f"{name}.png"
        )
        names.append(name)
    return names


def finished(out: Path) -> list[Path]:
    """Image folders of `out` in place (not the hidden temporary ones) with a marker."""
    return [p for p in out.glob(f"*/{export.MARKER}") if not p.parent.name.startswith(".")]


def no_model(monkeypatch) -> None:
    """Make loading a backbone fail the test: the command must stop before it."""

    def load(name):
        raise AssertionError(f"a model was loaded: {name}")

    monkeypatch.setattr(segment_command, "load_backbone", load)


def test_unwritable_out_stops_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    tiny_images(tmp_path / "in", 1)
    (tmp_path / "afile").write_text("x")
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "afile/out")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines == [
        f"hiseg segment: error: cannot write the --out folder "
        f"{tmp_path / 'afile/out'}: {tmp_path / 'afile'} is a file, not a folder"
    ]
    assert "Traceback" not in captured.out + captured.err


def test_no_images_found_warns_and_fails(tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    assert main(["segment", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "warning: no images found in" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "out").exists()


def test_images_another_live_run_holds_are_skipped(tmp_path, capsys, monkeypatch):
    names = tiny_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    held = [locks.try_lock(export.image_lock_path(out / name)) for name in names]
    model = types.SimpleNamespace(config=types.SimpleNamespace(patch_size=14))
    monkeypatch.setattr(segment_command, "load_backbone", lambda name: model)

    def segment_stream(items, *args, **kwargs):
        for item in items:
            assert isinstance(item, Failure), "an image held by another run was segmented"
            yield item

    monkeypatch.setattr(segment_command, "segment_stream", segment_stream)
    try:
        assert main(["segment", str(tmp_path / "in"), "--out", str(out)]) == 0
    finally:
        for lock in held:
            lock.release()
    captured = capsys.readouterr()
    for name in names:
        assert (
            f"skipping {name}: another hiseg segment run (pid {os.getpid()}) is segmenting it"
        ) in captured.out
    assert "0 segmented, 0 skipped (already done), 0 failed, 2 left to another run" in (
        captured.out
    )
    assert not any((out / name).exists() for name in names)


@pytest.mark.parametrize(
    ("old", "change", "refine"),
    [
        (["--batch-size", "8"], "engine.batch_size 8 there, 2 now", GuidedConfig()),
        (["--refine", "none"], 'refine.method "none" there, "guided" now', GuidedConfig()),
        ([], 'refine.method "guided" there, "crf" now', CRFConfig()),
    ],
)
def test_images_finished_with_other_settings_are_recomputed(
    tmp_path, capsys, monkeypatch, old, change, refine
):
    """The batch size and the devices (issue 15) and the refinement are settings: an image
    finished with other ones is recomputed, with a line naming the difference; one finished
    with these settings is skipped."""
    names = tiny_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "--out", str(out), "--batch-size", "2"]
    new = ["--crf"] if isinstance(refine, CRFConfig) else []
    for name, flags in zip(names, (old, new), strict=True):
        args = build_parser().parse_args([*argv, *flags])
        settings = segment_command.run_settings(args, partition_config(args))
        (out / name).mkdir(parents=True)
        export.mark_done(out / name, str((tmp_path / "in" / f"{name}.png").resolve()), settings)
    model = types.SimpleNamespace(config=types.SimpleNamespace(patch_size=14))
    monkeypatch.setattr(segment_command, "load_backbone", lambda name: model)
    segmented = []

    def segment_stream(items, *args, **kwargs):
        assert kwargs["refine"] == refine
        segmented.extend(item.name for item in items)
        yield from ()

    monkeypatch.setattr(segment_command, "segment_stream", segment_stream)
    assert main([*argv, *new, "--no-viewer"]) == 0
    captured = capsys.readouterr()
    assert segmented == [names[0]]
    line = captured.err.splitlines()[0]
    assert line.startswith("hiseg segment: recomputing 1 finished images made with other settings")
    assert change in line
    assert "1 skipped (already done)" in captured.out


@pytest.mark.weights
@pytest.mark.slow
def test_kill_9_leaves_only_complete_image_folders_and_the_rerun_finishes(
    default_checkpoint, tmp_path, capsys
):
    names = tiny_images(tmp_path / "in", 6)
    out = tmp_path / "out"
    argv = small_run(tmp_path / "in", out, default_checkpoint)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = tmp_path / "child.log"
    with open(log, "w") as sink:
        child = subprocess.Popen(
            [sys.executable, "-m", "hiseg_jax.cli", *argv],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 600
        while not finished(out) and child.poll() is None:
            assert time.monotonic() < deadline, "no image finished in 10 minutes"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        code = child.wait(timeout=60)
    assert code == -signal.SIGKILL, f"the run ended by itself ({code}): {log.read_text()}"
    visible = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert visible, "the run was killed before its first image folder appeared"
    promised = {
        "tree.json",
        "labels.npz",
        "overview.png",
        "tree.png",
        "level_01.png",
        "level_03.png",
        "viewer.html",
        export.MARKER,
    }
    for folder in visible:
        assert promised <= {p.name for p in folder.iterdir()}, f"{folder} is incomplete"
    capsys.readouterr()
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert f"{6 - len(visible)} segmented, {len(visible)} skipped (already done)" in summary
    # no partial folder, no lock left; the gallery beside the image folders
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "index.html"])
