"""Paths on object stores through `etils.epath` and fsspec: `gs://` served by an in-memory
fsspec filesystem registered for the `gs` protocol (no network), so `hiseg segment` reads
and writes through exactly the code path of real `gs://` (`files.as_path`, epath's fsspec
backend); a missing fsspec extra gets one line naming the package."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.utils import stringify_path
from PIL import Image
from segment_cases import SMALL_FLAGS

from hiseg_jax import files
from hiseg_jax.cli import main


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


def test_evaluate_refuses_object_store_paths(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--dataset", "bsds500", "--data-dir", "gs://b/bsds", "--out", "x"])
    assert exit_.value.code == 2
    assert "only local paths here" in capsys.readouterr().err
