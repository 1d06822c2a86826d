"""End-to-end seconds per image of `hiseg segment` with its default settings, per stage.

BSDS500 val images (481 x 321 JPEGs, the first `--images` by name) go through exactly what
`hiseg segment` runs: decode (`images.load_image`), resize + normalise
(`features.preprocess`), the backbone, the partitioner and the leaf descriptors (the
engine's three compiled programs, `engine.step.Programs`, batch `--batch-size` as the
command uses), the copy to the host, the refinement of the leaves at each image's own size
(`crf.refine`; nearest upsampling for `none`) and the outputs (`export.write_image_outputs`
in a staged folder with its marker: tree.json, labels.npz, the pictures, viewer.html).

For each refinement named by `--refine` (default: the default, then `none` as the baseline
in the same process) the script
1. runs `hiseg segment` on the images once (compiles every program: the step and the
   refinement for each image shape and leaf-count bucket) and times a second, identical
   run into a fresh folder: the wall seconds per image a user sees, decoding overlapped
   with the device by the engine's prefetch thread (checkpoint load and gallery included);
2. times every stage one after the other on the same images (nothing overlapped), wall
   and CPU seconds of this process per image, compile excluded (all compiled in 1).
Load averages before and after are printed: on a shared machine every figure is stretched.

    .venv/bin/python benchmarks/end_to_end.py [--images 16] [--size 448] [--batch-size 4]
        [--refine guided none] [--no-viewer]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from bsds_data import SHARED, split_ids  # benchmarks/ is on sys.path when run as a script

from hiseg_jax import export
from hiseg_jax.cli import main as hiseg
from hiseg_jax.crf.refine import (
    DEFAULT_REFINEMENT,
    METHODS,
    refine_level_labels,
    refinement_method,
    refinement_of,
    refinement_settings,
)
from hiseg_jax.engine.step import Step, StepOutput, fetch, make_step
from hiseg_jax.engine.stream import DEFAULT_BATCH_SIZE
from hiseg_jax.features import DEFAULT_SIZE, preprocess
from hiseg_jax.images import load_image
from hiseg_jax.paths import DEFAULT_BACKBONE
from hiseg_jax.tree import patch_level_labels, upsample_labels
from hiseg_jax.weights.checkpoint import load_backbone

STAGES = ("decode", "resize", "backbone", "partition", "descriptors + to host", "refine", "outputs")
TREE_ROWS = ("parent", "depth", "valid", "is_leaf", "parts")


class Clock:
    """Wall and CPU seconds of this process accumulated per stage."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(STAGES, 0.0)
        self.cpu = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name] += time.perf_counter() - wall
        self.cpu[name] += time.process_time() - cpu


def cli_seconds(paths: list[Path], out: Path, args: argparse.Namespace, method: str) -> float:
    """Wall seconds of one `hiseg segment` run of `paths` into `out` (a fresh folder)."""
    argv = ["segment", *map(str, paths), "--out", str(out), "--refine", method]
    argv += ["--size", str(args.size), "--batch-size", str(args.batch_size)]
    argv += ["--no-viewer"] if args.no_viewer else []
    start = time.perf_counter()
    code = hiseg(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"hiseg segment exited with {code}")
    return seconds


def staged(
    paths: list[Path], step: Step, batch_size: int, out: Path, method: str, viewer: bool
) -> Clock:
    """Every stage of the pipeline timed on its own (blocking after each), in batches of
    `batch_size` padded with copies of their last image as the engine pads them."""
    clock, refine = Clock(), refinement_of(method)
    settings = {"refine": refinement_settings(refine)}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        with clock.stage("decode"):
            pictures = [load_image(path) for path in chunk]
        with clock.stage("resize"):
            padded = pictures + pictures[-1:] * (batch_size - len(pictures))
            params, x, key = step.arguments(preprocess(padded, step.image_size, step.vit))
        with clock.stage("backbone"):
            features, finite, plain = jax.block_until_ready(step.programs.backbone(params, x))
        with clock.stage("partition"):
            tree = jax.block_until_ready(step.programs.partition(features, finite, plain, key))
        with clock.stage("descriptors + to host"):
            descriptors, _, _ = step.programs.finish(features, tree)
            device = StepOutput(tree, features, finite, descriptors=descriptors, plain=plain)
            host = fetch(device, len(chunk))
            patch_levels = np.asarray(patch_level_labels(host.tree))
        for b, (path, picture) in enumerate(zip(chunk, pictures, strict=True)):
            with clock.stage("refine"):
                if refine is None:
                    levels = np.asarray(upsample_labels(patch_levels[b], picture.shape[:2]))
                else:
                    levels = refine_level_labels(picture, host.features[b], patch_levels[b], refine)
            with clock.stage("outputs"):
                rows = {name: np.asarray(getattr(host.tree, name))[b] for name in TREE_ROWS}
                info = {"image": path.stem, "source": str(path), "settings": settings}
                with export.image_folder(out / path.stem, str(path), settings) as folder:
                    export.write_image_outputs(
                        folder,
                        picture,
                        levels,
                        patch_levels[b],
                        rows,
                        host.descriptors[b],
                        info,
                        with_viewer=viewer,
                    )
    return clock


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="BSDS500 val images (first N)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="backbone input size")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--refine",
        nargs="+",
        choices=METHODS,
        default=[refinement_method(DEFAULT_REFINEMENT), "none"],
        help="refinements to time side by side (default: %(default)s)",
    )
    parser.add_argument("--no-viewer", action="store_true", help="as hiseg segment --no-viewer")
    args = parser.parse_args()
    folder = SHARED / "bsds500" / "images" / "val"
    paths = [folder / f"{i}.jpg" for i in split_ids("val", args.images)]
    device = jax.devices()[0]
    print(
        f"{len(paths)} BSDS500 val images, {args.size} px, batch {args.batch_size}, "
        f"{DEFAULT_BACKBONE}, default partition, device {device.device_kind}, "
        f"{os.cpu_count()} CPUs; load average before: {load()}"
    )
    step = make_step(load_backbone(DEFAULT_BACKBONE), args.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="end_to_end_") as tmp:
        for method in args.refine:
            root = Path(tmp) / method
            cli_seconds(paths, root / "warm-up", args, method)  # compiles everything
            wall = cli_seconds(paths, root / "timed", args, method)
            viewer = not args.no_viewer
            staged(paths[: args.batch_size], step, args.batch_size, root / "warm", method, viewer)
            clock = staged(paths, step, args.batch_size, root / "staged", method, viewer)
            rows.append((method, wall / len(paths), clock))
    print(f"\nload average after: {load()}")
    print("\nseconds per image (wall / CPU of this process), compile excluded:\n")
    header = " | ".join(["refine", "hiseg segment (wall)", *STAGES, "sum of stages"])
    print(f"| {header} |\n|{'---|' * (len(STAGES) + 3)}")
    for method, streamed, clock in rows:
        count = len(paths)
        cells = [f"{clock.wall[s] / count:.3f} / {clock.cpu[s] / count:.3f}" for s in STAGES]
        wall, cpu = sum(clock.wall.values()) / count, sum(clock.cpu.values()) / count
        cells.append(f"{wall:.2f} / {cpu:.2f}")
        print(f"| {method} | **{streamed:.2f}** | {' | '.join(cells)} |")
    if len(rows) > 1:
        base = rows[-1][1]
        for method, streamed, _ in rows[:-1]:
            print(f"\n{method}: {streamed / base:.2f}x the time of {rows[-1][0]} end to end")


if __name__ == "__main__":
    main()
