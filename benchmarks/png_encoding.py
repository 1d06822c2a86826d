"""Seconds to encode the pictures `hiseg segment` writes, `pictures.encode_png` against
Pillow's PNG encoder at its fastest level (compress_level=1), side by side in one process.

The pictures are the level pictures of the first `--images` BSDS500 val images with a tree
of `--regions` x `--regions` rectangular regions (`pictures.render_level`: the image
half-tinted by region colours, white borders). Each encoder runs `--repeats` times over all
of them, alternating, and the median total is kept; both outputs decode (Pillow) to the
same pixels, which the script checks.

    .venv/bin/python benchmarks/png_encoding.py [--images 8] [--regions 6] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from bsds_data import load_images, split_ids  # benchmarks/ is on sys.path when run as a script
from PIL import Image

from hiseg_jax.pictures import encode_png, render_level


def pillow_png(picture: np.ndarray) -> bytes:
    """Pillow's PNG bytes at zlib level 1 (its own per-row choice of filter)."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--regions", type=int, default=6, help="regions per side")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    images = load_images("val", split_ids("val", args.images))
    pictures = []
    for image in images:
        h, w = image.shape[:2]
        rows = np.arange(h)[:, None] * args.regions // h
        cols = np.arange(w)[None, :] * args.regions // w
        pictures.append(render_level(image, rows * args.regions + cols))
    encoders = {"pictures.encode_png": encode_png, "Pillow, compress_level=1": pillow_png}
    seconds = {name: [] for name in encoders}
    for _ in range(args.repeats):
        for name, encode in encoders.items():
            start = time.perf_counter()
            for picture in pictures:
                encode(picture)
            seconds[name].append(time.perf_counter() - start)
    for picture in pictures:
        decoded = [np.asarray(Image.open(io.BytesIO(f(picture)))) for f in encoders.values()]
        if not all(np.array_equal(d, picture) for d in decoded):
            raise SystemExit("an encoder's PNG does not decode to the picture")
    print(f"{len(pictures)} level pictures of BSDS500 val images, median of {args.repeats} runs")
    print("| encoder | ms per picture | KB per picture |")
    print("|---|---|---|")
    for name, encode in encoders.items():
        ms = 1000 * float(np.median(seconds[name])) / len(pictures)
        kb = np.mean([len(encode(p)) for p in pictures]) / 1000
        print(f"| {name} | {ms:.1f} | {kb:.0f} |")
    ratio = np.median(seconds["Pillow, compress_level=1"]) / np.median(
        seconds["pictures.encode_png"]
    )
    print(f"encode_png is {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
