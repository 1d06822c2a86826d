"""Preprocessing (resize + normalisation) and jit-compiled feature extraction."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
import skimage.color
import skimage.data
from flax import nnx

from hiseg_jax.features import (
    backbone_features,
    extract_features,
    feature_parts,
    image_size,
    patch_colour,
    preprocess,
    srgb_to_lab,
)
from hiseg_jax.models.vit import ViT, ViTConfig, get_config, make_apply

TINY = ViTConfig(
    "dinov2", patch_size=4, width=32, depth=2, heads=2, mlp_dim=64, layer_scale=True, posemb_grid=4
)


def _torch_reference(image: np.ndarray, size: tuple[int, int], config: ViTConfig) -> np.ndarray:
    """torchvision-style: float image, bilinear antialiased resize, then mean/std."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255.0
    x = (
        torch.nn.functional.interpolate(
            x, size=size, mode="bilinear", antialias=True, align_corners=False
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    return (x - np.asarray(config.image_mean)) / np.asarray(config.image_std)


@pytest.mark.parametrize("variant", ["dinov2_vits14", "clip_vitb16"])
def test_preprocess_matches_antialiased_bilinear_and_family_normalisation(variant):
    config = get_config(variant)
    images = [skimage.data.chelsea(), skimage.data.astronaut()]  # 300x451 and 512x512
    size = (14 * 16, 14 * 40) if config.patch_size == 14 else (16 * 14, 16 * 35)
    batch = preprocess(images, size, config)
    assert batch.shape == (2, *size, 3) and batch.dtype == np.float32
    for got, image in zip(batch, images, strict=True):  # shrinks one axis, enlarges the other
        np.testing.assert_allclose(got, _torch_reference(image, size, config), atol=2e-4)


def test_preprocess_keeps_an_image_already_at_size_and_accepts_a_batch_array():
    config = get_config("dinov2_vits14")
    image = skimage.data.astronaut()[:224, :224]
    batch = preprocess(np.stack([image, image[::-1]]), 224, config)
    expected = (image / 255.0 - np.asarray(config.image_mean)) / np.asarray(config.image_std)
    np.testing.assert_allclose(batch[0], expected, atol=1e-6)
    np.testing.assert_allclose(batch[1], expected[::-1], atol=1e-6)


@pytest.mark.parametrize(
    ("images", "size", "message"),
    [
        ([np.zeros((20, 20, 3), np.uint8)], 225, r"225x225 is not a multiple of the patch size 14"),
        ([np.zeros((20, 20, 3), np.uint8)], (224, 0), "positive int"),
        ([np.zeros((20, 20, 3), np.float32)], 224, "image 0: expected a uint8 array"),
        (
            [np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8)],
            224,
            r"image 1: expected RGB \[H, W, 3\]",
        ),
        ([np.zeros((0, 20, 3), np.uint8)], 224, "image 0"),
        (np.zeros((20, 20, 3), np.uint8), 224, "list of"),
        ([], 224, "empty"),
    ],
)
def test_preprocess_rejects_bad_input(images, size, message):
    with pytest.raises(ValueError, match=message):
        preprocess(images, size, get_config("dinov2_vits14"))


def test_image_size_normalises_int_and_pair():
    assert image_size(28, 14) == (28, 28)
    assert image_size((28, 42), 14) == (28, 42)


@pytest.fixture(scope="module")
def tiny_model():
    return ViT(TINY, rngs=nnx.Rngs(0))


def test_extract_features_equals_the_eager_model(tiny_model):
    images = np.random.default_rng(0).standard_normal((2, 12, 20, 3)).astype(np.float32)
    tokens, aux = tiny_model(jax.numpy.asarray(images))
    got_tokens = extract_features(tiny_model, images)
    got_keys = extract_features(tiny_model, images, kind="keys")
    assert got_tokens.shape == got_keys.shape == (2, 3, 5, 32)
    np.testing.assert_allclose(got_tokens, tokens, atol=1e-5)
    np.testing.assert_allclose(got_keys, aux["keys"], atol=1e-5)


def test_extract_features_at_a_stride_equals_the_eager_model(tiny_model):
    images = np.random.default_rng(1).standard_normal((1, 12, 20, 3)).astype(np.float32)
    tokens, aux = tiny_model(jax.numpy.asarray(images), stride=2)
    got_tokens = extract_features(tiny_model, images, stride=2)
    got_keys = extract_features(tiny_model, images, kind="keys", stride=2)
    assert got_tokens.shape == (1, 5, 9, 32)
    np.testing.assert_allclose(got_tokens, tokens, atol=1e-5)
    np.testing.assert_allclose(got_keys, aux["keys"], atol=1e-5)
    np.testing.assert_array_equal(
        extract_features(tiny_model, images, stride=4), extract_features(tiny_model, images)
    )


def test_extract_features_compiles_once_per_shape_and_takes_params_as_arguments():
    from hiseg_jax.features import compiled_features

    first, second = ViT(TINY, rngs=nnx.Rngs(1)), ViT(TINY, rngs=nnx.Rngs(2))
    images = np.ones((1, 16, 16, 3), np.float32)
    before = compiled_features._cache_size()
    a = extract_features(first, images)
    b = extract_features(second, images)  # same structure, other params: no recompilation
    extract_features(first, images + 1)
    assert compiled_features._cache_size() == before + 1
    assert not np.allclose(a, b)
    extract_features(first, np.ones((1, 16, 8, 3), np.float32))
    assert compiled_features._cache_size() == before + 2


@pytest.mark.parametrize(
    ("images", "kind", "message"),
    [
        (np.zeros((1, 16, 16, 3), np.float32), "values", "'values' is not one of"),
        (np.zeros((1, 18, 16, 3), np.float32), "tokens", "18x16 is not a multiple of the patch"),
        (np.zeros((1, 16, 16, 3), np.uint8), "tokens", "preprocessed floats"),
        (np.zeros((16, 16, 3), np.float32), "tokens", r"\[B, H, W, 3\]"),
        (np.zeros((1, 16, 16, 3), np.float32), 0, r"stride must be in 1..4 .*, got 0"),
        (np.zeros((1, 16, 16, 3), np.float32), 5, r"stride must be in 1..4 .*, got 5"),
        (np.zeros((1, 16, 14, 3), np.float32), 3, "16x14 does not fit patch 4 at stride 3"),
    ],
)
def test_extract_features_rejects_bad_input(tiny_model, images, kind, message):
    """`kind` is the feature kind, or an int: the stride of the tokens."""
    options = dict(stride=kind) if isinstance(kind, int) else dict(kind=kind)
    with pytest.raises(ValueError, match=message):
        extract_features(tiny_model, images, **options)


def _lab_reference(rgb: np.ndarray) -> np.ndarray:
    """sRGB [..., 3] in [0, 1] -> CIELAB (D65), the textbook formulas in float64."""
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = np.array([[0.412453, 0.35758, 0.180423], [0.212671, 0.71516, 0.072169],
                  [0.019334, 0.119193, 0.950227]])  # fmt: skip
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


def test_srgb_to_lab_matches_the_formula_and_skimage():
    rng = np.random.default_rng(0)
    rgb = rng.random((64, 3))
    rgb[:4] = [[0, 0, 0], [1, 1, 1], [0.01, 0.02, 0.03], [1, 0, 0]]  # black, white, dark, red
    got = np.asarray(srgb_to_lab(jax.numpy.asarray(rgb, np.float32)))
    np.testing.assert_allclose(got, _lab_reference(rgb), atol=2e-3)
    np.testing.assert_allclose(got, skimage.color.rgb2lab(rgb), atol=2e-3)
    np.testing.assert_allclose(got[1], [100, 0, 0], atol=1e-2)  # the white point


class PatchColourTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_patch_colour_is_the_centred_scaled_patch_mean_lab(self):
        config = get_config("dinov2_vits14")
        images = [skimage.data.chelsea(), skimage.data.astronaut()]
        x = preprocess(images, (28, 42), config)
        got = np.asarray(self.variant(patch_colour, static_argnums=1)(x, config))
        rgb = np.clip(x * np.asarray(config.image_std) + np.asarray(config.image_mean), 0, 1)
        lab = _lab_reference(rgb.astype(np.float64))
        want = lab.reshape(2, 2, 14, 3, 14, 3).mean(axis=(2, 4))
        want -= want.mean(axis=(1, 2), keepdims=True)
        want /= np.sqrt((want**2).sum(-1).mean(axis=(1, 2)))[:, None, None, None]
        chex.assert_shape(got, (2, 2, 3, 3))
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_patch_colour_of_a_one_colour_image_is_zero():
    config = get_config("dinov2_vits14")
    x = preprocess(np.full((1, 28, 28, 3), 90, np.uint8), 28, config)
    np.testing.assert_array_equal(np.asarray(patch_colour(x, config)), 0.0)


def test_feature_parts_parses_kinds_and_weights():
    assert feature_parts("tokens") == (("tokens", 1.0),)
    assert feature_parts("tokens+block09:0.5+colour:.25") == (
        ("tokens", 1.0),
        ("block09", 0.5),
        ("colour", 0.25),
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pixels", "'pixels' is not one of"),
        ("block9", "'block9' is not one of"),
        ("tokens+colour:-1", "not a positive number"),
        ("tokens+colour:x", "not a positive number"),
        ("tokens+tokens:2", "given twice"),
    ],
)
def test_feature_parts_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        feature_parts(spec)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class MixedFeaturesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_mixes_join_normalised_blocks_and_the_colour_cue(self):
        model = ViT(TINY, rngs=nnx.Rngs(0))
        images = preprocess([skimage.data.chelsea()], (12, 20), TINY)
        tokens, aux = model(jax.numpy.asarray(images), blocks=(0,))
        spec = "tokens+block00:0.5+colour:2"
        params, apply = make_apply(model)
        run = lambda p, x: backbone_features(apply, p, x, spec, jax.numpy.float32, TINY)
        got, finite = self.variant(run)(params, images)
        colour = np.asarray(patch_colour(images, TINY))
        want = np.concatenate([_unit(tokens), 0.5 * _unit(aux["block_00"]), 2 * colour], -1)
        chex.assert_shape(got, (1, 3, 5, 32 + 32 + 3))
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(extract_features(model, images, spec), want, atol=1e-5)
        assert finite.tolist() == [True]


def test_colour_features_need_the_backbone_config(tiny_model):
    params, apply = make_apply(tiny_model)
    images = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="need the backbone's config"):
        backbone_features(apply, params, images, "colour", jax.numpy.float32)


def test_the_colour_cue_refuses_a_stride(tiny_model):
    images = np.zeros((1, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="colour cue needs whole patches"):
        extract_features(tiny_model, images, kind="tokens+colour:0.25", stride=2)


def test_features_that_need_a_missing_block_are_refused(tiny_model):
    images = np.zeros((1, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match=r"need block 9, but the backbone has \d+ blocks"):
        extract_features(tiny_model, images, kind="tokens+block09")
