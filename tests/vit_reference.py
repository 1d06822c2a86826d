"""Tiny, fully randomised transformers models of each backbone family, and their outputs.

Shared by tests/test_vit.py and tests/test_convert.py. Each family pairs a transformers model
(the reference) with the matching `hiseg_jax` config, derived from a real variant by
shrinking only its sizes, so the variant's family switches (eps, MLP, layer scale,
registers, posemb interpolation) are what gets compared.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from hiseg_jax.models.vit import ViTConfig, get_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PATCH, WIDTH, DEPTH, HEADS, GRID = 4, 32, 2, 2, 4  # trained grid 4 x 4 = 16 x 16 pixels
_SHAPE = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS)
_HF_COMMON = dict(**_SHAPE, image_size=PATCH * GRID, patch_size=PATCH, attn_implementation="eager")

FAMILIES = ("dino", "dinov2", "dinov2_swiglu", "dinov2_reg", "clip")
_VARIANT = {
    "dino": "dino_vits16",
    "dinov2": "dinov2_vits14",
    "dinov2_swiglu": "dinov2_vitg14",
    "dinov2_reg": "dinov2_vits14_reg",
    "clip": "clip_vitb16",
}


def _hf_model(family: str) -> tuple[torch.nn.Module, int]:
    """(transformers model, its MLP hidden width)."""
    t = transformers
    if family == "dino":
        return t.ViTModel(t.ViTConfig(**_HF_COMMON, intermediate_size=64, layer_norm_eps=1e-6)), 64
    if family == "dinov2":
        return t.Dinov2Model(t.Dinov2Config(**_HF_COMMON, mlp_ratio=2)), 64
    if family == "dinov2_swiglu":
        # transformers: (int(32 * 4 * 2 / 3) + 7) // 8 * 8 = 88 per SwiGLU branch
        return t.Dinov2Model(t.Dinov2Config(**_HF_COMMON, use_swiglu_ffn=True)), 88
    if family == "dinov2_reg":
        config = t.Dinov2WithRegistersConfig(**_HF_COMMON, mlp_ratio=2)
        return t.Dinov2WithRegistersModel(config), 64
    if family == "clip":
        return t.CLIPVisionModel(t.CLIPVisionConfig(**_HF_COMMON, intermediate_size=64)), 64
    raise KeyError(family)


def make_family(family: str, seed: int = 0) -> tuple[torch.nn.Module, ViTConfig]:
    """A transformers model with EVERY parameter drawn from N(0, 0.3^2), and our config."""
    torch.manual_seed(seed)
    model, mlp_dim = _hf_model(family)
    model.eval()
    with torch.no_grad():
        for param in model.parameters():
            torch.nn.init.normal_(param, std=0.3)
    config = dataclasses.replace(
        get_config(_VARIANT[family]),
        patch_size=PATCH,
        width=WIDTH,
        depth=DEPTH,
        heads=HEADS,
        mlp_dim=mlp_dim,
        posemb_grid=GRID,
    )
    return model, config


def state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _module(model: torch.nn.Module, pattern: str) -> torch.nn.Module:
    found = [m for name, m in model.named_modules() if re.fullmatch(pattern, name)]
    assert len(found) == 1, pattern
    return found[0]


def torch_outputs(
    model: torch.nn.Module, config: ViTConfig, images: np.ndarray, block: int, stride: int = 0
) -> dict[str, np.ndarray]:
    """Reference outputs for `images [B, H, W, 3]`, shaped like `ViT`'s (tokens, keys, ...);
    `stride` (0: the patch size) only sizes the grid (the model must already run at it).

    Keys come from a forward hook on the last block's key projection, the block output from a
    hook on block `block`; nothing is recomputed outside transformers except CLIP's
    `post_layernorm` on the patch tokens (transformers applies it to the class token only).
    """
    b, height, width, _ = images.shape
    p = config.patch_size
    step = stride or p
    h, w = (height - p) // step + 1, (width - p) // step + 1
    captured = {}
    layers = r"(?:encoder\.layers?|layers)\.{}"
    hooks = [
        _module(
            model, layers.format(DEPTH - 1) + r"\.(?:attention|self_attn)\.k_proj"
        ).register_forward_hook(lambda m, i, o: captured.__setitem__("keys", o)),
        _module(model, layers.format(block)).register_forward_hook(
            lambda m, i, o: captured.__setitem__("block", o[0] if isinstance(o, tuple) else o)
        ),
    ]
    kwargs = {} if config.family == "dinov2" else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), **kwargs)
        final = out.last_hidden_state
        if config.family == "clip":
            final = model.post_layernorm(final)
    for hook in hooks:
        hook.remove()
    start = 1 + config.registers
    grid = lambda seq: seq[:, start:].numpy().reshape(b, h, w, -1)
    return {
        "tokens": grid(final),
        "keys": grid(captured["keys"]),
        f"block_{block:02d}": grid(captured["block"]),
        "cls": final[:, 0].numpy(),
    }
