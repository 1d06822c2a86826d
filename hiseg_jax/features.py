"""Images -> backbone input (resize, normalise per family) -> patch features.

docs/method.md section 0: every image is resized to one fixed size, bilinear with antialiasing,
aspect ratio NOT kept, then normalised with the mean/std of the backbone's family
(ImageNet for DINO / DINOv2, OpenAI's for CLIP). The resize runs on the host in float
(Pillow's "F" mode: a triangle filter widened by the scale factor when shrinking, the same
filter as torch's `interpolate(mode="bilinear", antialias=True)`), so no uint8 rounding
happens between resizing and normalising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from hiseg_jax.models.vit import ViT, ViTConfig, check_stride, patch_grid

# The features of the graph: one kind, or several joined (`feature_parts`): "tokens" (after
# the final norm), "keys" (last block), "blockNN" (block NN's output, 0-based), "colour"
# (`patch_colour`, not a backbone output); e.g. "tokens+block09:0.5+colour:0.5".
FeatureKind = str
FEATURE_KINDS: tuple[str, ...] = ("tokens", "keys")
# The default: the last tokens joined with the outputs of blocks 9 and 6 (the 10th and 7th of
# 12), each unit length. Chosen on 100 BSDS500 train images (docs/quality.md, screens 3, 4
# and 6): finer, better trees than the last tokens alone (the paper's features,
# PAPER_FEATURES, which `--paper` selects), at no extra backbone cost (the blocks are
# computed anyway).
DEFAULT_FEATURES: FeatureKind = "tokens+block09+block06"
PAPER_FEATURES: FeatureKind = "tokens"
# Default input size: the default backbone is a ViT-S/14 trained at 518 px (37 x 37 grid);
# 448 px gives a 32 x 32 grid, N = 1024 patches, about 5 per stage-A part at P = 200, while
# stage A's dense eigensolver costs about 20x less than at the paper's 840 px (N = 3600) on a
# CPU; 224 px would leave 256 patches, barely more than P.
DEFAULT_SIZE = 448
BackboneDType = Literal["float32", "bfloat16"]
BACKBONE_DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def image_size(size: int | tuple[int, int], patch_size: int) -> tuple[int, int]:
    """`size` as (height, width); ValueError unless both are positive multiples of the patch."""
    pair = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in pair):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    if pair[0] % patch_size or pair[1] % patch_size:
        raise ValueError(
            f"size {pair[0]}x{pair[1]} is not a multiple of the patch size {patch_size}; "
            f"e.g. {_nearest_multiple(pair[0], patch_size)}x"
            f"{_nearest_multiple(pair[1], patch_size)} is"
        )
    return int(pair[0]), int(pair[1])


def _nearest_multiple(value: int, step: int) -> int:
    return max(step, round(value / step) * step)


def preprocess(
    images: Sequence[np.ndarray] | np.ndarray, size: int | tuple[int, int], config: ViTConfig
) -> np.ndarray:
    """uint8 RGB images `[H_i, W_i, 3]` (sizes may differ) -> `[B, H, W, 3]` float32 input.

    Each image is resized to `size` (an int for a square, or (H, W); multiples of
    `config.patch_size`), bilinear with antialiasing, aspect ratio not kept, scaled to
    [0, 1] and normalised with `config.image_mean` / `config.image_std`.
    """
    height, width = image_size(size, config.patch_size)
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(
            f"images must be a list of [H, W, 3] arrays or one [B, H, W, 3] array, "
            f"got an array of shape {images.shape}"
        )
    if len(images) == 0:
        raise ValueError("images is empty")
    mean = np.asarray(config.image_mean, np.float32)
    std = np.asarray(config.image_std, np.float32)
    batch = np.empty((len(images), height, width, 3), np.float32)
    for index, image in enumerate(images):
        _check_image(image, index)
        batch[index] = _resize(image, height, width)
    return (batch / np.float32(255.0) - mean) / std


def _check_image(image: np.ndarray, index: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {index}: expected a uint8 array, got {kind}")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image {index}: expected RGB [H, W, 3], got shape {image.shape}")


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`uint8 [h, w, 3]` -> `float32 [height, width, 3]` in [0, 255], antialiased bilinear."""
    if image.shape[:2] == (height, width):
        return image.astype(np.float32)
    channels = [
        np.asarray(
            Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


def feature_parts(spec: str) -> tuple[tuple[str, float], ...]:
    """'tokens+block09:0.5+colour:0.3' -> (("tokens", 1.0), ("block09", 0.5), ("colour", 0.3)).

    ValueError naming the problem for an unknown kind, a bad or non-positive weight, or a kind
    given twice."""
    parts = []
    for part in spec.split("+") if isinstance(spec, str) else [spec]:
        kind, _, weight = str(part).partition(":")
        block = kind.startswith("block") and kind[5:].isdigit() and len(kind) == 7
        if kind not in (*FEATURE_KINDS, "colour") and not block:
            raise ValueError(
                f"features {spec!r}: {kind!r} is not one of tokens, keys, blockNN (e.g. "
                "block09), colour"
            )
        try:
            value = float(weight or 1.0)
        except ValueError:
            value = float("nan")
        if not value > 0 or not np.isfinite(value):
            raise ValueError(f"features {spec!r}: weight {weight!r} is not a positive number")
        parts.append((kind, value))
    if len({k for k, _ in parts}) < len(parts):
        raise ValueError(f"features {spec!r}: a kind is given twice")
    return tuple(parts)


def feature_blocks(spec: str) -> tuple[int, ...]:
    """The block indices whose outputs the features `spec` needs from the backbone."""
    return tuple(int(kind[5:]) for kind, _ in feature_parts(spec) if kind.startswith("block"))


def check_blocks(spec: str, config: ViTConfig) -> None:
    """ValueError naming the problem when the features `spec` need a block the backbone
    `config` does not have (e.g. the default's block 9 of a 2-block test model)."""
    missing = [b for b in feature_blocks(spec) if b >= config.depth]
    if missing:
        raise ValueError(
            f"features {spec!r} need block {missing[0]}, but the backbone has {config.depth} "
            "blocks; choose other features, e.g. 'tokens'"
        )


def join_features(parts: Sequence[tuple[jax.Array, str, float]]) -> jax.Array:
    """Features `[B, h, w, sum E]` of (features `[B, h, w, E]`, kind, weight) parts: one part
    as it is; several joined along E, each times its weight after backbone features are
    row-normalised ("colour" is already scaled per image, `patch_colour`). The graph's cosine
    adjacency of the joined rows stays low-rank (rank sum E + 1)."""
    if len(parts) == 1:
        return parts[0][0]
    out = []
    for x, kind, weight in parts:
        x = jnp.asarray(x, jnp.float32)
        if kind != "colour":
            norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
            x = x / jnp.maximum(norm, 1e-12)
        out.append(weight * x)
    return jnp.concatenate(out, axis=-1)


def select_features(
    tokens: jax.Array,
    aux: dict[str, jax.Array],
    images: jax.Array,
    spec: FeatureKind,
    config: ViTConfig,
) -> jax.Array:
    """The features `spec` (`feature_parts`) of a backbone's outputs `(tokens, aux)` (aux
    holding the blocks of `feature_blocks(spec)`) and its input images `[B, H, W, 3]`."""
    pieces = []
    for kind, weight in feature_parts(spec):
        if kind == "colour":
            x = patch_colour(images.astype(jnp.float32), config)
        elif kind.startswith("block"):
            x = aux[f"block_{int(kind[5:]):02d}"].astype(jnp.float32)
        else:
            x = tokens if kind == "tokens" else aux["keys"]
        pieces.append((x, kind, weight))
    return join_features(pieces)


def extract_features(
    model: ViT,
    images: np.ndarray | jax.Array,
    kind: FeatureKind = "tokens",
    stride: int | None = None,
) -> jax.Array:
    """Patch features `[B, h, w, E]` of preprocessed images `[B, H, W, 3]` (h = H / patch).

    `kind="tokens"`: patch tokens after the final LayerNorm (the paper's features);
    `kind="keys"`: the last block's attention keys (Deep Spectral Methods' choice); or any
    `feature_parts` spec (intermediate blocks, the colour cue, mixes).
    `stride`: the patch embedding's step, 1..patch (None: the patch size); a smaller one
    gives overlapping patches on a grid of `(H - patch) / stride + 1` rows
    (`models.vit.patch_grid`; the "stride trick" of Amir et al.; not with the colour cue,
    which averages whole patches).
    Compiled once per (model structure, input shape, kind, stride); the params are passed to
    the compiled function as arguments, never baked in as constants.
    """
    parts = feature_parts(kind)
    check_blocks(kind, model.config)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got shape {tuple(images.shape)}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be preprocessed floats, got dtype {images.dtype}")
    patch = model.config.patch_size
    stride = check_stride(stride, patch)
    if stride != patch and any(k == "colour" for k, _ in parts):
        raise ValueError(
            f"the colour cue needs whole patches (stride {patch}), got stride {stride}"
        )
    size = tuple(int(s) for s in images.shape[1:3])
    if stride == patch:
        image_size(size, patch)
    patch_grid(size, patch, stride)
    graphdef, params = nnx.split(model)
    return compiled_features(graphdef, params, images, kind, stride)


@partial(jax.jit, static_argnames=("graphdef", "kind", "stride"))
def compiled_features(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    images: jax.Array,
    kind: FeatureKind,
    stride: int | None = None,
) -> jax.Array:
    """The jitted core of `extract_features` (no checks): one compilation per model
    structure, input shape, kind and stride; the params are arguments, never baked-in
    constants."""
    model = nnx.merge(graphdef, params)
    tokens, aux = model(images, blocks=feature_blocks(kind), stride=stride)
    return select_features(tokens, aux, images, kind, model.config)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Every floating-point leaf of `tree` cast to `dtype` (integer leaves untouched)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def backbone_features(
    apply: Callable,
    params: Any,
    images: jax.Array,
    kind: FeatureKind,
    dtype: Any,
    config: ViTConfig | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Traced backbone in `dtype` (params must already be in it, see `cast_floating`):
    images [B, H, W, 3] -> (float32 features [B, h, w, E], bool [B] all of the image's
    features finite). `apply` is `models.vit.make_apply`'s; `kind` a `feature_parts` spec
    (`config`, the backbone's, is needed for "colour"); no host checks."""
    if config is None and "colour" in dict(feature_parts(kind)):
        raise ValueError("the colour features need the backbone's config")
    tokens, aux = apply(params, images.astype(dtype), blocks=feature_blocks(kind))
    tokens = tokens.astype(jnp.float32)
    aux = {name: x.astype(jnp.float32) for name, x in aux.items()}
    features = select_features(tokens, aux, images, kind, config)
    finite = jnp.isfinite(features).reshape(features.shape[0], -1).all(axis=1)
    return features, finite


# sRGB (D65) -> CIE XYZ, and the D65 white point (the constants of the sRGB standard).
SRGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
D65_WHITE = (0.95047, 1.0, 1.08883)


def srgb_to_lab(rgb: jax.Array) -> jax.Array:
    """sRGB in [0, 1] `[..., 3]` -> CIELAB `[..., 3]` (L in [0, 100]; D65 white)."""
    linear = jnp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ jnp.asarray(SRGB_TO_XYZ, rgb.dtype).T / jnp.asarray(D65_WHITE, rgb.dtype)
    delta = 6.0 / 29.0
    f = jnp.where(
        xyz > delta**3, jnp.cbrt(jnp.maximum(xyz, delta**3)), xyz / (3 * delta**2) + 4.0 / 29.0
    )
    return jnp.stack(
        [
            116.0 * f[..., 1] - 16.0,
            500.0 * (f[..., 0] - f[..., 1]),
            200.0 * (f[..., 1] - f[..., 2]),
        ],
        axis=-1,
    )


def patch_colour(images: jax.Array, config: ViTConfig) -> jax.Array:
    """Colour cue of each patch: preprocessed images `[B, H, W, 3]` (normalised with
    `config.image_mean` / `config.image_std`) -> `[B, h, w, 3]` mean CIELAB colour of each
    patch, centred on the image's mean colour and divided by the image's root-mean-square
    distance to it (mean squared norm 1 per image; 0 for a one-colour image)."""
    mean = jnp.asarray(config.image_mean, images.dtype)
    std = jnp.asarray(config.image_std, images.dtype)
    lab = srgb_to_lab(jnp.clip(images * std + mean, 0.0, 1.0))
    b, height, width, _ = lab.shape
    p = config.patch_size
    lab = lab.reshape(b, height // p, p, width // p, p, 3).mean(axis=(2, 4))
    centred = lab - lab.mean(axis=(1, 2), keepdims=True)
    rms = jnp.sqrt(jnp.mean(jnp.sum(centred**2, axis=-1), axis=(1, 2)))
    return centred / jnp.maximum(rms, 1e-6)[:, None, None, None]
