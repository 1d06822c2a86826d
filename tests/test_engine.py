"""The engine's host side and traced pieces (the full step runs in test_sharding and
test_api)."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hiseg_jax.engine.batches import Item, host_batches, prefetch
from hiseg_jax.engine.metric import bsds_metric, canvas_shape, upsample_to_canvas
from hiseg_jax.engine.step import StepOutput, fetch, make_step
from hiseg_jax.features import backbone_features, cast_floating, extract_features, preprocess
from hiseg_jax.models.vit import ViT, ViTConfig, make_apply
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.tree import Tree, upsample_labels

TINY_VIT = ViTConfig("dinov2", 4, 32, 2, 2, 64, layer_scale=True, posemb_grid=8)
CONFIG = PartitionConfig(n_parts=12, levels=3)


@pytest.fixture(scope="module")
def model() -> ViT:
    return ViT(TINY_VIT, rngs=nnx.Rngs(0))


def _images(count: int, shape: tuple[int, int] = (20, 28), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


# --- backbone in float32 / bfloat16 ------------------------------------------------------


def test_backbone_float32_equals_extract_features(model):
    images = preprocess(_images(2), 32, TINY_VIT)
    params, apply = make_apply(model)
    run = jax.jit(lambda p, x: backbone_features(apply, p, x, "keys", jnp.float32))
    features, finite = run(params, images)
    np.testing.assert_array_equal(features, extract_features(model, images, "keys"))
    assert finite.tolist() == [True, True]


def test_step_backbone_computes_mixed_features_as_extract_features(model):
    spec = "keys+block00:0.5+colour:0.5"
    step = make_step(model, 32, CONFIG, features=spec)
    images = preprocess(_images(2), 32, TINY_VIT)
    params, batch, _ = step.arguments(images)
    features, finite, _ = step.programs.backbone(params, batch)
    assert features.shape == (2, 8, 8, 32 + 32 + 3) and finite.tolist() == [True, True]
    np.testing.assert_allclose(features, extract_features(model, images, spec), atol=1e-6)


def test_backbone_bfloat16_runs_in_bfloat16_and_returns_float32(model):
    images = preprocess(_images(2), 32, TINY_VIT)
    params, apply = make_apply(model)
    half = cast_floating(params, jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(half)} == {jnp.dtype(jnp.bfloat16)}
    run = jax.jit(lambda p, x: backbone_features(apply, p, x, "tokens", jnp.bfloat16))
    hlo = run.lower(half, images).as_text()
    assert "dot_general" in hlo and "bf16" in hlo  # the matmuls really are bfloat16
    features, _ = run(half, images)
    exact = np.asarray(extract_features(model, images))
    assert features.dtype == jnp.float32
    error = np.abs(np.asarray(features) - exact).max() / np.abs(exact).max()
    assert 1e-4 < error < 5e-2  # rounded (so not float32), but close


# --- host side: prefetch, batching, buckets ------------------------------------------------


def test_prefetch_keeps_order_and_reraises():
    assert list(prefetch(iter(range(7)), depth=2)) == list(range(7))

    def broken():
        yield 1
        raise OSError("disk gone")

    stream = prefetch(broken())
    assert next(stream) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(stream)
    with pytest.raises(ValueError, match="depth"):
        next(prefetch([], depth=0))


def test_prefetch_runs_ahead_in_another_thread_and_stops_when_closed():
    produced, threads = [], set()

    def source():
        for i in range(100):
            threads.add(threading.current_thread().name)
            produced.append(i)
            yield i

    stream = prefetch(source(), depth=2)
    assert next(stream) == 0
    stream.close()  # joins the worker
    assert threads == {"hiseg-prefetch"}
    assert len(produced) <= 4  # the one consumed, <= 2 queued, <= 1 waiting to be queued


def test_host_batches_pad_each_bucket_to_one_shape():
    metric = bsds_metric(num_regions=8, annotators=3, granule=16)
    rng = np.random.default_rng(0)
    shapes = [(20, 28), (28, 20), (20, 28), (40, 12), (20, 28)]
    items = [
        Item(f"i{k}", image, rng.integers(1, 9, (1 + k % 3, *shape), dtype=np.int32))
        for k, (shape, image) in enumerate(zip(shapes, _images(5), strict=True))
    ]
    items[1] = items[1]._replace(image=_images(1, (28, 20))[0])
    items[3] = items[3]._replace(image=_images(1, (40, 12))[0])
    batches = list(host_batches(iter(items), 2, (32, 32), TINY_VIT, metric))
    # canvases: 20x28 and 28x20 -> 32x32; 40x12 -> 48x48.
    assert [(b.names, b.count) for b in batches] == [
        (("i0", "i1"), 2),
        (("i2", "i4"), 2),
        (("i3",), 1),
    ]
    for batch in batches:
        segs, sizes = batch.targets
        assert batch.images.shape == (2, 32, 32, 3) and batch.images.dtype == np.float32
        assert segs.shape[:2] == (2, 3) and sizes.shape == (2, 2)
    last_segs, last_sizes = batches[2].targets
    assert last_segs.shape[2:] == (48, 48)
    np.testing.assert_array_equal(last_segs[1], last_segs[0])  # padding copies the last row
    np.testing.assert_array_equal(batches[2].images[1], batches[2].images[0])
    segs, sizes = batches[0].targets
    assert sizes.tolist() == [[20, 28], [28, 20]]
    np.testing.assert_array_equal(segs[0, 0, :20, :28], items[0].target[0] - 1)
    assert (segs[0, 0, 20:] == -1).all() and (segs[0, 1:] == -1).all()  # padding, annotators


def test_bsds_collate_rejects_bad_targets():
    metric = bsds_metric(num_regions=8, annotators=2)
    with pytest.raises(ValueError, match="annotators"):
        metric.collate([np.ones((3, 4, 4), np.int32)])
    with pytest.raises(ValueError, match="canvases"):
        metric.collate([np.ones((1, 4, 4), np.int32), np.ones((1, 40, 40), np.int32)])


def test_canvas_shape_shares_both_orientations():
    assert canvas_shape(481, 321, 32) == canvas_shape(321, 481, 32) == (512, 512)
    assert canvas_shape(32, 8, 32) == (32, 32)


# --- traced pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(20, 28), (28, 20), (7, 5), (32, 32)])
def test_upsample_to_canvas_is_api_upsample_inside_and_padding_outside(size):
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 50, (2, 8, 6)), jnp.int32)
    drawn = jax.jit(upsample_to_canvas, static_argnames="canvas")(
        labels, jnp.asarray(size), canvas=(32, 32)
    )
    h, w = size
    np.testing.assert_array_equal(drawn[:, :h, :w], upsample_labels(labels, size))
    assert (drawn[:, h:] == -1).all() and (drawn[:, :, w:] == -1).all()


# --- make_step / Step / fetch validation (nothing compiled) ----------------------------------


def test_make_step_rejects_bad_settings(model):
    with pytest.raises(ValueError, match="dtype"):
        make_step(model, 32, CONFIG, dtype="float16", features="tokens")
    with pytest.raises(ValueError, match="features"):
        make_step(model, 32, CONFIG, features="values")
    with pytest.raises(ValueError, match="need block 9, but the backbone has 2 blocks"):
        make_step(model, 32, CONFIG)  # the default features on a 2-block model
    with pytest.raises(ValueError, match="fewer than n_parts"):
        make_step(model, 8, CONFIG, features="tokens")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        make_step(model, 30, CONFIG, features="tokens")


def test_step_checks_its_inputs_on_the_host(model):
    step = make_step(model, 32, CONFIG, features="tokens")
    assert step.image_size == (32, 32) and step.batch_multiple == 1
    good = preprocess(_images(1), 32, TINY_VIT)
    with pytest.raises(ValueError, match=r"\[B > 0, 32, 32, 3\]"):
        step.dispatch(preprocess(_images(1), 28, TINY_VIT))
    with pytest.raises(ValueError, match="float32"):
        step.dispatch(good.astype(np.float64))
    with pytest.raises(ValueError, match="no metric"):
        step.dispatch(good, targets=np.zeros((1, 1, 4, 4), np.int32))
    metric_step = make_step(model, 32, CONFIG, metric=bsds_metric(8, 2), features="tokens")
    with pytest.raises(ValueError, match="has a metric"):
        metric_step.dispatch(good)
    with pytest.raises(ValueError, match="rows for 1 images"):
        metric_step.dispatch(good, targets=(np.zeros((2, 2, 4, 4)), np.zeros((2, 2))))


def test_fetch_unpads_and_names_non_finite_images():
    m, n = 5, 4
    tree = Tree(
        labels=jnp.zeros((3, 2, n), jnp.int32),
        parent=jnp.full((3, m), -1, jnp.int32),
        depth=jnp.zeros((3, m), jnp.int32),
        is_leaf=jnp.zeros((3, m), bool),
        valid=jnp.zeros((3, m), bool),
        parts=jnp.zeros((3, n), jnp.int32),
        grid=(2, 2),
    )
    out = StepOutput(tree, jnp.zeros((3, 2, 2, 8)), jnp.asarray([True, True, False]))
    host = fetch(out, 2, with_features=False)
    assert host.tree.labels.shape == (2, 2, n) and isinstance(host.tree.labels, np.ndarray)
    assert host.features is None and host.tree.grid == (2, 2)
    with pytest.raises(ValueError, match=r"NaN or inf features for images \['c'\]"):
        fetch(out, 3, ["a", "b", "c"])
