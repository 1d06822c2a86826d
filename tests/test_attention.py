"""Tiled attention: tile shapes, equality with a float64 softmax oracle whatever the tiling
(one tile, grouped pairs, query chunks with a ragged last chunk, single queries), jit and
eager alike, bounded memory, and the ViT with tiny tiles against the single-tile ViT."""

from __future__ import annotations

import dataclasses

import chex
import jax
import numpy as np
import pytest

from hiseg_jax.models.attention import (
    CPU_MAX_LOGITS,
    default_max_logits,
    dot_product_attention,
    tile_shape,
)
from hiseg_jax.models.vit import ViTConfig, make_apply, param_shapes, vit_from_flat

B, T, N, H = 2, 7, 3, 4  # 6 (batch, head) pairs of 7 x 7 logits


def _qkv(scale: float = 1.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [scale * rng.normal(size=(B, T, N, H)).astype(np.float32) for _ in range(3)]


def _oracle(query: np.ndarray, key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """softmax(q k^T / sqrt(H)) v in float64, [B, T, N, H]."""
    q, k, v = (x.astype(np.float64) for x in (query, key, value))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", weights, v)


@pytest.mark.parametrize(
    ("pairs", "tokens", "max_logits", "expected"),
    [
        (6, 7, 10_000, (6, 7)),  # everything in one tile
        (6, 7, 4 * 49, (3, 7)),  # 4 pairs fit, 3 is the largest divisor of 6 that does
        (5, 7, 4 * 49, (1, 7)),  # 5 is prime: one pair per tile
        (6, 7, 48, (1, 4)),  # 6 queries fit: 2 chunks of 4, the last one padded by 1
        (6, 7, 21, (1, 3)),  # 3 queries fit: chunks 3, 3, 1 (+2 padding)
        (6, 7, 5, (1, 1)),  # less than one query row fits: still one query per tile
        (48, 3601, 1 << 20, (1, 277)),  # ViT-S/14 at 840 px, batch 8: 13 chunks of 277
    ],
)
def test_tile_shape(pairs, tokens, max_logits, expected):
    group, chunk = tile_shape(pairs, tokens, max_logits)
    assert (group, chunk) == expected
    assert pairs % group == 0
    assert group * chunk * tokens <= max(max_logits, tokens)


def test_tile_shape_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="must be >= 1, got 6, 7, 0"):
        tile_shape(6, 7, 0)


class TiledAttentionTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_every_tiling_equals_the_float64_oracle(self):
        query, key, value = _qkv()
        want = _oracle(query, key, value)
        for max_logits in (4 * 49, 21, 5):  # grouped pairs, ragged chunks, single queries
            attend = self.variant(
                lambda q, k, v, m=max_logits: dot_product_attention(q, k, v, max_logits=m)
            )
            got = attend(query, key, value)
            chex.assert_shape(got, (B, T, N, H))
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=f"{max_logits}")

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_jax_nn_on_the_default_budget(self):
        query, key, value = _qkv(seed=1)
        got = self.variant(dot_product_attention)(query, key, value)
        want = jax.nn.dot_product_attention(query, key, value)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_large_logits_stay_finite_and_exact():
    """Logits of order 1e3 (exp would overflow without the max shift) in chunked tiles."""
    query, key, value = _qkv(scale=30.0, seed=2)
    got = np.asarray(
        jax.jit(lambda q, k, v: dot_product_attention(q, k, v, max_logits=21))(query, key, value)
    )
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _oracle(query, key, value), rtol=0, atol=1e-4)


def test_tiles_bound_the_compiled_temporary_memory():
    """At T = 1024 the plain form needs all 2 x 1024 x 1024 float32 logits (8 MiB) at once."""
    shape = jax.ShapeDtypeStruct((1, 1024, 2, 8), np.float32)
    full_logits = 2 * 1024 * 1024 * 4

    def temp_bytes(fn) -> int:
        return jax.jit(fn).lower(shape, shape, shape).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(jax.nn.dot_product_attention) >= full_logits
    tiled = temp_bytes(lambda q, k, v: dot_product_attention(q, k, v, max_logits=1 << 16))
    assert tiled < full_logits / 8, tiled


def test_default_budget_and_bad_shapes():
    assert default_max_logits() == CPU_MAX_LOGITS  # tests run with JAX_PLATFORMS=cpu
    query, key, _ = _qkv()
    with pytest.raises(ValueError, match=r"one shape, got \(2, 7, 3, 4\), \(2, 6, 3, 4\)"):
        dot_product_attention(query, key[:, :6], key)
    with pytest.raises(ValueError, match=r"\[B, T, N, H\]"):
        dot_product_attention(query[0], key[0], key[0])
    with pytest.raises(ValueError, match="attention_max_logits must be None or >= 1, got 0"):
        ViTConfig("dino", 4, 16, 1, 2, 32, attention_max_logits=0)


def test_vit_with_tiny_tiles_equals_the_single_tile_vit():
    """Class + 4 registers + 15 patches = 20 tokens; 60 logits per tile: 7 chunks of 3 queries.

    The single-tile ViT is the one tests/test_vit.py proves against transformers.
    """
    config = ViTConfig("dinov2", 4, 16, 2, 2, 32, layer_scale=True, registers=4, posemb_grid=3)
    rng = np.random.default_rng(3)
    flat = {k: 0.5 * rng.normal(size=s).astype(np.float32) for k, s in param_shapes(config).items()}
    images = rng.normal(size=(2, 12, 20, 3)).astype(np.float32)
    assert tile_shape(2 * config.heads, 20, 60) == (1, 3)
    assert tile_shape(2 * config.heads, 20, default_max_logits()) == (4, 20)
    outputs = []
    for max_logits in (60, None):
        tiled = dataclasses.replace(config, attention_max_logits=max_logits)
        params, apply = make_apply(vit_from_flat(tiled, flat))
        tokens, aux = jax.jit(apply, static_argnames="blocks")(params, images, blocks=(0,))
        outputs.append({"tokens": tokens, **aux})
    for kind, value in outputs[1].items():
        np.testing.assert_allclose(outputs[0][kind], value, rtol=0, atol=1e-5, err_msg=kind)
