"""`segment`: images in, hierarchical segmentations out (the Python face of `hiseg segment`).

The pipeline is the composition of pieces that each work on their own, under jit and vmap:
`features.preprocess` (host resize + normalise) -> `features.extract_features` (backbone,
`[B, h, w, E]`) -> `partition.partition` (`Tree` over the patch grid) -> `patch_level_labels`
(`[B, L + 1, h, w]`) -> `upsample_labels` (nearest, back to each image's own size), with
`leaf_descriptors` giving each leaf's mean feature (ALGORITHM.md section 5).

    import hiseg_jax
    result = hiseg_jax.segment([hiseg_jax.load_image("cat.jpg")], levels=4)
    result.level_labels[0]      # int32 [5, H, W]: node id of every pixel at depths 0..4
    result.tree.parent[0]       # int32 [M]: parent node of every node (-1: root / unused)

Default size 448: the default backbone is a ViT-S/14 trained at 518 px (37 x 37 grid); 448 px
gives a 32 x 32 grid, N = 1024 patches, about 5 per stage-A part at P = 200, while stage A's
dense eigensolver costs about 20x less than at the paper's 840 px (N = 3600, measured in
ALGORITHM.md section 8) on a CPU; 224 px would leave 256 patches, barely more than P.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.crf.dense_crf import CRFConfig, refine_levels
from hiseg_jax.features import DEFAULT_BACKBONE, FeatureKind, extract_features, preprocess
from hiseg_jax.models.vit import ViT
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.spectral.partition import StageBSolver, partition
from hiseg_jax.tree import Tree
from hiseg_jax.weights.checkpoint import load_backbone

DEFAULT_SIZE = 448
DEFAULT_BATCH_SIZE = 4


@dataclasses.dataclass(frozen=True)
class SegmentationResult:
    """The segmentations of a batch of B images.

    tree:             the batched `Tree` over the patch grid `tree.grid = (h, w)`.
    level_labels:     per image, int32 `[L + 1, H_b, W_b]` node id of every pixel at every
                      depth, at the image's original size (nearest upsampling).
    leaf_descriptors: float32 `[B, M, E]` mean backbone feature of each leaf's patches
                      (zero rows for slots that are not leaves).
    """

    tree: Tree
    level_labels: tuple[np.ndarray, ...]
    leaf_descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.level_labels)


def segment(
    images: np.ndarray | jax.Array | Sequence[np.ndarray | jax.Array],
    backbone: str | os.PathLike[str] | ViT = DEFAULT_BACKBONE,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    features: FeatureKind = "tokens",
    key: jax.Array | None = None,
    solver: StageBSolver = "eigh",
    config: PartitionConfig | None = None,
    crf: CRFConfig | None = None,
    **partition_params: object,
) -> SegmentationResult:
    """Hierarchical segmentation of `images` (one `[H, W, 3]`/`[H, W]` image, a `[B, H, W, 3]`
    batch, or a list of images of any sizes; uint8, or floats in [0, 1]).

    `backbone` is a checkpoint name or path (see `weights.checkpoint.load_backbone`) or a
    loaded `ViT`. Every image is resized to `size` (aspect ratio not kept, ALGORITHM.md
    section 0) and processed `batch_size` at a time; the last batch is padded with copies of
    its last image so that every batch has one compiled shape. `partition_params` are
    `PartitionConfig` fields (or pass `config`). Every image uses `key` (default
    `jax.random.key(0)`), so results do not depend on the other images in the batch (nor,
    up to float rounding of a different compiled batch shape, on `batch_size`).
    With `crf` (e.g. `CRFConfig()`), pixel labels come from the dense CRF over the leaves
    (`crf_level_labels`) instead of nearest upsampling.
    """
    pictures = as_image_list(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = _partition_config(config, partition_params)
    model = backbone if isinstance(backbone, ViT) else _cached_backbone(os.fspath(backbone))
    batch = min(batch_size, len(pictures))
    trees, descriptors, level_labels = [], [], []
    for start in range(0, len(pictures), batch):
        chunk = pictures[start : start + batch]
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        x = extract_features(model, preprocess(padded, size, model.config), features)
        tree = partition(x, config, key, solver=solver)
        trees.append(tree[: len(chunk)])
        descriptors.append(np.asarray(leaf_descriptors(x, tree))[: len(chunk)])
        patch_levels = np.asarray(patch_level_labels(tree))
        for b, picture in enumerate(chunk):
            if crf is None:
                level_labels.append(np.asarray(upsample_labels(patch_levels[b], picture.shape[:2])))
            else:
                level_labels.append(crf_level_labels(picture, x[b], patch_levels[b], crf))
    tree = jax.tree.map(lambda *parts: jnp.concatenate(parts), *trees)
    return SegmentationResult(tree, tuple(level_labels), np.concatenate(descriptors))


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


def _partition_config(
    config: PartitionConfig | None, params: dict[str, object]
) -> PartitionConfig:
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


def patch_level_labels(tree: Tree) -> jax.Array:
    """int32 `[B, L + 1, h, w]`: the node id of every patch at every depth."""
    return tree.labels.reshape(tree.labels.shape[:2] + tuple(tree.grid))


def upsample_labels(level_labels: jax.Array | np.ndarray, out_hw: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour resize of label maps `[..., h, w]` to `[..., H, W]` (`out_hw` static).

    Pixel (y, x) takes the label of patch (floor((y + 1/2) h / H), floor((x + 1/2) w / W)),
    the patch under the pixel's centre once the image is stretched over the whole grid
    (the resize in `preprocess` does not keep the aspect ratio). Pure indexing: exact for
    integer labels, usable under jit and vmap.
    """
    height, width = (int(s) for s in out_hw)
    if height < 1 or width < 1:
        raise ValueError(f"out_hw must be positive, got {out_hw}")
    h, w = level_labels.shape[-2:]
    rows = ((2 * np.arange(height) + 1) * h) // (2 * height)
    cols = ((2 * np.arange(width) + 1) * w) // (2 * width)
    return jnp.asarray(level_labels)[..., rows[:, None], cols[None, :]]


