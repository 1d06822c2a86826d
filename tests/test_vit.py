"""The Flax ViT against transformers, family by family, plus its contract and variant table."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from vit_reference import FAMILIES, make_family, state_dict, torch, torch_outputs

from hiseg_jax.models.resample import resample_matrix
from hiseg_jax.models.vit import (
    VARIANTS,
    ViTConfig,
    abstract_vit,
    flat_params,
    get_config,
    load_flat_params,
    make_apply,
    param_shapes,
    vit_from_flat,
)
from hiseg_jax.weights.convert import convert_state_dict

# (12, 20): non-square, grid 3 x 5 from the trained 4 x 4 (one axis shrinks, one grows).
# (24, 24): square 6 x 6, interpolation upwards.
SIZES = ((12, 20), (24, 24))
BLOCK = 0  # the intermediate block whose tokens are compared (depth 2)


def _images(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, *size, 3)).astype(np.float32)


def _random_params(config: ViTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random flat params built on the host: no eager JAX op (each would compile) runs."""
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in param_shapes(config).items()}


def _jax_outputs(config: ViTConfig, flat: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    params, apply = make_apply(vit_from_flat(config, flat))
    tokens, aux = jax.jit(apply, static_argnames="blocks")(params, images, blocks=(BLOCK,))
    return {"tokens": np.asarray(tokens), **{k: np.asarray(v) for k, v in aux.items()}}


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_transformers(family):
    model, config = make_family(family)
    flat = convert_state_dict(state_dict(model), config, "hf")
    for size in SIZES:
        images = _images(size)
        want = torch_outputs(model, config, images, BLOCK)
        got = _jax_outputs(config, flat, images)
        assert got.keys() == want.keys()
        for kind, value in want.items():
            np.testing.assert_allclose(
                got[kind], value, rtol=0, atol=1e-4, err_msg=f"{family} {size} {kind}"
            )


@pytest.mark.parametrize("antialias", [False, True])
def test_resample_matrices_match_torch_interpolate(antialias):
    """Both torch bicubic modes, `size=` and `scale_factor=` (offset 0.1) calls, up and down."""
    functional = torch.nn.functional
    mode = "bicubic_antialias" if antialias else "bicubic"
    rng = np.random.default_rng(0)
    for g_in, h_out, w_out, offset in [
        (4, 3, 5, 0.0),
        (4, 4, 6, 0.1),
        (4, 3, 5, 0.1),
        (5, 13, 2, 0.0),
        (37, 60, 37, 0.1),
        (37, 36, 74, 0.0),
        (7, 7, 7, 0.1),
        (1, 3, 2, 0.0),
    ]:
        grid = torch.from_numpy(rng.normal(size=(1, 2, g_in, g_in)))
        resize = (
            {"scale_factor": ((h_out + offset) / g_in, (w_out + offset) / g_in)}
            if offset
            else {"size": (h_out, w_out)}
        )
        want = functional.interpolate(
            grid, mode="bicubic", align_corners=False, antialias=antialias, **resize
        ).numpy()
        rows = resample_matrix(g_in, h_out, mode, offset).astype(np.float64)
        cols = resample_matrix(g_in, w_out, mode, offset).astype(np.float64)
        got = np.einsum("hi,wj,bcij->bchw", rows, cols, grid.numpy())
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{g_in}->{h_out}x{w_out}")


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_match_transformers(self):
        model, config = make_family("dinov2_reg")
        flat = convert_state_dict(state_dict(model), config, "hf")
        params, apply = make_apply(vit_from_flat(config, flat))
        images = _images(SIZES[0], seed=1)
        tokens, aux = self.variant(apply, static_argnames="blocks")(params, images, blocks=(BLOCK,))
        want = torch_outputs(model, config, images, BLOCK)
        np.testing.assert_allclose(tokens, want["tokens"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(aux["keys"], want["keys"], rtol=0, atol=1e-4)


def _strided_dinov2(model: torch.nn.Module, stride: int) -> None:
    """Turn a transformers DINOv2 into the stride-trick reference, in place: its patch
    convolution steps by `stride`, and its position embeddings are resampled (torch bicubic,
    `size=`) to the grid that convolution yields, whatever the pixel size."""
    embeddings = model.embeddings
    embeddings.patch_embeddings.projection.stride = (stride, stride)
    table = embeddings.position_embeddings  # [1, 1 + G * G, D]
    g = math.isqrt(table.shape[1] - 1)
    patch = embeddings.patch_embeddings.patch_size[0]

    def posemb(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        rows, cols = (height - patch) // stride + 1, (width - patch) // stride + 1
        assert tokens.shape[1] == 1 + rows * cols
        grid = table[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = torch.nn.functional.interpolate(
            grid, size=(rows, cols), mode="bicubic", align_corners=False
        )
        return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], 1)

    embeddings.interpolate_pos_encoding = posemb


class StrideTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_stride_equal_to_the_patch_is_the_default_path_bit_for_bit(self):
        model, config = make_family("dinov2")
        params, apply = make_apply(
            vit_from_flat(config, convert_state_dict(state_dict(model), config, "hf"))
        )
        run = self.variant(apply, static_argnames=("blocks", "stride"))
        images = _images(SIZES[0], seed=2)
        tokens, aux = run(params, images)
        strided, strided_aux = run(params, images, stride=config.patch_size)
        np.testing.assert_array_equal(strided, tokens)
        np.testing.assert_array_equal(strided_aux["keys"], aux["keys"])

    @chex.variants(with_jit=True, without_jit=True)
    def test_overlapping_patches_match_a_strided_transformers_dinov2(self):
        """Patch 4 at strides 2 and 3 on sizes that are not multiples of the patch: grids
        (H - 4) / s + 1, against transformers with a strided convolution and posemb."""
        for stride, size, grid in [
            (2, (12, 20), (5, 9)),
            (3, (13, 19), (4, 6)),
            (1, (6, 9), (3, 6)),
        ]:
            model, config = make_family("dinov2")
            flat = convert_state_dict(state_dict(model), config, "hf")
            params, apply = make_apply(vit_from_flat(config, flat))
            images = _images(size, seed=stride)
            tokens, aux = self.variant(apply, static_argnames=("blocks", "stride"))(
                params, images, blocks=(BLOCK,), stride=stride
            )
            chex.assert_shape(tokens, (2, *grid, config.width))
            _strided_dinov2(model, stride)
            want = torch_outputs(model, config, images, BLOCK, stride)
            for kind, value in [
                ("tokens", tokens),
                ("keys", aux["keys"]),
                ("block_00", aux["block_00"]),
            ]:
                np.testing.assert_allclose(
                    value, want[kind], rtol=0, atol=1e-4, err_msg=f"{stride} {kind}"
                )


def test_bad_strides_are_one_line_value_errors():
    config = ViTConfig("dino", 4, 16, 1, 2, 32, posemb_grid=2)
    params, apply = make_apply(vit_from_flat(config, _random_params(config)))
    run = jax.jit(apply, static_argnames=("blocks", "stride"))
    images = jnp.zeros((1, 8, 12, 3))
    for stride, message in [
        (0, r"stride must be in 1..4 \(the patch size\), got 0"),
        (5, r"stride must be in 1..4 \(the patch size\), got 5"),
        (2.0, r"stride must be an int in 1..4 \(the patch size\), got 2.0"),
        (
            3,
            r"image size 8x12 does not fit patch 4 at stride 3: each side must be 4 \+ a multiple",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            run(params, images, stride=stride)
    with pytest.raises(ValueError, match=r"image size 3x12 does not fit patch 4 at stride 1"):
        run(params, jnp.zeros((1, 3, 12, 3)), stride=1)
    chex.assert_shape(run(params, images, stride=2)[0], (1, 3, 5, 16))


def test_vmap_over_a_leading_axis_equals_separate_calls():
    config = ViTConfig("dinov2", 4, 16, 1, 2, 32, layer_scale=True, registers=2, posemb_grid=3)
    params, apply = make_apply(vit_from_flat(config, _random_params(config)))
    stacks = jnp.asarray(_images((8, 12))).reshape(2, 1, 8, 12, 3)
    tokens, aux = jax.jit(jax.vmap(apply, in_axes=(None, 0)))(params, stacks)
    single = jax.jit(apply)
    for i in range(2):
        alone, alone_aux = single(params, stacks[i])
        np.testing.assert_allclose(tokens[i], alone, atol=1e-6)
        np.testing.assert_allclose(aux["cls"][i], alone_aux["cls"], atol=1e-6)


def test_output_contract_and_bad_inputs():
    config = ViTConfig("dino", 4, 16, 3, 2, 32, posemb_grid=2)
    params, apply = make_apply(vit_from_flat(config, _random_params(config)))
    run = jax.jit(apply, static_argnames="blocks")
    tokens, aux = run(params, jnp.zeros((1, 8, 12, 3)), blocks=(0, 2))
    chex.assert_shape([tokens, aux["keys"], aux["block_00"], aux["block_02"]], (1, 2, 3, 16))
    chex.assert_shape(aux["cls"], (1, 16))
    assert sorted(aux) == ["block_00", "block_02", "cls", "keys"]
    with pytest.raises(ValueError, match=r"image size 10x12 is not a positive multiple .* 4"):
        run(params, jnp.zeros((1, 10, 12, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\], got shape \(8, 12, 3\)"):
        run(params, jnp.zeros((8, 12, 3)))
    with pytest.raises(ValueError, match="normalised floats"):
        run(params, jnp.zeros((1, 8, 12, 3), jnp.uint8))
    with pytest.raises(ValueError, match=r"blocks \[3\] out of range: .* blocks 0..2"):
        run(params, jnp.zeros((1, 8, 12, 3)), blocks=(3,))


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="unknown ViT variant 'dinov3'") as info:
        get_config("dinov3")
    assert str(sorted(VARIANTS)) in str(info.value)


def test_config_validation():
    with pytest.raises(ValueError, match="width 30 is not divisible by heads 4"):
        ViTConfig("dino", 4, 30, 1, 4, 8)
    with pytest.raises(ValueError, match="mlp_kind must be one of"):
        ViTConfig("dino", 4, 32, 1, 4, 8, mlp_kind="relu")
    with pytest.raises(ValueError, match="posemb_interp must be one of"):
        ViTConfig("dino", 4, 32, 1, 4, 8, posemb_interp="bilinear")


def test_flat_params_round_trip_and_errors():
    config = ViTConfig("clip", 4, 16, 1, 2, 32, pre_norm=True, patch_bias=False, posemb_grid=2)
    flat = _random_params(config, seed=1)
    assert "pre_norm/scale" in flat and "patch_embed/bias" not in flat
    restored = flat_params(vit_from_flat(config, flat))
    assert restored.keys() == flat.keys()
    for key, value in flat.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    model = abstract_vit(config)
    bad = {**flat, "blocks/0/attn/key/kernel": np.zeros((16, 8), np.float32)}
    shapes = r"'blocks/0/attn/key/kernel' has shape \(16, 8\), .* \(16, 16\)"
    with pytest.raises(ValueError, match=shapes):
        load_flat_params(model, bad)
    partial = {k: v for k, v in flat.items() if k != "norm/bias"}
    with pytest.raises(ValueError, match=r"missing keys \['norm/bias'\], unexpected \[\]"):
        load_flat_params(model, partial)
    with pytest.raises(ValueError, match=r"unexpected \['registers'\]"):
        load_flat_params(model, {**flat, "registers": np.zeros((4, 16), np.float32)})


# transformers' parameter counts (torch, meta device) minus what the backbone leaves out:
# Dinov2Model / Dinov2WithRegistersModel count their pretraining mask token (D params), e.g.
# Dinov2Model ViT-S/14 = 22,056,576 = 22,056,192 + 384; ViTModel(add_pooling_layer=False)
# and CLIPVisionModel (both LayerNorms, no projection) count exactly the same weights.
PARAM_COUNTS = {
    "dinov2_vits14": 22_056_576 - 384,
    "dinov2_vitb14_reg": 86_583_552 - 768,
    "clip_vitb32": 87_456_000,
}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts_of_real_variants(name):
    shapes = param_shapes(get_config(name))  # abstract: nothing is allocated
    assert sum(math.prod(s) for s in shapes.values()) == PARAM_COUNTS[name]


def test_variant_table_hyper_parameters():
    for name, config in VARIANTS.items():
        family = name.split("_")[0]
        assert config.family == family
        assert config.image_size == {"dino": 224, "dinov2": 518, "clip": 224}[family], name
        assert config.norm_eps == (1e-5 if family == "clip" else 1e-6), name
        assert config.registers == (4 if name.endswith("_reg") else 0), name
        assert config.posemb_interp == ("bicubic_antialias" if config.registers else "bicubic")
        assert config.layer_scale == (family == "dinov2"), name
    assert get_config("dinov2_vitg14").mlp_kind == "swiglu"
    assert get_config("dinov2_vitg14").mlp_dim == 4096
    assert get_config("dinov2_vits14_imgfocus") == get_config("dinov2_vits14")
    clip_l = get_config("clip_vitl14")
    assert clip_l.patch_size == 14 and clip_l.posemb_grid == 16 and clip_l.width == 1024
