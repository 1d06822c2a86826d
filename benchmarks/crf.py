"""Dense CRF per image, side by side in one process: hiseg_jax.crf.dense_crf vs pydensecrf2.

Images (scikit-image samples, resized to S x S, default 840) get unaries as in the tree
refinement: a SLIC over-segmentation into about K regions plays the leaves, read at the
centre of each 14-pixel patch, with noisy one-hot patch features turned into logits by
`leaf_unaries`. Each CRF then runs the paper's settings (10 iterations; sxy 1 / compat 3;
sxy 67 / srgb 3 / compat 4). Reported per image, best of R runs: wall and process-CPU
seconds (XLA uses every core, pydensecrf one), the JAX first call (compilation included) and the
share of pixels where the two argmax labels agree. JAX variants: `lattice` (spatial kernel
on the permutohedral lattice, pydensecrf's arithmetic) and `exact` (spatial kernel as an
exact separable Gaussian).

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/crf.py [--size 840] [--leaves 32]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable

import jax
import numpy as np
from PIL import Image
from skimage import data, segmentation

from hiseg_jax.crf.dense_crf import CRFConfig, dense_crf, leaf_unaries
from hiseg_jax.crf.reference import pydensecrf_marginals

PATCH = 14


def scene(name: str, size: int, leaves: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [S, S, 3], logits float32 [S, S, K]) for a scikit-image sample."""
    image = np.asarray(Image.fromarray(getattr(data, name)()).resize((size, size), Image.BILINEAR))
    regions = segmentation.slic(image, n_segments=leaves, compactness=20, start_label=0)
    grid = regions[PATCH // 2 :: PATCH, PATCH // 2 :: PATCH]
    grid = np.unique(grid, return_inverse=True)[1].reshape(grid.shape) % leaves
    rng = np.random.default_rng(seed)
    feats = np.eye(leaves)[grid] + rng.normal(0, 0.35, (*grid.shape, leaves))
    feats = np.concatenate([feats, rng.normal(0, 0.3, (*grid.shape, 32))], -1)
    return image, np.asarray(leaf_unaries(feats.astype(np.float32), grid, leaves, (size, size)))


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float, float]:
    """(result, best wall s, best process-CPU s) over `repeats` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = np.asarray(jax.block_until_ready(fn()))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return out, min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=840)
    parser.add_argument("--leaves", type=int, default=32)
    parser.add_argument("--images", nargs="+", default=["astronaut", "coffee"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, {args.size}x{args.size}, K = {args.leaves}")
    variants = {"lattice": CRFConfig(), "exact": CRFConfig(spatial="exact")}
    rows = []
    for name in args.images:
        image, logits = scene(name, args.size, args.leaves)
        run_ref = functools.partial(pydensecrf_marginals, logits, image, CRFConfig())
        ref, ref_wall, ref_cpu = timed(run_ref, args.repeats)
        rows.append({"image": name, "impl": "pydensecrf2", "wall_s": ref_wall, "cpu_s": ref_cpu})
        for label, config in variants.items():
            start = time.perf_counter()
            dense_crf(logits, image, config=config).block_until_ready()
            first_call = time.perf_counter() - start
            q, wall, cpu = timed(
                functools.partial(dense_crf, logits, image, config=config), args.repeats
            )
            rows.append(
                {
                    "image": name,
                    "impl": f"jax/{label}",
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "first_call_s": first_call,
                    "argmax_agreement": float(np.mean(q.argmax(-1) == ref.argmax(-1))),
                    "max_abs_dq": float(np.abs(q - ref).max()),
                }
            )
        for row in rows[-3:]:
            rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
            print(json.dumps(rounded))


if __name__ == "__main__":
    main()
