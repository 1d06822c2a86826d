"""`hiseg segment`: images and folders in, one folder of files per image out.

    hiseg segment [IMAGES_OR_FOLDERS ...] [--out DIR] [--backbone NAME_OR_PATH] [--size S]
                  [--batch-size B] [--features tokens|keys] [--seed N] [--crf | --guided]
                  [--levels L --n-parts P --stage-b-solver S ... (every PartitionConfig field)]

With no images it segments the default sample images (`images.SAMPLE_NAMES`). Folders are
searched recursively for image files. Each image gets `DIR/<name>/` with the files listed in
`hiseg_jax.export`; `<name>` is the image's path inside the folder given (or the file's
name) without its extension. An image whose folder already holds a completion marker for
the same source file and settings is skipped, so an interrupted run resumes. A file that
cannot be read is reported and skipped; the run goes on and exits with status 1 at the end.
Images are decoded in the engine's prefetch thread while the device runs (`engine.stream`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from hiseg_jax import export
from hiseg_jax.api import ImageSegmentation, segment_stream
from hiseg_jax.commands.options import (
    add_partition_arguments,
    add_run_arguments,
    partition_config,
)
from hiseg_jax.crf.dense_crf import CRFConfig
from hiseg_jax.crf.guided import GuidedConfig
from hiseg_jax.engine.batches import Failure, Item
from hiseg_jax.images import ImageLoadError, iter_images, load_image, sample_images
from hiseg_jax.models.vit import ViT
from hiseg_jax.spectral.config import PartitionConfig
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
    parser.add_argument(
        "images",
        nargs="*",
        type=Path,
        metavar="IMAGES_OR_FOLDERS",
        help="image files and folders (recursive); none: the sample images",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        help="output folder, one sub-folder per image (default: %(default)s)",
    )
    add_run_arguments(parser)
    refine = parser.add_mutually_exclusive_group()
    refine.add_argument(
        "--crf",
        action="store_true",
        help="refine the leaves with the dense CRF (crf.CRFConfig defaults; slow "
        "on a CPU: it runs at every image's full size)",
    )
    refine.add_argument(
        "--guided",
        action="store_true",
        help="refine the leaves with the guided filter (crf.GuidedConfig defaults; "
        "a fraction of the CRF's time)",
    )
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
    jobs = find_jobs(args.images)
    todo = [job for job in jobs if not export.is_done(args.out / job.name, job.source, settings)]
    failures: list[str] = []
    if todo:
        try:
            failures = _segment_jobs(todo, load_backbone(args.backbone), config, settings, args)
        except ValueError as err:  # settings that fit no image: bad size, too few patches
            print(f"hiseg segment: error: {err}", file=sys.stderr)
            return 2
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
    """Load (in the engine's prefetch thread), segment (in batches) and write every job;
    returns the failures' messages.

    ValueError (not ImageLoadError) means the settings fit no image; it ends the run.
    """
    failures: list[str] = []
    with tqdm(total=len(todo), unit="image", desc="hiseg segment") as bar:
        results = segment_stream(
            _items(todo),
            model,
            args.size,
            batch_size=args.batch_size,
            features=args.features,
            key=jax.random.key(args.seed),
            config=config,
            crf=CRFConfig() if args.crf else None,
            guided=GuidedConfig() if args.guided else None,
            notify=bar.set_postfix_str,
        )
        for result in results:
            if isinstance(result, Failure):
                failures.append(result.error)
                bar.write(f"hiseg segment: skipping {result.error}")
            else:
                _write(result, settings, args.out)
            bar.update()
    return failures


def _items(todo: list[Job]) -> Iterator[Item | Failure]:
    """The jobs' images, loaded lazily (the engine runs this in its prefetch thread)."""
    for job in todo:
        try:
            yield Item(job.name, job.load(), payload=job)
        except ImageLoadError as err:
            yield Failure(job.name, str(err), job)


def _write(result: ImageSegmentation, settings: dict[str, Any], out: Path) -> None:
    """Write one image's folder, marker last."""
    job = result.item.payload
    folder = out / job.name
    rows = {name: np.asarray(getattr(result.tree, name))[0] for name in _TREE_ROWS}
    export.clear_marker(folder)
    export.write_image_outputs(
        folder,
        result.item.image,
        result.level_labels,
        result.patch_levels,
        rows,
        result.leaf_descriptors,
        {"image": job.name, "source": job.source, "settings": settings},
    )
    export.mark_done(folder, job.source, settings)


def _settings(args: argparse.Namespace, config: PartitionConfig) -> dict[str, Any]:
    """Everything that changes the result, JSON-normalised (compared with the marker's)."""
    settings = {
        "backbone": str(args.backbone),
        "size": args.size,
        "features": args.features,
        "seed": args.seed,
        "partition": dataclasses.asdict(config),
        "crf": dataclasses.asdict(CRFConfig()) if args.crf else None,
    }
    if args.guided:  # only then, so that earlier outputs keep matching their markers
        settings["guided"] = dataclasses.asdict(GuidedConfig())
    return json.loads(json.dumps(settings))


def find_jobs(paths: list[Path]) -> list[Job]:
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
