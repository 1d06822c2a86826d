"""Checkpoint key-rule conversion: every naming scheme gives the same params, bad dicts fail."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from vit_reference import DEPTH, make_family, state_dict, torch, torch_outputs, transformers

from hiseg_jax.models.vit import get_config, make_apply, param_shapes, vit_from_flat
from hiseg_jax.weights.convert import convert_state_dict

# Test-side renamings, written independently of the rule tables: transformers 5.x names of a
# block (the `{}` is the block prefix) -> the names of the other formats.


def _qkv(sd: dict, block: str, leaf: str) -> np.ndarray:
    return np.concatenate([sd[f"{block}attention.{x}_proj.{leaf}"] for x in "qkv"])


def _to_timm_hub(sd: dict, layer: str, names: dict[str, str]) -> dict[str, np.ndarray]:
    """transformers DINO / DINOv2 dict -> facebookresearch dino / dinov2 names."""
    hub = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(DEPTH):
        src, dst = layer.format(i), f"blocks.{i}."
        for leaf in ("weight", "bias"):
            hub[f"{dst}attn.qkv.{leaf}"] = _qkv(sd, src, leaf)
            for theirs, ours in names.items():
                hub[f"{dst}{ours}.{leaf}"] = sd[f"{src}{theirs}.{leaf}"]
    return hub


_DINO_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_DINOV2_BLOCK = {"norm1": "norm1", "norm2": "norm2", "attention.o_proj": "attn.proj"}


def _to_dinov2_hub(sd: dict, swiglu: bool) -> dict[str, np.ndarray]:
    mlp = {} if swiglu else {"mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    hub = _to_timm_hub(sd, "encoder.layer.{}.", {**_DINOV2_BLOCK, **mlp})
    hub["mask_token"] = sd["embeddings.mask_token"]
    for i in range(DEPTH):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        hub[f"{dst}ls1.gamma"] = sd[f"{src}layer_scale1.lambda1"]
        hub[f"{dst}ls2.gamma"] = sd[f"{src}layer_scale2.lambda1"]
        if swiglu:
            for leaf in ("weight", "bias"):
                gate_up = [sd[f"{src}mlp.{x}_proj.{leaf}"] for x in ("gate", "up")]
                hub[f"{dst}mlp.w12.{leaf}"] = np.concatenate(gate_up)
                hub[f"{dst}mlp.w3.{leaf}"] = sd[f"{src}mlp.down_proj.{leaf}"]
    return hub


def _to_openai_clip(sd: dict) -> dict[str, np.ndarray]:
    """transformers CLIPVisionModel dict -> a whole OpenAI CLIP state dict (text tower too)."""
    clip = {
        "class_embedding": sd["embeddings.class_embedding"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "conv1.weight": sd["embeddings.patch_embedding.weight"],
        "proj": np.ones((32, 16), np.float32),
    }
    for theirs, ours in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        clip |= {f"{ours}.{leaf}": sd[f"{theirs}.{leaf}"] for leaf in ("weight", "bias")}
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i in range(DEPTH):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{x}_proj.{leaf}"] for x in "qkv"]
            clip[f"{dst}attn.in_proj_{leaf}"] = np.concatenate(qkv)
            for theirs, ours in names.items():
                clip[f"{dst}{ours}.{leaf}"] = sd[f"{src}{theirs}.{leaf}"]
    text = {
        "positional_embedding": np.zeros((77, 16), np.float32),
        "token_embedding.weight": np.zeros((10, 16), np.float32),
        "transformer.resblocks.0.attn.in_proj_weight": np.zeros((48, 16), np.float32),
        "ln_final.weight": np.zeros(16, np.float32),
        "text_projection": np.zeros((16, 16), np.float32),
        "logit_scale": np.zeros((), np.float32),
    }
    return {f"visual.{k}": v for k, v in clip.items()} | text


def _assert_same_params(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize(
    ("family", "source", "rename"),
    [
        ("dino", "dino_hub", lambda sd: _to_timm_hub(sd, "layers.{}.", _DINO_BLOCK)),
        ("dinov2", "dinov2_hub", lambda sd: _to_dinov2_hub(sd, swiglu=False)),
        ("dinov2_swiglu", "dinov2_hub", lambda sd: _to_dinov2_hub(sd, swiglu=True)),
        ("clip", "openai_clip", _to_openai_clip),
    ],
)
def test_hub_names_give_the_hf_params(family, source, rename):
    model, config = make_family(family)
    sd = state_dict(model)
    want = convert_state_dict(sd, config, "hf")
    _assert_same_params(convert_state_dict(rename(sd), config, source), want)


def test_dinov2_hub_registers_in_chunked_blocks_give_the_same_outputs():
    """Registers, FSDP-chunked block names (`blocks.<chunk>.<i>.`) and a `backbone.` prefix,
    run through the model: the outputs are transformers'."""
    model, config = make_family("dinov2_reg")
    sd = state_dict(model)
    hub = _to_dinov2_hub(sd, swiglu=False) | {"register_tokens": sd["embeddings.register_tokens"]}
    # One block per chunk: `blocks.<i>.` -> `blocks.<i>.<i>.`.
    chunked = lambda key: re.sub(r"^blocks\.(\d+)\.", r"blocks.\1.\1.", key)
    hub = {"backbone." + chunked(k): v for k, v in hub.items()}
    assert "backbone.blocks.1.1.ls1.gamma" in hub
    hub["head.last_layer.weight"] = np.zeros((3, 32), np.float32)  # training head: foreign
    flat = convert_state_dict(hub, config, "dinov2_hub")
    params, apply = make_apply(vit_from_flat(config, flat))
    images = np.random.default_rng(2).normal(size=(2, 12, 20, 3)).astype(np.float32)
    tokens, aux = jax.jit(apply)(params, images)
    want = torch_outputs(model, config, images, block=0)
    np.testing.assert_allclose(tokens, want["tokens"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(aux["keys"], want["keys"], rtol=0, atol=1e-4)


def _legacy_hf(sd: dict, vit: bool) -> dict[str, np.ndarray]:
    """transformers 5.x names -> the names stored in Hub checkpoints (and ONNX exports)."""
    renames = [
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.down_proj", "mlp.weights_out"),
    ]
    if vit:
        renames += [
            ("layers.", "encoder.layer."),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
        ]
    legacy = {}
    for key, value in sd.items():
        if ".mlp.up_proj." in key:
            continue
        if ".mlp.gate_proj." in key:
            up = sd[key.replace("gate_proj", "up_proj")]
            key, value = key.replace("gate_proj", "weights_in"), np.concatenate([value, up])
        for new, old in renames:
            key = key.replace(new, old)
        legacy[key] = value
    return legacy


@pytest.mark.parametrize("family", ["dino", "dinov2_swiglu"])
def test_legacy_hf_names_with_a_prefix_give_the_same_params(family):
    model, config = make_family(family)
    sd = state_dict(model)
    legacy = {"backbone." + k: v for k, v in _legacy_hf(sd, vit=family == "dino").items()}
    legacy["classifier.weight"] = np.zeros((10, 64), np.float32)  # outside the model: skipped
    assert any("attention.attention.query" in k for k in legacy)
    want = convert_state_dict(sd, config, "hf")
    _assert_same_params(convert_state_dict(legacy, config, "hf"), want)


def test_a_whole_clip_model_dict_converts_its_vision_tower():
    model, config = make_family("clip")
    sd = state_dict(model)
    whole = {"vision_model." + k: v for k, v in sd.items()} | {
        "text_model.embeddings.token_embedding.weight": np.zeros((10, 32), np.float32),
        "visual_projection.weight": np.zeros((16, 32), np.float32),
        "logit_scale": np.zeros((), np.float32),
    }
    want = convert_state_dict(sd, config, "hf")
    _assert_same_params(convert_state_dict(whole, config, "hf"), want)


@pytest.mark.parametrize(
    ("variant", "hf_model"),
    [
        (
            "dinov2_vits14",
            lambda t: t.Dinov2Model(
                t.Dinov2Config(
                    hidden_size=384, num_attention_heads=6, image_size=518, patch_size=14
                )
            ),
        ),
        (
            "dinov2_vitb14_reg",
            lambda t: t.Dinov2WithRegistersModel(
                t.Dinov2WithRegistersConfig(image_size=518, patch_size=14)
            ),
        ),
        ("clip_vitb32", lambda t: t.CLIPVisionModel(t.CLIPVisionConfig())),  # defaults: B/32
    ],
)
def test_real_variants_fit_full_size_transformers_models(variant, hf_model):
    """Shapes of the real checkpoints (transformers on the meta device, zero-size arrays)."""
    with torch.device("meta"):
        model = hf_model(transformers)
    sd = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in model.state_dict().items()}
    flat = convert_state_dict(sd, variant, "hf")
    assert {k: v.shape for k, v in flat.items()} == param_shapes(get_config(variant))


@pytest.fixture(scope="module")
def dinov2():
    model, config = make_family("dinov2")
    return state_dict(model), config


def test_unknown_key_is_named(dinov2):
    sd, config = dinov2
    bad = sd | {"encoder.layer.0.attention.bogus.weight": np.zeros((32, 32), np.float32)}
    message = r"1 'hf' keys match no conversion rule: \['encoder\.layer\.0\.attention\.bogus\."
    with pytest.raises(ValueError, match=message):
        convert_state_dict(bad, config, "hf")


def test_wrong_shape_names_key_target_and_both_shapes(dinov2):
    sd, config = dinov2
    bad = sd | {"encoder.layer.1.mlp.fc1.weight": np.zeros((65, 32), np.float32)}
    message = (
        r"'encoder\.layer\.1\.mlp\.fc1\.weight' -> 'blocks/1/mlp/fc1/kernel' "
        r"has shape \(32, 65\), dinov2 config expects \(32, 64\)"
    )
    with pytest.raises(ValueError, match=message):
        convert_state_dict(bad, config, "hf")


def test_missing_and_unexpected_params_are_named(dinov2):
    sd, config = dinov2
    with pytest.raises(ValueError, match=r"missing params \['norm/bias'\]"):
        convert_state_dict({k: v for k, v in sd.items() if k != "layernorm.bias"}, config, "hf")
    extra = sd | {"embeddings.register_tokens": np.zeros((1, 4, 32), np.float32)}
    message = r"unexpected params 'registers' \(from 'embeddings\.register_tokens'\)"
    with pytest.raises(ValueError, match=message):
        convert_state_dict(extra, config, "hf")
    both = sd | {"encoder.layer.0.attention.attention.query.bias": np.zeros(32, np.float32)}
    with pytest.raises(ValueError, match="both convert to 'blocks/0/attn/query/bias'"):
        convert_state_dict(both, config, "hf")


def test_malformed_fused_weight_and_bad_arguments(dinov2):
    sd, config = dinov2
    hub = _to_dinov2_hub(sd, swiglu=False)
    hub["blocks.0.attn.qkv.weight"] = np.zeros((95, 32), np.float32)
    message = r"'blocks\.0\.attn\.qkv\.weight': cannot split shape \(95, 32\) into 3"
    with pytest.raises(ValueError, match=message):
        convert_state_dict(hub, config, "dinov2_hub")
    valid = r"\['dino_hub', 'dinov2_hub', 'hf', 'openai_clip'\]"
    with pytest.raises(ValueError, match=r"unknown checkpoint source 'timm'; valid: " + valid):
        convert_state_dict(sd, config, "timm")
    with pytest.raises(ValueError, match=r"cannot locate the model .* found 0"):
        convert_state_dict(sd, config, "openai_clip")
    with pytest.raises(ValueError, match="unknown ViT variant 'vit_tiny'"):
        convert_state_dict(sd, "vit_tiny", "hf")
