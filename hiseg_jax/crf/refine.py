"""Refinement of a tree's leaves at pixel resolution: how the leaves' borders go from the
patch grid to the image's pixels. The default is the guided filter (`GuidedConfig`,
`guided`: about 0.25 s per BSDS500 image on a 2-core CPU, +3.9 Best covering on BSDS500 val,
docs/quality.md); the dense CRF (`CRFConfig`, `dense_crf`) is the paper's "w CRF"; None is
nearest upsampling of the patch labels (the paper's plain rows). One entry point for the
engine's users (`api`, `evaluation.runner`) and one record of the choice for their
settings files."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from hiseg_jax.crf.dense_crf import CRFConfig, crf_level_labels
from hiseg_jax.crf.guided import GuidedConfig, guided_level_labels

Refinement = CRFConfig | GuidedConfig
DEFAULT_REFINEMENT = GuidedConfig()
# Method name -> its settings class; "none" (nearest upsampling) is the third method.
REFINEMENTS: dict[str, type[CRFConfig] | type[GuidedConfig]] = {
    "guided": GuidedConfig,
    "crf": CRFConfig,
}
METHODS: tuple[str, ...] = (*REFINEMENTS, "none")


def refinement_method(config: Refinement | None) -> str:
    """The method's name: "guided", "crf" or "none" (None: nearest upsampling)."""
    for name, cls in REFINEMENTS.items():
        if isinstance(config, cls):
            return name
    if config is None:
        return "none"
    raise ValueError(f"not a refinement: {config!r}")


def refinement_of(method: str) -> Refinement | None:
    """The default settings of refinement `method` ("guided", "crf"; "none": None)."""
    if method not in METHODS:
        raise ValueError(f"refinement must be one of {METHODS}, got {method!r}")
    return None if method == "none" else REFINEMENTS[method]()


def refinement_settings(config: Refinement | None) -> dict[str, Any]:
    """The refinement as recorded in settings files: {"method": NAME, **its fields}."""
    fields = {} if config is None else dataclasses.asdict(config)
    return {"method": refinement_method(config), **fields}


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
