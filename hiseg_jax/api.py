"""`segment`: images in, hierarchical segmentations out (the Python face of `hiseg segment`).

Both run the batching engine (`engine.stream`): `features.preprocess` (host resize +
normalise, in a prefetch thread) -> one compiled step per batch (backbone, `[B, h, w, E]`
features -> `spectral.partition.partition_arrays`, the `Tree` over the patch grid, and
`tree.leaf_descriptors`) -> `tree.patch_level_labels` (`[B, L + 1, h, w]`) ->
`crf.refine.refine_level_labels` (the leaves refined at each image's own size: by default the
guided filter, `GuidedConfig`; or the dense CRF, `CRFConfig`) or, with `refine=None`,
`tree.upsample_labels` (nearest, back to each image's own size). Every batch, the last one
too, is padded to `batch_size` images, so an image's result does not depend on the images it
shares a batch with.

    import hiseg_jax
    result = hiseg_jax.segment([hiseg_jax.load_image("cat.jpg")], levels=4)
    result.level_labels[0]      # int32 [5, H, W]: node id of every pixel at depths 0..4
    result.tree.parent[0]       # int32 [M]: parent node of every node (-1: root / unused)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from hiseg_jax.crf.refine import (
    DEFAULT_REFINEMENT,
    Refinement,
    refine_level_labels,
    refinement_method,
)
from hiseg_jax.engine.batches import Failure, Item
from hiseg_jax.engine.step import Step, make_step
from hiseg_jax.engine.stream import DEFAULT_BATCH_SIZE, stream
from hiseg_jax.features import DEFAULT_FEATURES, DEFAULT_SIZE, FeatureKind
from hiseg_jax.models.vit import ViT
from hiseg_jax.paths import DEFAULT_BACKBONE
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.tree import Tree, patch_level_labels, upsample_labels
from hiseg_jax.weights.checkpoint import load_backbone


@dataclasses.dataclass(frozen=True)
class SegmentationResult:
    """The segmentations of a batch of B images (host arrays).

    tree:             the batched `Tree` over the patch grid `tree.grid = (h, w)`.
    level_labels:     per image, int32 `[L + 1, H_b, W_b]` node id of every pixel at every
                      depth, at the image's original size (refined leaves, or nearest
                      upsampling with `refine=None`).
    leaf_descriptors: float32 `[B, M, E]` mean backbone feature of each leaf's patches
                      (zero rows for slots that are not leaves).
    """

    tree: Tree
    level_labels: tuple[np.ndarray, ...]
    leaf_descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.level_labels)


class ImageSegmentation(NamedTuple):
    """One image's result from `segment_stream` (host arrays).

    item:             the engine `Item` it came from (name, image, payload).
    tree:             its `Tree` (batch axis of size 1).
    patch_levels:     int32 [L + 1, h, w] node id of every patch at every depth.
    level_labels:     int32 [L + 1, H, W] the same at the image's own size.
    leaf_descriptors: float32 [M, E] mean feature of each leaf (zero for other slots).
    notes:            why the result may surprise (`degenerate_notes`), for the user.
    """

    item: Item
    tree: Tree
    patch_levels: np.ndarray
    level_labels: np.ndarray
    leaf_descriptors: np.ndarray
    notes: tuple[str, ...] = ()


def segment(
    images: np.ndarray | jax.Array | Sequence[np.ndarray | jax.Array],
    backbone: str | os.PathLike[str] | ViT = DEFAULT_BACKBONE,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    features: FeatureKind = DEFAULT_FEATURES,
    key: jax.Array | None = None,
    config: PartitionConfig | None = None,
    refine: Refinement | None = DEFAULT_REFINEMENT,
    **partition_params: object,
) -> SegmentationResult:
    """Hierarchical segmentation of `images` (one `[H, W, 3]`/`[H, W]` image, a `[B, H, W, 3]`
    batch, or a list of images of any sizes; uint8, or floats in [0, 1]).

    `backbone` is a checkpoint name or path (see `weights.checkpoint.load_backbone`) or a
    loaded `ViT`. Every image is resized to `size` (aspect ratio not kept, docs/method.md
    section 0) and processed `batch_size` at a time; every batch, the last one too, is padded
    with copies of its last image to `batch_size`, so every batch has one compiled shape and
    an image's result does not depend on how many images are segmented with it.
    `partition_params` are `PartitionConfig` fields (or pass `config`), which hold every
    solver choice. Every image uses `key` (default `jax.random.key(0)`), so results do not
    depend on the other images in the batch. `refine` brings the leaves' borders from the
    patch grid to the image's pixels: the guided filter (`GuidedConfig()`, the default), the
    dense CRF (`CRFConfig()`, the paper's "w CRF"), or None for nearest upsampling of the
    patch labels (the paper's plain rows).

    Degenerate images get a `UserWarning` naming them (`degenerate_notes`): one smaller than
    a patch is upsampled like every image; one of a single colour (black, grey, a 1 x 1
    image) has no structure and gets a single-node tree.
    """
    pictures = as_image_list(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = _partition_config(config, partition_params)
    refinement_method(refine)  # ValueError before the backbone is loaded
    model = backbone if isinstance(backbone, ViT) else _cached_backbone(os.fspath(backbone))
    items = [Item(index, picture) for index, picture in enumerate(pictures)]
    done = list(
        segment_stream(
            items,
            model,
            size,
            batch_size=batch_size,
            features=features,
            key=key,
            config=config,
            refine=refine,
        )
    )
    for result in done:
        for note in result.notes:
            warnings.warn(f"image {result.item.name}: {note}", stacklevel=2)
    tree = jax.tree.map(lambda *rows: np.concatenate(rows), *(r.tree for r in done))
    return SegmentationResult(
        tree, tuple(r.level_labels for r in done), np.stack([r.leaf_descriptors for r in done])
    )


def segment_stream(
    items: Iterable[Item | Failure],
    model: ViT,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    features: FeatureKind = DEFAULT_FEATURES,
    key: jax.Array | None = None,
    config: PartitionConfig | None = None,
    refine: Refinement | None = DEFAULT_REFINEMENT,
    notify: Callable[[str], Any] | None = None,
    mesh: Mesh | None = None,
) -> Iterator[ImageSegmentation | Failure]:
    """`segment` over a lazy iterable of engine `Item`s (uint8 RGB images; decoded in the
    engine's prefetch thread), yielding each image's result (with its `degenerate_notes`),
    or the `Failure`s the iterable yields, as batches finish (in input order). `notify` as
    in `engine.stream`; `mesh` as in `engine.step.make_step`. ValueError (on the host,
    before any work) for settings that fit no image or a `refine` that is no refinement."""
    refinement_method(refine)  # ValueError for anything but a CRFConfig, GuidedConfig, None
    step = make_step(model, size, config, features=features, mesh=mesh)
    key = jax.random.key(0) if key is None else key
    results = stream(
        step, items, batch_size=batch_size, key=key, with_features=refine is not None, notify=notify
    )
    for result in results:
        yield from result.failures
        if result.output is None:
            continue
        out = result.output
        patch_levels = np.asarray(patch_level_labels(out.tree))
        for b, item in enumerate(result.items):
            if refine is None:
                levels = np.asarray(upsample_labels(patch_levels[b], item.image.shape[:2]))
            else:
                levels = refine_level_labels(item.image, out.features[b], patch_levels[b], refine)
            notes = degenerate_notes(item.image.shape, step, bool(out.plain[b]))
            yield ImageSegmentation(
                item, out.tree[b], patch_levels[b], levels, out.descriptors[b], notes
            )


def degenerate_notes(shape: tuple[int, ...], step: Step, plain: bool) -> tuple[str, ...]:
    """What to tell the user about an image of `shape` [H, W, ...] run by `step`: smaller
    than one patch (upsampled to the step's size, like every image: the tree is that of the
    enlarged pixels), and `plain` (one colour, `engine.step.one_colour`: no structure, a
    single-node tree)."""
    notes = []
    patch = step.vit.patch_size
    if min(shape[:2]) < patch:
        height, width = step.image_size
        notes.append(
            f"{shape[0]} x {shape[1]} pixels is smaller than one {patch} x {patch} patch: "
            f"upsampled to {height} x {width} like every image"
        )
    if plain:
        notes.append("all its pixels have one colour: no structure to split, a single-node tree")
    return tuple(notes)


def as_image_list(images: np.ndarray | jax.Array | Sequence) -> list[np.ndarray]:
    """Images as a list of uint8 `[H, W, 3]` arrays; ValueError naming any that is not one.

    Accepts one image (`[H, W]`, `[H, W, 1]`, `[H, W, 3]`: an array of rank <= 3 is always
    one image), a batch `[B, H, W, 3]`, or a sequence of images of any sizes; uint8, or
    floating point in [0, 1] (scaled by 255).
    """
    if isinstance(images, np.ndarray | jax.Array):
        array = np.asarray(images)
        images = [array] if array.ndim <= 3 else list(array)
    elif not isinstance(images, Sequence) or isinstance(images, str | bytes):
        raise ValueError(f"images must be an array or a sequence of arrays, got {type(images)}")
    if len(images) == 0:
        raise ValueError("images is empty")
    return [_as_rgb_uint8(np.asarray(image), index) for index, image in enumerate(images)]


def _as_rgb_uint8(image: np.ndarray, index: int) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        raise ValueError(
            f"image {index}: RGBA is ambiguous; composite it first "
            "(hiseg_jax.images.load_image composites onto white)"
        )
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"image {index}: expected [H, W, 3] RGB or [H, W] gray, got shape {image.shape}"
        )
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise ValueError(f"image {index}: float images must be finite and in [0, 1]")
        return np.round(image * 255.0).astype(np.uint8)
    raise ValueError(f"image {index}: expected uint8 or float in [0, 1], got {image.dtype}")


def _partition_config(config: PartitionConfig | None, params: dict[str, object]) -> PartitionConfig:
    """`config`, or a `PartitionConfig` built from keyword arguments (not both)."""
    if config is not None and params:
        raise ValueError(f"pass either config or partition parameters, not both: {sorted(params)}")
    if config is not None:
        return config
    fields = {f.name for f in dataclasses.fields(PartitionConfig)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"unknown partition parameters {unknown}; valid: {sorted(fields)}")
    return PartitionConfig(**params)


@functools.lru_cache(maxsize=2)
def _cached_backbone(name_or_path: str) -> ViT:
    """Loaded backbones are kept, so repeated `segment` calls do not re-read the checkpoint."""
    return load_backbone(name_or_path)
