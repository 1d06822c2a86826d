"""`hiseg segment`: images and folders in, one folder of files per image out.

    hiseg segment [IMAGES_OR_FOLDERS ...] [--out DIR] [--backbone NAME_OR_PATH] [--size S]
                  [--batch-size B] [--features tokens|keys] [--seed N] [--solver eigh|lanczos]
                  [--crf] [--no-viewer]
                  [--levels L --n-parts P --max-kways K ... (every PartitionConfig field)]

With no images it segments the default sample images (`images.SAMPLE_NAMES`). Folders are
searched recursively for image files. Each image gets `DIR/<name>/` with the files listed in
`hiseg_jax.export`; `<name>` is the image's path inside the folder given (or the file's
name) without its extension. An image whose folder already holds a completion marker for
the same source file and settings is skipped, so an interrupted run resumes. A file that
cannot be read is reported and skipped; the run goes on and exits with status 1 at the end.
Each image's folder gets an interactive page (`viewer.html`), and `DIR/index.html` links
every finished image in DIR (rewritten at the end of every run, resumed ones included);
`--no-viewer` writes neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from hiseg_jax import export, viewer
from hiseg_jax.api import DEFAULT_BATCH_SIZE, DEFAULT_SIZE, patch_level_labels, segment
from hiseg_jax.commands.options import add_partition_arguments, parse_size, partition_config
from hiseg_jax.config import PartitionConfig
from hiseg_jax.crf import CRFConfig
from hiseg_jax.features import DEFAULT_BACKBONE, FEATURE_KINDS, image_size
from hiseg_jax.images import ImageLoadError, iter_images, load_image, sample_images
from hiseg_jax.models.vit import ViT
from hiseg_jax.weights.checkpoint import load_backbone

HELP = "segment images (default: the bundled sample images) into trees, label maps, pictures"
_TREE_ROWS = ("parent", "depth", "valid", "is_leaf", "parts")


@dataclasses.dataclass(frozen=True)
class Job:
    """One image to segment: its output folder name, where it comes from, how to load it."""

    name: str
    source: str
    load: Callable[[], np.ndarray]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `hiseg segment`; one `--field-name` option per `PartitionConfig` field."""
    parser.add_argument("images", nargs="*", type=Path, metavar="IMAGES_OR_FOLDERS",
                        help="image files and folders (recursive); none: the sample images")
    parser.add_argument("--out", type=Path, default=Path("out"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE,
                        help="checkpoint name or .safetensors path (default: %(default)s)")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE,
                        help="backbone input size, S or HxW, multiples of the patch size "
                        "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per compiled batch (default: %(default)s)")
    parser.add_argument("--features", choices=FEATURE_KINDS, default="tokens",
                        help="patch tokens (the paper's) or last-block keys (default: tokens)")
    parser.add_argument("--seed", type=int, default=0, help="random key of k-means (default: 0)")
    parser.add_argument("--solver", choices=("eigh", "lanczos"), default="eigh",
                        help="stage B eigensolver (default: %(default)s)")
    parser.add_argument("--crf", action="store_true",
                        help="refine the leaves with the dense CRF (crf.CRFConfig defaults; slow "
                        "on a CPU: it runs at every image's full size)")
    parser.add_argument("--no-viewer", action="store_true",
                        help="write no interactive viewer page per image and no index.html")
    add_partition_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Segment every job not already done, then print a summary; 1 if any file failed."""
    try:
        config = partition_config(args)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    except ValueError as err:
        print(f"hiseg segment: error: {err}", file=sys.stderr)
        return 2
    settings = _settings(args, config)
    jobs = _jobs(args.images)
    todo = [job for job in jobs if not export.is_done(args.out / job.name, job.source, settings)]
    failures: list[str] = []
    if todo:
        try:
            failures = _segment_jobs(todo, load_backbone(args.backbone), config, settings, args)
        except ValueError as err:  # settings that fit no image: bad size, too few patches
            print(f"hiseg segment: error: {err}", file=sys.stderr)
            return 2
    if not args.no_viewer and args.out.is_dir():
        viewer.write_gallery(args.out, export.finished_folders(args.out))
    print(
        f"hiseg segment: {len(todo) - len(failures)} segmented, "
        f"{len(jobs) - len(todo)} skipped (already done), {len(failures)} failed -> {args.out}"
    )
    for failure in failures:
        print(f"  failed: {failure}")
    return 1 if failures else 0


def _segment_jobs(
    todo: list[Job],
    model: ViT,
    config: PartitionConfig,
    settings: dict[str, Any],
    args: argparse.Namespace,
) -> list[str]:
    """Load, segment (in batches) and write every job; returns the failures' messages.

    ValueError (not ImageLoadError) means the settings fit no image; it ends the run.
    """
    image_size(args.size, model.config.patch_size)
    batch = min(args.batch_size, len(todo))
    failures: list[str] = []
    pending: list[tuple[Job, np.ndarray]] = []
    with tqdm(total=len(todo), unit="image", desc="hiseg segment") as bar:
        for index, job in enumerate(todo):
            try:
                pending.append((job, job.load()))
            except ImageLoadError as err:
                failures.append(str(err))
                bar.write(f"hiseg segment: skipping {err}")
                bar.update()
            if pending and (len(pending) == batch or index == len(todo) - 1):
                _segment_batch(pending, model, config, settings, args, batch)
                bar.update(len(pending))
                pending = []
    return failures


def _segment_batch(
    pending: list[tuple[Job, np.ndarray]],
    model: ViT,
    config: PartitionConfig,
    settings: dict[str, Any],
    args: argparse.Namespace,
    batch: int,
) -> None:
    """Segment one batch of loaded images and write each image's folder, marker last."""
    images = [image for _, image in pending]
    result = segment(
        images, model, args.size, batch_size=batch, features=args.features,
        key=jax.random.key(args.seed), solver=args.solver, config=config,
        crf=CRFConfig() if args.crf else None,
    )
    patch_levels = np.asarray(patch_level_labels(result.tree))
    rows = {name: np.asarray(getattr(result.tree, name)) for name in _TREE_ROWS}
    for b, (job, image) in enumerate(pending):
        folder = args.out / job.name
        export.clear_marker(folder)
        export.write_image_outputs(
            folder, image, result.level_labels[b], patch_levels[b],
            {name: row[b] for name, row in rows.items()}, result.leaf_descriptors[b],
            {"image": job.name, "source": job.source, "settings": settings},
            with_viewer=not args.no_viewer,
        )
        export.mark_done(folder, job.source, settings)


