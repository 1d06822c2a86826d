"""`hiseg segment`: images and folders in, one folder of files per image out.

    hiseg segment [IMAGES_OR_FOLDERS ...] [--out DIR] [--backbone NAME_OR_PATH] [--size S]
                  [--batch-size B] [--features tokens|keys|SPEC] [--seed N]
                  [--refine guided|crf|none | --crf] [--no-viewer]
                  [--levels L --n-parts P --stage-b-solver S ... (every PartitionConfig field)]

With no images it segments the default sample images (`images.SAMPLE_NAMES`). Folders are
searched recursively for image files. Each image gets `DIR/<name>/` with the files listed in
`hiseg_jax.export`; `<name>` is the image's path inside the folder given (or the file's
name) without its extension. `DIR` is checked (created, written) before any model is loaded.
Images are decoded in the engine's prefetch thread while the device runs (`engine.stream`).
The leaves are refined at each image's own size by the guided filter (`--refine`, default
`guided`; `crf.refine`), or the dense CRF (`--crf`), or not (`--refine none`).

Each image folder is written in a temporary folder and renamed into place when complete,
so after a kill an image folder is either complete or absent. An image whose folder already
holds a completion marker for the same source file and settings is skipped, so an
interrupted run resumes; one finished with other settings (the batch size and the devices
included: `engine.stream.engine_settings`) is recomputed, with a line naming the settings
that differ. Runs sharing `DIR` take a lock per image: an image that another
live run is segmenting is skipped (not waited for), with a line saying so. A file that
cannot be read is reported and skipped; the run goes on.

IMAGES_OR_FOLDERS and DIR may be local, `gs://` or `s3://` (`files.as_path`). With
`--coordinator-address --num-processes --process-id` (or `--distributed auto`) the command
is one of N processes: each segments its share of the images sorted by name
(`engine.sharding.process_share`) on its own devices, and process 0 prints the summary of
all of them (README: many hosts).

Each image's folder gets an interactive page (`viewer.html`), and `DIR/index.html` links
every finished image in DIR (rewritten at the end of every run, resumed ones included);
`--no-viewer` writes neither.

Exit status: 0; 1 when files could not be read; 2 for bad input (no images found, bad
settings, an output folder that cannot be written, an unusable checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from hiseg_jax import export, locks, viewer
from hiseg_jax.api import ImageSegmentation, segment_stream
from hiseg_jax.commands.options import (
    add_partition_arguments,
    add_process_arguments,
    add_refine_arguments,
    add_run_arguments,
    features_of,
    partition_config,
    start_processes,
)
from hiseg_jax.crf.refine import (
    DEFAULT_REFINEMENT,
    Refinement,
    refinement_method,
    refinement_of,
    refinement_settings,
)
from hiseg_jax.engine.batches import Failure, Item
from hiseg_jax.engine.sharding import gather, local_mesh, process_share
from hiseg_jax.engine.stream import engine_settings
from hiseg_jax.files import AnyPath, absolute, as_path, check_output_dir
from hiseg_jax.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    iter_images,
    load_image,
    sample_images,
)
from hiseg_jax.models.vit import ViT
from hiseg_jax.settings import differences_text
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.weights.checkpoint import load_backbone

HELP = "segment images (default: the bundled sample images) into trees, label maps, pictures"
REFINE = refinement_method(DEFAULT_REFINEMENT)  # without --refine: "guided"
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
        metavar="IMAGES_OR_FOLDERS",
        help="image files and folders (recursive; local, gs:// or s3://); none: the sample images",
    )
    parser.add_argument(
        "--out",
        default="out",
        help="output folder, one sub-folder per image; local, gs:// or s3:// "
        "(default: %(default)s)",
    )
    add_run_arguments(parser)
    add_refine_arguments(parser, REFINE)
    parser.add_argument(
        "--no-viewer",
        action="store_true",
        help="write no interactive viewer page per image and no index.html",
    )
    add_process_arguments(parser)
    add_partition_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Segment this process's share of the jobs not already done, then print a summary of
    every process's (module docstring: status)."""
    try:
        start_processes(args)
        args.out = as_path(args.out)
        config = partition_config(args)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        jobs = find_jobs(args.images)
        if jobs:
            check_output_dir(args.out, "--out folder")
    except ValueError as err:
        print(f"hiseg segment: error: {err}", file=sys.stderr)
        return 2
    if not jobs:
        where = ", ".join(str(p) for p in args.images)
        print(
            f"hiseg segment: warning: no images found in {where} (looked for "
            f"{' '.join(sorted(IMAGE_EXTENSIONS))}); nothing segmented",
            file=sys.stderr,
        )
        return 2
    settings = run_settings(args, config)
    mine = process_share(sorted(jobs, key=lambda job: job.name))
    todo, other = [], []
    for job in mine:
        done = export.done_settings(args.out / job.name, job.source)
        if done == settings:
            locks.clear_stale(export.image_lock_path(args.out / job.name))  # a killed run's
            continue
        todo.append(job)
        if done is not None:
            other.append(differences_text(done, settings))
    if other:
        print(
            f"hiseg segment: recomputing {len(other)} finished images made with other "
            f"settings ({other[0]})",
            file=sys.stderr,
        )
    outcome = Outcome(skipped=len(mine) - len(todo))
    if todo:
        try:
            model = load_backbone(args.backbone)
            _segment_jobs(todo, model, config, settings, args, outcome)
        except ValueError as err:  # a bad checkpoint; settings that fit no image
            print(f"hiseg segment: error: {err}", file=sys.stderr)
            outcome.error = True
    for failure in outcome.failures:
        print(f"  failed: {failure}")
    total = gather(outcome.counts()).sum(axis=0)  # every process's, in every process
    if jax.process_index() == 0:
        if not args.no_viewer and args.out.is_dir():
            viewer.write_gallery(args.out, export.finished_folders(args.out))
        print(_summary(total, args.out))
    return 2 if total[-1] else 1 if total[2] else 0


