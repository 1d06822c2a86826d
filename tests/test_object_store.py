"""Paths on object stores through `etils.epath` and fsspec: `gs://` served by an in-memory
fsspec filesystem registered for the `gs` protocol (no network), so `hiseg segment` and
`hiseg evaluate` read and write through exactly the code path of real `gs://`
(`files.as_path`, epath's fsspec backend); a missing fsspec extra gets one line naming the
package."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.utils import stringify_path
from PIL import Image
from segment_cases import SMALL_FLAGS
from test_datasets import FAKES

from hiseg_jax import files
from hiseg_jax.cli import main
from hiseg_jax.datasets import BUILDERS, load, read_example
from hiseg_jax.evaluation import hungarian, result_files


class FakeGCS(MemoryFileSystem):
    """An in-memory bucket store that names paths as gcsfs does ("bucket/key", no
    protocol, no leading slash)."""

    protocol = ("gs", "gcs")
    root_marker = ""
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = stringify_path(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.strip("/")


@pytest.fixture
def fake_gcs(monkeypatch):
    """`gs://` served from an empty memory store. The registration outlives the test
    (fsspec can register, not unregister; epath caches the filesystem): no other test
    uses gs://, and with gcsfs absent nothing else would serve it."""
    monkeypatch.setattr(FakeGCS, "store", {})
    monkeypatch.setattr(FakeGCS, "pseudo_dirs", [""])
    for name in FakeGCS.protocol:
        fsspec.register_implementation(name, FakeGCS, clobber=True)
    return FakeGCS()


def test_atomic_writes_and_staged_folders_on_the_store(fake_gcs):
    folder = files.check_output_dir("gs://bucket/run")
    assert not fake_gcs.find("bucket")  # the probe is gone
    files.write_text(folder / "a.txt", "one")
    assert (folder / "a.txt").read_text() == "one"
    for text in ("old", "new"):
        with files.staged_folder(folder / "image", last="done.json") as staged:
            (staged / "sub").mkdir()
            (staged / "sub" / "x.bin").write_bytes(text.encode())
            (staged / "done.json").write_text(text)
    assert (folder / "image" / "sub" / "x.bin").read_text() == "new"
    assert (folder / "image" / "done.json").read_text() == "new"
    with pytest.raises(RuntimeError), files.staged_folder(folder / "other") as staged:
        (staged / "x").write_text("never published")
        raise RuntimeError
    assert not (folder / "other").exists()
    listed = sorted(p.relative_to(folder).as_posix() for p in files.files_below(folder))
    assert listed == ["a.txt", "image/done.json", "image/sub/x.bin"]


def test_result_and_leaf_files_on_the_store(fake_gcs):
    """`hiseg evaluate`'s own files: batch records and Hungarian leaf data read back."""
    out = files.check_output_dir("gs://bucket/run")
    result_files.write_batch(out, 1, [{"index": 3}, {"index": 5, "name": "5"}])
    result_files.write_batch(out, 0, [{"index": 0}])
    assert result_files.read_records(out) == [{"index": 0}, {"index": 3}, {"index": 5, "name": "5"}]
    leaves = {
        i: (np.full((i + 1, 4), i, np.float32), np.arange(3 * i + 3).reshape(-1, 3)) for i in (0, 3)
    }
    for index, (descriptors, counts) in leaves.items():
        hungarian.save_leaf_data(out, index, descriptors, counts)
    descriptors, counts = hungarian.load_leaf_data(out, [0, 3])
    np.testing.assert_array_equal(descriptors, np.concatenate([leaves[0][0], leaves[3][0]]))
    np.testing.assert_array_equal(counts, np.concatenate([leaves[0][1], leaves[3][1]]))


