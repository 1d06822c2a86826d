"""Backbones: one configurable Vision Transformer and its named variants."""

from hiseg_jax.models.vit import (
    VARIANTS,
    ViT,
    ViTConfig,
    abstract_vit,
    flat_params,
    get_config,
    load_flat_params,
    make_apply,
    param_shapes,
    vit_from_flat,
)

__all__ = [
    "VARIANTS",
    "ViT",
    "ViTConfig",
    "abstract_vit",
    "flat_params",
    "get_config",
    "load_flat_params",
    "make_apply",
    "param_shapes",
    "vit_from_flat",
]