def _summary(counts: np.ndarray, out: AnyPath) -> str:
    """The run's line from the summed `Outcome.counts` of every process."""
    written, skipped, failed, busy, _ = (int(c) for c in counts)
    processes = jax.process_count()
    on = f" by {processes} processes" if processes > 1 else ""
    others = f", {busy} left to another run" if busy else ""
    return (
        f"hiseg segment: {written} segmented{on}, {skipped} skipped (already done), "
        f"{failed} failed{others} -> {out}"
    )


@dataclasses.dataclass
class Outcome:
    """What became of the jobs a run took on (names, or failure messages)."""

    skipped: int = 0  # already done before the run
    written: list[str] = dataclasses.field(default_factory=list)
    done: list[str] = dataclasses.field(default_factory=list)  # finished by another run
    busy: list[str] = dataclasses.field(default_factory=list)  # locked by another live run
    failures: list[str] = dataclasses.field(default_factory=list)
    error: bool = False  # the run stopped on bad settings or a bad checkpoint

    def counts(self) -> np.ndarray:
        """int64 [5]: written, skipped (done before or meanwhile), failed, busy, error."""
        return np.array(
            [
                len(self.written),
                self.skipped + len(self.done),
                len(self.failures),
                len(self.busy),
                int(self.error),
            ]
        )


class Skip(NamedTuple):
    """The payload of a `Failure` that reports a job not taken: `reason` "busy" (another
    live run holds its lock) or "done" (another run finished it meanwhile)."""

    reason: Literal["busy", "done"]


