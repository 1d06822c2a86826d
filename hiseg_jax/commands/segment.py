"""`hiseg segment`: images and folders in, one folder of files per image out.

    hiseg segment [IMAGES_OR_FOLDERS ...] [--out DIR] [--backbone NAME_OR_PATH] [--size S]
                  [--batch-size B] [--features tokens|keys] [--seed N] [--solver eigh|lanczos]
                  [--crf]
                  [--levels L --n-parts P --max-kways K ... (every PartitionConfig field)]

With no images it segments the default sample images (`images.SAMPLE_NAMES`). Folders are
searched recursively for image files. Each image gets `DIR/<name>/` with the files listed in
`hiseg_jax.export`; `<name>` is the image's path inside the folder given (or the file's
name) without its extension. `DIR` is checked (created, written) before any model is loaded.

Each image folder is written in a temporary folder and renamed into place when complete,
so after a kill an image folder is either complete or absent. An image whose folder already
holds a completion marker for the same source file and settings is skipped, so an
interrupted run resumes. Runs sharing `DIR` take a lock per image: an image that another
live run is segmenting is skipped (not waited for), with a line saying so. A file that
cannot be read is reported and skipped; the run goes on.

Exit status: 0; 1 when files could not be read; 2 for bad input (no images found, bad
settings, an output folder that cannot be written, an unusable checkpoint).
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

from hiseg_jax import export, locks
from hiseg_jax.api import DEFAULT_BATCH_SIZE, DEFAULT_SIZE, patch_level_labels, segment
from hiseg_jax.atomic import check_output_dir
from hiseg_jax.commands.options import add_partition_arguments, parse_size, partition_config
from hiseg_jax.config import PartitionConfig
from hiseg_jax.crf import CRFConfig
from hiseg_jax.features import DEFAULT_BACKBONE, FEATURE_KINDS, image_size
from hiseg_jax.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    iter_images,
    load_image,
    sample_images,
)
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
    add_partition_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Segment every job not already done, then print a summary (module docstring: status)."""
    try:
        config = partition_config(args)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        jobs = _jobs(args.images)
        if jobs:
            check_output_dir(args.out, "--out folder")
    except ValueError as err:
        print(f"hiseg segment: error: {err}", file=sys.stderr)
        return 2
    if not jobs:
        where = ", ".join(str(p) for p in args.images)
        print(f"hiseg segment: warning: no images found in {where} (looked for "
              f"{' '.join(sorted(IMAGE_EXTENSIONS))}); nothing segmented", file=sys.stderr)
        return 2
    settings = _settings(args, config)
    todo = []
    for job in jobs:
        if export.is_done(args.out / job.name, job.source, settings):
            locks.clear_stale(export.image_lock_path(args.out / job.name))  # a killed run's
        else:
            todo.append(job)
    outcome = Outcome()
    if todo:
        try:
            model = load_backbone(args.backbone)
            _segment_jobs(todo, model, config, settings, args, outcome)
        except ValueError as err:  # a bad checkpoint; settings that fit no image
            print(f"hiseg segment: error: {err}", file=sys.stderr)
            return 2
    busy = f", {len(outcome.busy)} left to another run" if outcome.busy else ""
    print(
        f"hiseg segment: {len(outcome.written)} segmented, "
        f"{len(jobs) - len(todo) + len(outcome.done)} skipped (already done), "
        f"{len(outcome.failures)} failed{busy} -> {args.out}"
    )
    for failure in outcome.failures:
        print(f"  failed: {failure}")
    return 1 if outcome.failures else 0


@dataclasses.dataclass
class Outcome:
    """What became of the jobs a run took on (names, or failure messages)."""

    written: list[str] = dataclasses.field(default_factory=list)
    done: list[str] = dataclasses.field(default_factory=list)  # finished by another run
    busy: list[str] = dataclasses.field(default_factory=list)  # locked by another live run
    failures: list[str] = dataclasses.field(default_factory=list)


def _segment_jobs(
    todo: list[Job],
    model: ViT,
    config: PartitionConfig,
    settings: dict[str, Any],
    args: argparse.Namespace,
    outcome: Outcome,
) -> None:
    """Lock, load, segment (in batches) and write every job, recording each in `outcome`.

    An image locked by another run is skipped; one that another run finished meanwhile
    counts as done. ValueError (not ImageLoadError) means the settings fit no image; it
    ends the run. Locks are released when their image is written or the run stops.
    """
    image_size(args.size, model.config.patch_size)
    batch = min(args.batch_size, len(todo))
    pending: list[tuple[Job, np.ndarray, locks.Lock]] = []
    with tqdm(total=len(todo), unit="image", desc="hiseg segment") as bar:
        try:
            for index, job in enumerate(todo):
                taken = _take(job, args.out, settings, outcome, bar)
                if taken is not None:
                    pending.append(taken)
                if pending and (len(pending) == batch or index == len(todo) - 1):
                    _segment_batch(pending, model, config, settings, args, batch)
                    outcome.written += [job.name for job, _, _ in pending]
                    bar.update(len(pending))
                    pending = []
        finally:
            for _, _, lock in pending:
                lock.release()


def _take(
    job: Job, out: Path, settings: dict[str, Any], outcome: Outcome, bar: tqdm
) -> tuple[Job, np.ndarray, locks.Lock] | None:
    """Lock and load one job; None (recorded in `outcome`, bar advanced) when another run
    holds it or finished it, or its file cannot be read."""
    lock_path = export.image_lock_path(out / job.name)
    lock = locks.try_lock(lock_path)
    if lock is None:
        pid = locks.holder(lock_path)
        who = "another hiseg segment run" + (f" (pid {pid})" if pid else "")
        bar.write(f"hiseg segment: skipping {job.name}: {who} is segmenting it")
        outcome.busy.append(job.name)
    elif export.is_done(out / job.name, job.source, settings):
        outcome.done.append(job.name)
    else:
        try:
            return job, job.load(), lock
        except ImageLoadError as err:
            outcome.failures.append(str(err))
            bar.write(f"hiseg segment: skipping {err}")
    if lock is not None:
        lock.release()
    bar.update()
    return None


def _segment_batch(
    pending: list[tuple[Job, np.ndarray, locks.Lock]],
    model: ViT,
    config: PartitionConfig,
    settings: dict[str, Any],
    args: argparse.Namespace,
    batch: int,
) -> None:
    """Segment one batch of loaded images and write each image's folder (export.image_folder:
    a temporary folder renamed into place, marker last), releasing its lock once it is."""
    images = [image for _, image, _ in pending]
    result = segment(
        images, model, args.size, batch_size=batch, features=args.features,
        key=jax.random.key(args.seed), solver=args.solver, config=config,
        crf=CRFConfig() if args.crf else None,
    )
    patch_levels = np.asarray(patch_level_labels(result.tree))
    rows = {name: np.asarray(getattr(result.tree, name)) for name in _TREE_ROWS}
    for b, (job, image, lock) in enumerate(pending):
        with export.image_folder(args.out / job.name, job.source, settings) as folder:
            export.write_image_outputs(
                folder, image, result.level_labels[b], patch_levels[b],
                {name: row[b] for name, row in rows.items()}, result.leaf_descriptors[b],
                {"image": job.name, "source": job.source, "settings": settings},
            )
        lock.release()


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
