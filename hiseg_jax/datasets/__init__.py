"""Segmentation datasets as tensorflow-datasets builders (ArrayRecord, no TensorFlow needed).

`load(name, data_dir, split)` prepares that split of the dataset from the files in `data_dir`
(local, `gs://` or `s3://`: the builders read through `files.as_path`) on first use (under
the local `prepared_dir`, default `$HISEG_TFDS_DIR/<hash of data_dir>`, see
`hiseg_jax.paths`) and returns a random-access data source whose items are dicts with
`image` (encoded bytes), `labels` (int32 [A, H, W], see `base.py` for what A holds) and
`name`; `read_example(item)` decodes one. The label values are those of the builder's
hierarchy: `BUILDERS[name].HIERARCHY`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from hiseg_jax.datasets.ade20k import Ade20k
from hiseg_jax.datasets.base import IGNORE, DatasetLayoutError, SegmentationBuilder
from hiseg_jax.datasets.bsds500 import Bsds500
from hiseg_jax.datasets.cityscapes import Cityscapes
from hiseg_jax.datasets.cocostuff import Cocostuff
from hiseg_jax.datasets.kitti_step import KittiStep
from hiseg_jax.datasets.mapillary import MapillaryVistas, MapillaryVistasV2
from hiseg_jax.datasets.partimagenet import Partimagenet, Partimagenet158
from hiseg_jax.datasets.pascal_part import PascalPart
from hiseg_jax.datasets.potsdam import Potsdam
from hiseg_jax.datasets.reader import level_maps, read_example
from hiseg_jax.datasets.voc2012 import Voc2012
from hiseg_jax.files import absolute, as_path
from hiseg_jax.paths import prepared_datasets_dir

BUILDERS: dict[str, type[SegmentationBuilder]] = {
    b.name: b
    for b in (
        Ade20k,
        Bsds500,
        Cityscapes,
        Cocostuff,
        KittiStep,
        MapillaryVistas,
        MapillaryVistasV2,
        Partimagenet,
        Partimagenet158,
        PascalPart,
        Potsdam,
        Voc2012,
    )
}

__all__ = [
    "BUILDERS",
    "IGNORE",
    "DatasetLayoutError",
    "builder",
    "level_maps",
    "load",
    "read_example",
]


def builder(
    name: str,
    data_dir: str | os.PathLike[str],
    prepared_dir: str | Path | None = None,
    *,
    split: str,
) -> tuple[SegmentationBuilder, tfds.download.DownloadConfig]:
    """The builder of split `split` of dataset `name` reading raw files from `data_dir`, and
    the tfds DownloadConfig that points it there."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(BUILDERS))}")
    cls = BUILDERS[name]
    if split not in cls.SPLITS:
        raise ValueError(f"{name} has no split {split!r}; valid: {', '.join(cls.SPLITS)}")
    data_dir = as_path(data_dir)
    if prepared_dir is None:
        cache = prepared_datasets_dir()
        tag = hashlib.sha256(absolute(data_dir).encode()).hexdigest()[:12]
        prepared_dir = cache / tag
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(data_dir))
    return cls(data_dir=str(prepared_dir), config=split, file_format="array_record"), config


def load(
    name: str,
    data_dir: str | os.PathLike[str],
    split: str,
    prepared_dir: str | Path | None = None,
) -> Sequence[dict[str, Any]]:
    """A random-access source of `split`, preparing its ArrayRecord files on first use. A
    missing or malformed `data_dir` raises DatasetLayoutError naming what is missing and
    where it was expected."""
    with quiet_tfds():
        b, config = builder(name, data_dir, prepared_dir, split=split)
        if not b.is_prepared():
            b.check_layout(as_path(data_dir), split)
            print(
                f"hiseg: preparing {name} {split} from {data_dir} (first use only) into "
                f"{b.data_dir}",
                file=sys.stderr,
            )
            b.download_and_prepare(download_config=config)
        return b.as_data_source(split=split)


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """Silence tensorflow-datasets while preparing: its stdout messages ("Downloading and
    preparing dataset Unknown size ..."), progress bars and absl warnings below ERROR."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(True)
        absl.setLevel(level)