def test_unknown_scheme_and_missing_extra_get_one_line(monkeypatch):
    with pytest.raises(ValueError, match="unsupported location"):
        files.as_path("ftp://host/x")

    def missing(protocol):
        raise ImportError(f"no {protocol}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(ValueError, match=r"s3:// needs the s3fs package: pip install s3fs"):
        files.as_path("s3://bucket/out")


def test_segment_reads_and_writes_gs_like_local(
    fake_gcs, default_checkpoint, shared_data, tmp_path, capsys
):
    """Two BSDS500 images read from gs:// and written to gs://: the same files as a local
    run, every image folder with its marker, the gallery; a second run skips both."""
    sources = sorted((shared_data / "bsds500" / "images" / "val").glob("*.jpg"))[:2]
    for source in sources:
        fake_gcs.pipe(f"gs://bucket/images/{source.name}", source.read_bytes())
    common = ["--backbone", str(default_checkpoint), "--batch-size", "2", *SMALL_FLAGS]
    local = tmp_path / "local"
    assert main(["segment", *map(str, sources), "--out", str(local), *common]) == 0
    argv = ["segment", "gs://bucket/images", "--out", "gs://bucket/out", *common]
    assert main(argv) == 0
    assert "2 segmented, 0 skipped" in capsys.readouterr().out
    out = files.as_path("gs://bucket/out")
    assert (out / "index.html").is_file()
    for source in sources:
        image = out / source.stem
        marker = json.loads((image / "done.json").read_text())
        assert marker["source"] == f"gs://bucket/images/{source.name}"
        with (
            (image / "labels.npz").open("rb") as f,
            np.load(f) as got,
            np.load(local / source.stem / "labels.npz") as want,
        ):
            for name in want.files:
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        with (image / "overview.png").open("rb") as f:
            assert Image.open(f).size == Image.open(local / source.stem / "overview.png").size
    assert main(argv) == 0
    assert "0 segmented, 2 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(FAKES))
def test_every_dataset_builder_reads_gs_like_local(name, fake_gcs, tmp_path):
    """Each builder's fake folder (tests/test_datasets.py), uploaded to gs:// and prepared
    from there: the same names and labels, and the same hierarchy where it comes from the
    files."""
    f = FAKES[name](tmp_path / "raw")
    for path in files.files_below(f.root):
        fake_gcs.pipe(f"gs://bucket/raw/{path.relative_to(f.root).as_posix()}", path.read_bytes())
    source = load(name, "gs://bucket/raw", f.split, prepared_dir=tmp_path / "prepared")
    assert [read_example(item)[0] for item in source] == list(f.expected)
    for item, labels in zip(source, f.expected.values(), strict=True):
        np.testing.assert_array_equal(read_example(item)[2], labels)
    builder = BUILDERS[name]
    if name != "bsds500":  # no classes, no hierarchy
        assert builder.hierarchy(files.as_path("gs://bucket/raw")) == builder.hierarchy(f.root)


def test_evaluate_reads_and_writes_gs_like_local(
    fake_gcs, default_checkpoint, shared_data, tmp_path, capsys
):
    """Three BSDS500 val images (with their ground truth) read from gs:// and scored into
    gs://, first with --limit 2 (one batch), then resumed: only the last image is scored
    again, the first batch's file is untouched, and the report's totals equal those of
    the same run on local folders; the accumulator and settings are beside them."""
    bsds = shared_data / "bsds500"
    local_data = tmp_path / "bsds"
    for image in sorted((bsds / "images" / "val").glob("*.jpg"))[:3]:
        for source in (image, bsds / "groundTruth" / "val" / f"{image.stem}.mat"):
            relative = source.relative_to(bsds).as_posix()
            (local_data / relative).parent.mkdir(parents=True, exist_ok=True)
            (local_data / relative).symlink_to(source)
            fake_gcs.pipe(f"gs://bucket/bsds/{relative}", source.read_bytes())
    common = ["--dataset", "bsds500", "--backbone", str(default_checkpoint), "--no-progress"]
    common += ["--batch-size", "2", *SMALL_FLAGS]

    def evaluate(data: str, out: str, prepared: str, *flags: str) -> int:
        argv = ["evaluate", *common, "--data-dir", data, "--out", out, *flags]
        code = main([*argv, "--prepared-dir", str(tmp_path / prepared)])
        capsys.readouterr()
        return code

    local = tmp_path / "local"
    assert evaluate(str(local_data), str(local), "prep-local") == 0
    remote = "gs://bucket/run"
    assert evaluate("gs://bucket/bsds", remote, "prep-gs", "--limit", "2") == 0
    out = files.as_path(remote)
    (first,) = result_files.batch_files(out)
    written = first.read_bytes()
    assert evaluate("gs://bucket/bsds", remote, "prep-gs") == 2  # holds a run: --resume
    assert evaluate("gs://bucket/bsds", remote, "prep-gs", "--resume") == 0
    assert [p.name for p in result_files.batch_files(out)] == [
        "p0-00000000.jsonl",
        "p0-00000002.jsonl",
    ]
    assert first.read_bytes() == written
    got = json.loads((out / "report.json").read_text())
    want = json.loads((local / "report.json").read_text())
    assert got["results"] == want["results"] and got["run"]["scored"] == 3
    assert got["settings"]["data_dir"] == "gs://bucket/bsds"
    assert {"accumulator.npz", "settings.json", "report.md"} <= {p.name for p in out.iterdir()}
    assert not [p for p in files.files_below(out) if p.name.startswith(".")]


def test_only_local_prepared_dir_and_known_schemes(capsys):
    for flags, message in (
        (["--prepared-dir", "gs://b/prepared"], "only a local path here, not gs:// or s3://"),
        (["--out", "ftp://host/run"], "ftp://host/run: unsupported location"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", "--dataset", "bsds500", "--data-dir", "gs://b/bsds", *flags])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