def _segment_jobs(
    todo: list[Job],
    model: ViT,
    config: PartitionConfig,
    settings: dict[str, Any],
    args: argparse.Namespace,
    outcome: Outcome,
) -> None:
    """Lock, load (both in the engine's prefetch thread), segment (in batches) and write
    every job, recording each in `outcome`.

    An image locked by another run is skipped; one that another run finished meanwhile
    counts as done. ValueError (not ImageLoadError) means the settings fit no image; it
    ends the run. A lock is released when its image is written, or when the run stops.
    """
    held: dict[str, locks.Lock] = {}  # filled by the prefetch thread, emptied here
    desc = "hiseg segment"
    if jax.process_count() > 1:
        desc += f" [process {jax.process_index()}/{jax.process_count()}]"
    with tqdm(total=len(todo), unit="image", desc=desc) as bar:
        results = segment_stream(
            _items(todo, args.out, settings, held),
            model,
            args.size,
            batch_size=args.batch_size,
            features=features_of(args),
            key=jax.random.key(args.seed),
            config=config,
            refine=refine_config(args),
            notify=bar.set_postfix_str,
            mesh=local_mesh(),
        )
        try:
            for result in results:
                name = result.item.name if isinstance(result, ImageSegmentation) else result.name
                if isinstance(result, ImageSegmentation):
                    _write(result, settings, args)
                    outcome.written.append(name)
                    for note in result.notes:
                        bar.write(f"hiseg segment: {name}: {note}")
                elif isinstance(result.payload, Skip) and result.payload.reason == "done":
                    outcome.done.append(name)
                elif isinstance(result.payload, Skip):
                    outcome.busy.append(name)
                    bar.write(f"hiseg segment: skipping {name}: {result.error}")
                else:
                    outcome.failures.append(result.error)
                    bar.write(f"hiseg segment: skipping {result.error}")
                if name in held:
                    held.pop(name).release()
                bar.update()
        finally:
            results.close()  # stops the prefetch thread: no lock is taken after this
            for lock in held.values():
                lock.release()


def _items(
    todo: list[Job], out: AnyPath, settings: dict[str, Any], held: dict[str, locks.Lock]
) -> Iterator[Item | Failure]:
    """Lock and load each job (the engine runs this in its prefetch thread): an `Item`, or
    a `Failure` for a job another run holds or finished (payload `Skip`) or whose file
    cannot be read. A lock taken is put in `held` under the job's name."""
    for job in todo:
        lock_path = export.image_lock_path(out / job.name)
        lock = locks.try_lock(lock_path)
        if lock is None:
            pid = locks.holder(lock_path)
            who = "another hiseg segment run" + (f" (pid {pid})" if pid else "")
            yield Failure(job.name, f"{who} is segmenting it", Skip("busy"))
            continue
        held[job.name] = lock
        if export.is_done(out / job.name, job.source, settings):
            yield Failure(job.name, "finished by another run", Skip("done"))
            continue
        try:
            yield Item(job.name, job.load(), payload=job)
        except ImageLoadError as err:
            yield Failure(job.name, str(err), job)


def _write(result: ImageSegmentation, settings: dict[str, Any], args: argparse.Namespace) -> None:
    """Write one image's folder (`export.image_folder`: a temporary folder renamed into
    place, marker last), with its viewer page unless --no-viewer."""
    job = result.item.payload
    rows = {name: np.asarray(getattr(result.tree, name))[0] for name in _TREE_ROWS}
    with export.image_folder(args.out / job.name, job.source, settings) as folder:
        export.write_image_outputs(
            folder,
            result.item.image,
            result.level_labels,
            result.patch_levels,
            rows,
            result.leaf_descriptors,
            {"image": job.name, "source": job.source, "settings": settings},
            with_viewer=not args.no_viewer,
        )


def refine_config(args: argparse.Namespace) -> Refinement | None:
    """The refinement --refine / --crf ask for (the guided filter without either)."""
    return refinement_of(args.refine or REFINE)


def run_settings(args: argparse.Namespace, config: PartitionConfig) -> dict[str, Any]:
    """Everything that changes the result, JSON-normalised (compared with the marker's)."""
    settings = {
        "backbone": str(args.backbone),
        "size": args.size,
        "features": features_of(args),
        "seed": args.seed,
        "partition": dataclasses.asdict(config),
        "refine": refinement_settings(refine_config(args)),
        "engine": engine_settings(args.batch_size),
    }
    return json.loads(json.dumps(settings))


def find_jobs(paths: Sequence[str | os.PathLike[str]]) -> list[Job]:
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
        Job(name, absolute(file), lambda file=file: load_image(file))
        for name, (file, _) in zip(names, found, strict=True)
    ]


def output_names(files: list[tuple[AnyPath, AnyPath]]) -> list[str]:
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