def _settings(args: argparse.Namespace, config: PartitionConfig) -> dict[str, Any]:
    """Everything that changes the result, JSON-normalised (compared with the marker's)."""
    settings = {
        "backbone": str(args.backbone),
        "size": args.size,
        "features": args.features,
        "seed": args.seed,
        "solver": args.solver,
        "partition": dataclasses.asdict(config),
        "crf": dataclasses.asdict(CRFConfig()) if args.crf else None,
    }
    return json.loads(json.dumps(settings))


def _jobs(paths: list[Path]) -> list[Job]:
    """The sample images when `paths` is empty, else every image file under `paths`."""
    if not paths:
        samples = sample_images()
        return [
            Job(name, f"skimage.data.{name}", lambda image=image: image)
            for name, image in samples.items()
        ]
    found = list(iter_images(paths))
    names = output_names([(file, root) for file, root in found])
    return [
        Job(name, str(file.resolve()), lambda file=file: load_image(file))
        for name, (file, _) in zip(names, found, strict=True)
    ]


def output_names(files: list[tuple[Path, Path]]) -> list[str]:
    """A distinct output folder name per `(file, root)`: the file's path below `root`
    without extension; names that would clash keep their extension ("x_png"), and any
    clash left gets "-2", "-3", ... in input order."""
    stems = [file.relative_to(root).with_suffix("").as_posix() for file, root in files]
    counts = Counter(stems)
    names = [
        stem if counts[stem] == 1 else f"{stem}_{file.suffix.lstrip('.').lower()}"
        for stem, (file, _) in zip(stems, files, strict=True)
    ]
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique
