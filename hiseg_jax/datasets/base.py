"""A tensorflow-datasets builder base for segmentation benchmarks, usable without TensorFlow.

Every dataset becomes ArrayRecord files read by random access (`tfds.data_source`), so an
evaluation can resume at any index. Images are stored as their original encoded bytes (decoded
with PIL on read: tfds' `Image` feature needs TensorFlow to encode), ground truth as zlib-packed
int32 label maps `[A, H, W]`; `LABEL_AXIS` says what the leading axis holds:

- "annotator" (BSDS500): A human segmentations, region ids without classes;
- "hierarchy" (every class-labelled dataset): A = 1, one map of the pixel values of the
  builder's label hierarchy (`HIERARCHY`, a file of `hiseg_jax/hierarchies`). A value names the
  finest node of its pixel; the hierarchy's nesting gives every coarser level
  (`hiseg_jax.datasets.reader.level_maps`), which is what the metrics' `LabelSpace` reads.

Each split is its own builder config, so preparing `val` never reads `train`. A concrete builder
names its hierarchy, its splits (`SPLITS`), the paths a split needs under `manual_dir`
(`required_paths`) and how to enumerate its examples (`examples`). The folder is a local
`Path` or, on an object store, an `etils.epath.Path` (`files.as_path`): builders only use
what both offer (joining, `exists`, `is_file`, non-recursive `glob`, `read_text`,
`read_bytes`, `open`; `files.files_below` to search a tree) and hand readers open files,
never names.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import logging
import os
from collections.abc import Iterator
from typing import ClassVar, Literal

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from hiseg_jax.files import AnyPath, as_path
from hiseg_jax.hierarchies import Hierarchy, load_hierarchy

IGNORE = 255  # label value excluded from every metric


class DatasetLayoutError(ValueError):
    """A dataset folder is missing or does not have the expected layout."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One image and its ground truth, as a builder enumerates them. `image` is the image
    file, or the encoded bytes of an image made by the builder (a crop)."""

    key: str
    image: AnyPath | bytes
    labels: np.ndarray  # int32 [A, H, W]


def _labels_feature() -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(None, None, None), dtype=np.int32, encoding="zlib")


def read_label_image(path: AnyPath, *, colour: bool = False) -> np.ndarray:
    """A label image as stored, as int32: [H, W] (palette indices, grey levels, 16-bit
    values), or [H, W, 3] RGB with `colour`. An unreadable file, or one with the other
    kind of pixels, raises DatasetLayoutError naming it."""
    try:
        with path.open("rb") as file, Image.open(file) as image:
            is_colour = image.mode in ("RGB", "RGBA")
            if is_colour != colour:
                raise DatasetLayoutError(
                    f"{path}: expected a {'colour' if colour else 'single-channel'} label "
                    f"image, got mode {image.mode}"
                )
            return np.asarray(image.convert("RGB") if colour else image, np.int32)
    except (OSError, SyntaxError) as err:
        raise DatasetLayoutError(f"{path}: cannot read the label image ({err})") from err


def require_file(path: AnyPath, what: str) -> AnyPath:
    """`path`, or DatasetLayoutError saying which `what` is missing and where."""
    if not path.is_file():
        raise DatasetLayoutError(f"missing {what}: expected {path}")
    return path


def first_existing(*candidates: AnyPath) -> AnyPath:
    """The first of `candidates` that exists (else the first: errors then name it)."""
    return next((p for p in candidates if p.exists()), candidates[0])


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
    """Prepares a segmentation dataset from its official archives/folders in `manual_dir`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    HIERARCHY: ClassVar[str]
    LABEL_AXIS: ClassVar[Literal["annotator", "hierarchy"]] = "hierarchy"
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val")
    HOMEPAGE: ClassVar[str] = ""
    LAYOUT: ClassVar[str] = ""  # the expected folder layout, shown in errors and instructions

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the dataset's folder as manual_dir (see LAYOUT)."

    def __init_subclass__(cls, **kwargs: object) -> None:
        """One builder config per split, named after it."""
        cls.BUILDER_CONFIGS = [
            tfds.core.BuilderConfig(name=s, description=f"split {s}") for s in cls.SPLITS
        ]
        super().__init_subclass__(**kwargs)

    @classmethod
    def hierarchy(cls, root: AnyPath) -> Hierarchy:
        """The hierarchy whose pixel values the labels hold: the shipped file `HIERARCHY`
        (builders whose vocabulary comes with the data derive it from the files in `root`)."""
        return load_hierarchy(cls.HIERARCHY)

    @classmethod
    def manual_instructions(cls) -> str:
        """What to put in `manual_dir`."""
        where = f" (official download: {cls.HOMEPAGE})" if cls.HOMEPAGE else ""
        return f"Place the {cls.name} files{where} under manual_dir with this layout:\n{cls.LAYOUT}"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name} for hierarchical segmentation evaluation (labels: "
            + (
                f"hierarchy '{self.HIERARCHY}' values)."
                if self.LABEL_AXIS == "hierarchy"
                else "one segmentation per annotator)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "labels": _labels_feature(),
                    "name": tfds.features.Text(),
                }
            ),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,  # keep the builder's (sorted) example order
        )

    @abc.abstractmethod
    def required_paths(self, root: AnyPath, split: str) -> list[AnyPath]:
        """Paths that must exist under `root` for `split`."""

    @abc.abstractmethod
    def examples(self, root: AnyPath, split: str) -> Iterator[Example]:
        """The split's examples in a deterministic order."""

    def check_layout(self, root: AnyPath, split: str) -> None:
        """Raises DatasetLayoutError naming every missing path of `split`."""
        if not root.is_dir():
            raise DatasetLayoutError(
                f"{self.name}: data folder {root} does not exist.\n{self.manual_instructions()}"
            )
        missing = [p for p in self.required_paths(root, split) if not p.exists()]
        if missing:
            listed = "\n".join(f"  {p}" for p in missing)
            raise DatasetLayoutError(
                f"{self.name} split '{split}': expected under {root}:\n{listed}\n"
                f"{self.manual_instructions()}"
            )

    def available_splits(self, root: AnyPath) -> list[str]:
        """The splits whose files are all present; raises naming what is missing if none is."""
        present = [s for s in self.SPLITS if all(p.exists() for p in self.required_paths(root, s))]
        if not present:
            self.check_layout(root, self.SPLITS[-1])
        return present

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        root = as_path(os.fspath(dl_manager.manual_dir))
        split = self.builder_config.name
        self.check_layout(root, split)
        return {split: self._generate_examples(root, split)}

    def _generate_examples(self, root: AnyPath, split: str) -> Iterator[tuple[str, dict]]:
        count = 0
        for ex in self.examples(root, split):
            labels = np.asarray(ex.labels, np.int32)
            image = ex.image if isinstance(ex.image, bytes) else ex.image.read_bytes()
            _check_example(self.name, ex.key, image, labels)
            count += 1
            yield ex.key, {"image": image, "labels": labels, "name": ex.key}
        if count == 0:
            raise DatasetLayoutError(
                f"{self.name} split '{split}': no examples found under "
                f"{root}.\n{self.manual_instructions()}"
            )


def _check_example(dataset: str, key: str, image: bytes, labels: np.ndarray) -> None:
    """Labels are [A, H, W] with A >= 1 and the image's size (read from its header). An image
    whose header cannot be read is kept (and logged): a reader reports and skips it."""
    if labels.ndim != 3 or labels.shape[0] < 1:
        raise ValueError(f"{dataset}/{key}: labels must be [A, H, W], got {labels.shape}")
    try:
        with Image.open(io.BytesIO(image)) as decoded:
            width, height = decoded.size
    except (OSError, SyntaxError, ValueError) as err:
        logging.getLogger(__name__).warning(
            "%s/%s: unreadable image kept as is (%s)", dataset, key, err
        )
        return
    if labels.shape[1:] != (height, width):
        raise ValueError(
            f"{dataset}/{key}: labels are {labels.shape[1]}x{labels.shape[2]} but "
            f"the image is {height}x{width}"
        )
