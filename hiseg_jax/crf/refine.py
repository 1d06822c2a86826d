"""Refinement of a tree's leaves at pixel resolution, by the dense CRF (`CRFConfig`,
`dense_crf`) or the guided filter (`GuidedConfig`, `guided`): one entry point for the
engine's users (`api`, `evaluation.runner`)."""

from __future__ import annotations

import jax
import numpy as np

from hiseg_jax.crf.dense_crf import CRFConfig, crf_level_labels
from hiseg_jax.crf.guided import GuidedConfig, guided_level_labels

Refinement = CRFConfig | GuidedConfig


def refinement(crf: CRFConfig | None, guided: GuidedConfig | None) -> Refinement | None:
    """The one refinement asked for (None: nearest upsampling); ValueError for both."""
    if crf is not None and guided is not None:
        raise ValueError("pass either the CRF or the guided filter, not both")
    return crf if crf is not None else guided


def refine_level_labels(
    image: np.ndarray,
    features: jax.Array | np.ndarray,
    patch_levels: np.ndarray,
    config: Refinement,
) -> np.ndarray:
    """int32 `[L + 1, H, W]`: one image's pixel labels with the leaves refined by `config`'s
    method; inner nodes follow from the tree. image uint8 `[H, W, 3]`, features
    `[h, w, E]`, patch_levels int `[L + 1, h, w]`."""
    if isinstance(config, GuidedConfig):
        return guided_level_labels(image, features, patch_levels, config)
    return crf_level_labels(image, features, patch_levels, config)
