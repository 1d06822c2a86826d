"""Guided-filter refinement of the tree's leaves at pixel resolution, the default
refinement: a cheap, edge-aware alternative to the dense CRF (`--refine guided`;
docs/method.md section 6).

The leaves' soft assignments at image resolution, either the CRF's unaries
(`source="unaries"`: softmax over the leaves of the upsampled feature . descriptor scores,
`dense_crf.leaf_unaries`) or the one-hot of the nearest-upsampled leaf labels
(`source="labels"`), are filtered by the colour guided filter of He, Sun & Tang ("Guided
Image Filtering", ECCV 2010 / TPAMI 2013) with the image as the guide, and every pixel takes
its largest filtered assignment. In each (2 r + 1)^2 window w_k the filter fits the
assignments p as an affine function of the colour I,

    a_k = (Sigma_k + eps U)^-1 cov_k(I, p),    b_k = mean_k(p) - a_k . mean_k(I),

and the output at pixel i is mean_k(a_k) . I_i + mean_k(b_k) over the windows holding i:
label borders move onto colour edges within about r pixels. Windows are clipped at the
image border (means over the pixels inside). Everything is box means (cumulative sums
along each axis: O(H W) per channel whatever r) and per-pixel 3 x 3 solves (closed-form
adjugate), elementwise work with static shapes: jit- and vmap-safe, no N x N array.

With `subsample` s > 1 it is the fast guided filter (He & Sun, arXiv:1505.00996): the
assignments are made at the image shrunk s times (blocks of s x s pixels averaged), the
coefficients mean(a), mean(b) are fitted there with radius r / s, and only the last step,
mean(a) . I + mean(b), runs at full resolution with the coefficients upsampled linearly
(block centre to block centre). The coefficients vary slowly, so borders stay on the
full-resolution colour edges while the fitting costs s^2 times less. Shrinking and
upsampling are products with small constant matrices (`block_mean_matrix`,
`linear_matrix`): matmuls, not gathers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.crf.dense_crf import ABSENT, leaf_ancestors, leaf_unaries, lift_leaves
from hiseg_jax.precision import HIGHEST
from hiseg_jax.tree import upsample_labels

GuidedSource = Literal["unaries", "labels"]


@dataclasses.dataclass(frozen=True)
class GuidedConfig:
    """Guided-filter refinement settings, chosen on BSDS500 train images
    (`benchmarks/partition_sweep.py`; docs/quality.md screens 1 and 6): radius 24 of 8 / 16 /
    24 / 32, eps 1e-3 of 1e-4 / 1e-3 / 1e-2 / 1e-1, subsample 2 of 1 / 2 / 3 / 4.

    radius:      window radius r in pixels of the image (window (2 r + 1)^2).
    eps:         regularisation of the colour covariance (colours scaled to [0, 1]): larger
                 eps smooths more and follows colour edges less.
    source:      "unaries" (the CRF's leaf probabilities) or "labels" (one-hot leaves).
    temperature: softmax temperature of the unaries (as `CRFConfig.temperature`).
    prob_floor:  the unaries' probabilities are clipped below at this value.
    subsample:   s: the assignments and the filter's coefficients are computed on the image
                 shrunk s times, then applied at full resolution (the fast guided filter;
                 1: everything at full resolution, the filter as first published). 2 scores
                 the same covering as 1 on 100 BSDS500 train images in under half the time;
                 3 and 4 lose 0.1-0.2 points of Best (docs/quality.md).
    """

    radius: int = 24
    eps: float = 1e-3
    source: GuidedSource = "unaries"
    temperature: float = 0.1
    prob_floor: float = 1e-5
    subsample: int = 2

    def __post_init__(self) -> None:
        for name in ("radius", "subsample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eps", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.prob_floor < 1:
            raise ValueError(f"prob_floor must be in (0, 1), got {self.prob_floor}")
        if self.source not in ("unaries", "labels"):
            raise ValueError(f"source must be 'unaries' or 'labels', got {self.source!r}")


def box_mean(x: jax.Array, radius: int) -> jax.Array:
    """Mean of `x: [H, W, C]` over the (2 r + 1)^2 window around each pixel, clipped at the
    border (the mean of the pixels inside): two cumulative sums, O(H W C)."""
    for axis in (0, 1):
        n = x.shape[axis]
        sums = jnp.cumsum(x, axis=axis)
        sums = jnp.concatenate([jnp.zeros_like(jnp.take(sums, np.arange(1), axis)), sums], axis)
        hi = np.minimum(np.arange(n) + radius + 1, n)
        lo = np.maximum(np.arange(n) - radius, 0)
        count = (hi - lo).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = n
        x = (jnp.take(sums, hi, axis) - jnp.take(sums, lo, axis)) / count.reshape(shape)
    return x


def guided_filter(guide: jax.Array, source: jax.Array, radius: int, eps: float) -> jax.Array:
    """Colour guided filter (module docstring) of `source: [H, W, K]` with
    `guide: [H, W, 3]` (colours in [0, 1]) -> float32 [H, W, K]. Traced, no checks."""
    guide = guide.astype(jnp.float32)
    mean_a, mean_b = _coefficients(guide, source.astype(jnp.float32), radius, eps)
    return jnp.einsum("hwi,hwik->hwk", guide, mean_a, precision=HIGHEST) + mean_b


def fast_guided_filter(
    guide: jax.Array, source: jax.Array, radius: int, eps: float, subsample: int
) -> jax.Array:
    """Fast guided filter (module docstring): `guide: [H, W, 3]` (colours in [0, 1]) at full
    resolution, `source: [h, w, K]` at `shrunk_size((H, W), subsample)` -> float32
    [H, W, K]. The coefficients are fitted with radius max(1, round(radius / subsample)).
    Traced, no checks."""
    height, width = guide.shape[:2]
    guide = guide.astype(jnp.float32)
    rows, cols = (jnp.asarray(block_mean_matrix(n, subsample)) for n in (height, width))
    small = jnp.einsum("yY,YXc,xX->yxc", rows, guide, cols, precision=HIGHEST)
    radius = max(1, round(radius / subsample))
    mean_a, mean_b = _coefficients(small, source.astype(jnp.float32), radius, eps)
    rows, cols = (jnp.asarray(linear_matrix(n, subsample)) for n in (height, width))
    mean_a = jnp.einsum("Yy,yxik,Xx->YXik", rows, mean_a, cols, precision=HIGHEST)
    mean_b = jnp.einsum("Yy,yxk,Xx->YXk", rows, mean_b, cols, precision=HIGHEST)
    return jnp.einsum("hwi,hwik->hwk", guide, mean_a, precision=HIGHEST) + mean_b


def _coefficients(
    guide: jax.Array, source: jax.Array, radius: int, eps: float
) -> tuple[jax.Array, jax.Array]:
    """The window means of the affine coefficients, mean(a) [H, W, 3, K] and mean(b)
    [H, W, K], of `source: [H, W, K]` on `guide: [H, W, 3]` (both float32)."""
    mean = lambda x: box_mean(x, radius)
    mean_i = mean(guide)
    outer = guide[..., :, None] * guide[..., None, :]
    cov = mean(outer.reshape(*guide.shape[:2], 9)).reshape(*guide.shape, 3)
    cov = cov - mean_i[..., :, None] * mean_i[..., None, :] + eps * jnp.eye(3)
    mean_p = mean(source)
    cross = mean((guide[..., :, None] * source[..., None, :]).reshape(*guide.shape[:2], -1))
    cross = cross.reshape(*guide.shape, -1) - mean_i[..., :, None] * mean_p[..., None, :]
    a = jnp.einsum("hwij,hwjk->hwik", _inverse3(cov), cross, precision=HIGHEST)
    b = mean_p - jnp.einsum("hwi,hwik->hwk", mean_i, a, precision=HIGHEST)
    return mean(a.reshape(*guide.shape[:2], -1)).reshape(a.shape), mean(b)


def shrunk_size(hw: tuple[int, int], subsample: int) -> tuple[int, int]:
    """(ceil(H / s), ceil(W / s)): the size of an image of size `hw` in blocks of s x s."""
    return tuple(-(-int(n) // subsample) for n in hw)


def block_mean_matrix(n: int, subsample: int) -> np.ndarray:
    """float32 [ceil(n / s), n]: row i averages pixels [i s, min((i + 1) s, n)) (the last
    block may be shorter)."""
    blocks = np.arange(n) // subsample
    matrix = np.eye(blocks[-1] + 1, dtype=np.float32)[:, blocks]
    return matrix / matrix.sum(1, keepdims=True)


def linear_matrix(n: int, subsample: int) -> np.ndarray:
    """float32 [n, ceil(n / s)]: linear interpolation of block values, placed at the blocks'
    centres, at every pixel centre (constant beyond the first and last centres)."""
    starts = np.arange(0, n, subsample)
    centres = (starts + np.minimum(starts + subsample, n) - 1) / 2
    if centres.size == 1:
        return np.ones((n, 1), np.float32)
    pixel = np.clip(np.arange(n, dtype=np.float64), centres[0], centres[-1])
    right = np.clip(np.searchsorted(centres, pixel, side="right"), 1, centres.size - 1)
    t = (pixel - centres[right - 1]) / (centres[right] - centres[right - 1])
    matrix = np.zeros((n, centres.size), np.float32)
    matrix[np.arange(n), right - 1] = 1 - t
    matrix[np.arange(n), right] += t
    return matrix


def _inverse3(m: jax.Array) -> jax.Array:
    """Inverse of symmetric positive definite [..., 3, 3] matrices by the adjugate."""
    c00 = m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1]
    c01 = m[..., 0, 2] * m[..., 2, 1] - m[..., 0, 1] * m[..., 2, 2]
    c02 = m[..., 0, 1] * m[..., 1, 2] - m[..., 0, 2] * m[..., 1, 1]
    c11 = m[..., 0, 0] * m[..., 2, 2] - m[..., 0, 2] * m[..., 2, 0]
    c12 = m[..., 0, 2] * m[..., 1, 0] - m[..., 0, 0] * m[..., 1, 2]
    c22 = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    det = m[..., 0, 0] * c00 + m[..., 0, 1] * c01 + m[..., 0, 2] * c02
    adj = jnp.stack(
        [
            jnp.stack([c00, c01, c02], -1),
            jnp.stack([c01, c11, c12], -1),
            jnp.stack([c02, c12, c22], -1),
        ],
        -2,
    )
    return adj / det[..., None, None]


@functools.partial(jax.jit, static_argnames=("config",))
def guided_leaves(
    assignments: jax.Array, image: jax.Array, label_mask: jax.Array, config: GuidedConfig
) -> jax.Array:
    """int32 [B, H, W]: the largest guided-filtered assignment of each pixel.

    assignments float32 [B, h, w, K] (probabilities or one-hot) at
    `shrunk_size((H, W), config.subsample)`, image [B, H, W, 3] in [0, 255], label_mask
    bool [B, K] (labels that exist). Pure, no checks."""
    radius, eps, subsample = config.radius, config.eps, config.subsample
    if subsample == 1:
        one = lambda p, i: guided_filter(i / 255.0, p, radius, eps)
    else:
        one = lambda p, i: fast_guided_filter(i / 255.0, p, radius, eps, subsample)
    filtered = jax.vmap(one)(assignments, image.astype(jnp.float32))
    filtered = jnp.where(label_mask[:, None, None, :], filtered, -jnp.inf)
    return jnp.argmax(filtered, axis=-1).astype(jnp.int32)


def guided_level_labels(
    image: np.ndarray,
    features: jax.Array | np.ndarray,
    patch_levels: np.ndarray,
    config: GuidedConfig,
) -> np.ndarray:
    """int32 `[L + 1, H, W]`: one image's pixel labels with the leaves refined by the guided
    filter; inner nodes follow from the tree (as `dense_crf.crf_level_labels`).

    image: uint8 `[H, W, 3]`; features: `[h, w, E]`; patch_levels: int `[L + 1, h, w]`. The
    leaf axis is padded to a multiple of 8 (absent labels) so that trees with similar leaf
    counts share compilations."""
    levels = np.asarray(patch_levels)[None]
    leaves = np.unique(levels[0, -1]).size
    k = -(-leaves // 8) * 8
    compact, ancestors = leaf_ancestors(levels, k)
    hw = shrunk_size(image.shape[:2], config.subsample)
    if config.source == "unaries":
        logits = leaf_unaries(
            np.asarray(features)[None],
            compact,
            k,
            hw,
            temperature=config.temperature,
            prob_floor=config.prob_floor,
        )
        assignments = jnp.where(logits > ABSENT / 2, jnp.exp(logits), 0.0)
    else:
        assignments = jax.nn.one_hot(upsample_labels(compact, hw), k, dtype=jnp.float32)
    mask = jnp.arange(k)[None] < leaves
    refined = guided_leaves(assignments, jnp.asarray(image)[None], mask, config)
    return np.asarray(lift_leaves(ancestors, refined))[0]
