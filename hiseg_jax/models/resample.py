"""Position-embedding resampling that reproduces `torch.nn.functional.interpolate` exactly.

`jax.image.resize` is not a drop-in replacement: its cubic kernel uses Keys' a = -0.5 and it
always antialiases when shrinking, whereas torch's plain bicubic uses a = -0.75 with clamped
borders and its antialiased bicubic is a separate (PIL-style, a = -0.5) filter. Both torch
modes are separable, so each is written here as a pair of small 1-D interpolation matrices
computed in NumPy from the static sizes; `resample_grid` applies them to a `[G, G, D]` grid.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from hiseg_jax.precision import HIGHEST

PosembInterp = Literal["bicubic", "bicubic_antialias"]
INTERP_MODES: tuple[str, ...] = ("bicubic", "bicubic_antialias")


def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter `a`, evaluated at distances `x`."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """`[n_out, n_in]` matrix of torch's bicubic (align_corners=False, antialias=False).

    `scale` is the source step per output sample (torch's `n_in / n_out`, or
    `1 / scale_factor` when a scale factor is given). Torch samples 4 taps around
    `scale * (i + 0.5) - 0.5` with a = -0.75 and clamps tap indices into `[0, n_in)`.
    """
    src = scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
    base = np.floor(src)
    frac = src - base
    taps = np.arange(-1, 3)
    weights = _keys_cubic(frac[:, None] - taps[None, :], a=-0.75)
    index = np.clip(base[:, None].astype(np.int64) + taps[None, :], 0, n_in - 1)
    matrix = np.zeros((n_out, n_in), np.float64)
    np.add.at(matrix, (np.repeat(np.arange(n_out), 4), index.ravel()), weights.ravel())
    return matrix


def bicubic_antialias_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """`[n_out, n_in]` matrix of torch's antialiased bicubic (align_corners=False).

    Torch widens the a = -0.5 cubic filter by `scale` when shrinking (support `2 * scale`),
    keeps it at support 2 when enlarging, truncates the tap range like PIL and renormalises
    every row to sum to one. An axis whose size does not change is copied unchanged, whatever
    `scale` says (torch skips it).
    """
    if n_in == n_out:
        return np.eye(n_in)
    support = 2.0 * max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    matrix = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = np.arange(lo, hi)
        weights = _keys_cubic((taps - center + 0.5) * inv, a=-0.5)
        total = weights.sum()
        matrix[i, lo:hi] = weights / total if total != 0.0 else weights
    return matrix


def resample_matrix(n_in: int, n_out: int, mode: PosembInterp, offset: float = 0.0) -> np.ndarray:
    """`[n_out, n_in]` float32 matrix resampling one axis from `n_in` to `n_out` samples.

    `offset` reproduces the DINO / DINOv2 torch-hub call `scale_factor=(n_out + offset) / n_in`
    (offset 0.1 there); offset 0 is torch's `size=` call used by transformers.
    """
    if mode not in INTERP_MODES:
        raise ValueError(f"posemb interpolation mode must be one of {INTERP_MODES}, got {mode!r}")
    scale = n_in / (n_out + offset)
    build = bicubic_matrix if mode == "bicubic" else bicubic_antialias_matrix
    return build(n_in, n_out, scale).astype(np.float32)


def resample_grid(
    grid: jax.Array, size: tuple[int, int], mode: PosembInterp, offset: float = 0.0
) -> jax.Array:
    """Resample a `[Gh, Gw, D]` embedding grid to `[h, w, D]` (`size = (h, w)`).

    The grid is returned unchanged when it already has the requested size, as the reference
    implementations skip interpolation in that case (this matters when `offset != 0`).
    """
    gh, gw, _ = grid.shape
    if (gh, gw) == tuple(size):
        return grid
    rows = jnp.asarray(resample_matrix(gh, size[0], mode, offset))
    cols = jnp.asarray(resample_matrix(gw, size[1], mode, offset))
    return jnp.einsum("hi,wj,ijd->hwd", rows, cols, grid, precision=HIGHEST)