def leaf_descriptors(features: jax.Array, tree: Tree) -> jax.Array:
    """float32 `[B, M, E]`: mean of `features: [B, h, w, E]` over each leaf's patches
    (ALGORITHM.md section 5); rows of slots that are not leaves are zero."""
    batch, slots = tree.valid.shape
    x = jnp.asarray(features, jnp.float32).reshape(batch, -1, features.shape[-1])
    return _leaf_means(x, tree.labels[:, -1], tree.is_leaf, slots)


@functools.partial(jax.jit, static_argnames="slots")
def _leaf_means(x: jax.Array, leaf: jax.Array, is_leaf: jax.Array, slots: int) -> jax.Array:
    def one(x_b: jax.Array, leaf_b: jax.Array, is_leaf_b: jax.Array) -> jax.Array:
        total = jax.ops.segment_sum(x_b, leaf_b, num_segments=slots)
        count = jax.ops.segment_sum(jnp.ones_like(leaf_b, jnp.float32), leaf_b, slots)
        mean = total / jnp.maximum(count, 1.0)[:, None]
        return jnp.where(is_leaf_b[:, None], mean, 0.0)

    return jax.vmap(one)(x, leaf, is_leaf)


def crf_level_labels(
    image: np.ndarray,
    features: jax.Array | np.ndarray,
    patch_levels: np.ndarray,
    config: CRFConfig,
) -> np.ndarray:
    """int32 `[L + 1, H, W]`: one image's pixel labels with the leaves refined by a dense CRF
    (ALGORITHM.md section 6); inner nodes follow from the tree.

    image: uint8 `[H, W, 3]`; features: `[h, w, E]`; patch_levels: int `[L + 1, h, w]`.
    `crf.refine_levels` for one image, with the leaf axis padded to a multiple of 8 (absent
    labels) so that trees with similar leaf counts share compilations.
    """
    leaves = np.unique(np.asarray(patch_levels)[-1]).size
    padded = -(-leaves // 8) * 8
    return np.asarray(refine_levels(features, patch_levels, image, padded, config))
