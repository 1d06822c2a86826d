"""The `hiseg evaluate` runner: a dataset split in, per-image results and a report out.

    settings = EvalSettings(dataset="voc2012", data_dir="data/voc", split="val")
    report = evaluate(settings, RunOptions(out="runs/voc2012-val"))  # or "gs://bucket/run"

Images are read from the dataset's prepared source (`hiseg_jax.datasets.load`) and run
through the batching engine (`engine.stream`): decoded, with their ground truth prepared,
in its prefetch thread, resized to one fixed size and segmented `batch_size` at a time in
one compiled program (every batch padded to `batch_size` with copies). The records of a
batch (one per image: its scores) are written as one new file under `results/` as soon as
the batch is scored (`result_files`); an image that cannot be decoded, or whose ground
truth does not fit the dataset's hierarchy, gets a record saying why and is skipped. At
image resolution each image's leaves are refined on the original image at its own size by
`refine` (`crf.refine`: the guided filter by default, or the dense CRF; docs/method.md
section 6) and its inner nodes follow from the refined leaves; `refine=None` scores the
nearest upsampling of the patch labels. A later run with `resume=True` scores only the
images without a record, after checking that its settings are those of `settings.json`.
The dataset totals are always rebuilt from the records (`scoring`), then reported
(`report`).

The output folder, like the dataset folder, may be local or on an object store (`gs://`,
`s3://`; `files.as_path`), through the same code: every file is written whole and
atomically (`files.write_text`, `files.atomic_path`) and nothing is ever appended to.

Several processes (`jax.distributed`, one per host) share a run: process i scores the
images i, i + N, i + 2N, ... of the split not recorded yet, on its own devices, and writes
its own batch files; every batch file in the folder is read back, so a run resumed with
another number of processes continues where the files stop. Process 0 prepares the dataset
first (the others then read what it prepared), owns `settings.json` and writes the report
once every process is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from hiseg_jax import __version__
from hiseg_jax.crf.refine import (
    DEFAULT_REFINEMENT,
    Refinement,
    refine_level_labels,
    refinement_method,
    refinement_settings,
)
from hiseg_jax.datasets import BUILDERS, load, read_example
from hiseg_jax.engine.batches import Failure, Item
from hiseg_jax.engine.sharding import barrier, gather, local_mesh, pad_batch, process_share
from hiseg_jax.engine.step import make_step
from hiseg_jax.engine.stream import DEFAULT_BATCH_SIZE, BatchResult, engine_settings, stream
from hiseg_jax.evaluation import hungarian as eval_hungarian
from hiseg_jax.evaluation import report as eval_report
from hiseg_jax.evaluation import scoring as eval_scoring
from hiseg_jax.evaluation.result_files import RESULTS, batch_files, read_records, write_batch
from hiseg_jax.features import DEFAULT_FEATURES, DEFAULT_SIZE, FeatureKind, image_size
from hiseg_jax.files import (
    AnyPath,
    absolute,
    as_path,
    atomic_path,
    check_output_dir,
    remove,
    write_text,
)
from hiseg_jax.hierarchies import Hierarchy, LabelSpace, label_space, parse_hierarchy
from hiseg_jax.images import ImageLoadError
from hiseg_jax.models.vit import get_config
from hiseg_jax.paths import DEFAULT_BACKBONE
from hiseg_jax.settings import differences_text
from hiseg_jax.spectral.config import PartitionConfig, check_grid
from hiseg_jax.weights.checkpoint import load_backbone, read_metadata, resolve_checkpoint

Resolution = Literal["patch", "image"]
Matching = Literal["max-overlap", "hungarian"]
RESOLUTIONS: tuple[str, ...] = ("image", "patch")
MATCHINGS: tuple[str, ...] = ("max-overlap", "hungarian")
OLD_LOGS = "results*.jsonl"  # the appended logs of earlier versions (refused, not read)
SETTINGS = "settings.json"
ACCUMULATOR = "accumulator.npz"
_FORMAT = "hiseg-evaluate-v1"
_PREFETCH = 2  # host batches prepared ahead of the device


class EvaluationError(ValueError):
    """The output folder cannot take this run (results of another run, other settings)."""


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything that changes an image's scores; a resumed run must use the same."""

    dataset: str
    data_dir: str  # local, gs:// or s3:// (`files.as_path`)
    split: str
    backbone: str = DEFAULT_BACKBONE
    size: int | tuple[int, int] = DEFAULT_SIZE
    resolution: Resolution = "image"
    matching: Matching = "max-overlap"
    features: FeatureKind = DEFAULT_FEATURES
    seed: int = 0
    partition: PartitionConfig = PartitionConfig()
    hierarchy: str | None = None  # a hierarchy file replacing the dataset's own
    # the leaves refined at pixel level (`crf.refine`); None: nearest upsampling
    refine: Refinement | None = DEFAULT_REFINEMENT

    def __post_init__(self) -> None:
        if self.dataset not in BUILDERS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {sorted(BUILDERS)}")
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution!r}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, got {self.matching!r}")
        method = refinement_method(self.refine)
        if method != "none" and self.resolution != "image":
            raise ValueError(
                f"the {method} refinement works at pixel level: it needs resolution 'image', "
                f"not {self.resolution!r} (or no refinement: --refine none, refine=None)"
            )
        if self.kind == "bsds" and (self.hierarchy is not None or self.matching != "max-overlap"):
            raise ValueError(
                f"{self.dataset} has no classes: --hierarchy and Hungarian matching do not apply"
            )

    @property
    def kind(self) -> Literal["regions", "bsds"]:
        """ "bsds": several human segmentations per image; "regions": class-labelled GT."""
        return "bsds" if BUILDERS[self.dataset].LABEL_AXIS == "annotator" else "regions"

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON, with the checkpoint's provenance and the hierarchy's hash."""
        out = dataclasses.asdict(self)
        out["data_dir"] = absolute(as_path(self.data_dir))
        out["size"] = list(image_size(self.size, 1))
        out["refine"] = refinement_settings(self.refine)
        meta = read_metadata(resolve_checkpoint(self.backbone))
        out["checkpoint"] = {k: meta[k] for k in ("variant", "source", "source_sha256")}
        if self.hierarchy is not None:
            text = as_path(self.hierarchy).read_bytes()
            out["hierarchy_sha256"] = hashlib.sha256(text).hexdigest()
        out["format"] = _FORMAT
        out["hiseg_jax"] = __version__
        return json.loads(json.dumps(out))


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to run. Only `batch_size` (with the devices) can change a score, in the last bits
    (see `engine.stream.engine_settings`): it is recorded beside the settings."""

    out: AnyPath  # local, gs:// or s3:// (text is turned into a path by `files.as_path`)
    limit: int | None = None  # evaluate the first `limit` images of the split
    batch_size: int = DEFAULT_BATCH_SIZE
    resume: bool = False
    overwrite: bool = False
    prepared_dir: str | os.PathLike[str] | None = None  # local; default: the cache
    progress: bool = True
    command: str = ""  # the command line, for the report

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", as_path(self.out))
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")


def recorded_settings(settings: EvalSettings, options: RunOptions) -> dict[str, Any]:
    """What settings.json holds and `--resume` compares: the settings' JSON and the engine's
    (batch size, devices: `engine.stream.engine_settings`) under "engine"."""
    return settings.to_json() | {"engine": engine_settings(options.batch_size)}


def dataset_hierarchy(settings: EvalSettings) -> Hierarchy:
    """The hierarchy whose pixel values the dataset's labels hold (or the override file)."""
    if settings.hierarchy is None:
        return BUILDERS[settings.dataset].hierarchy(as_path(settings.data_dir))
    path = as_path(settings.hierarchy)
    return parse_hierarchy(path.read_text(encoding="utf-8"), path.stem)


def evaluate(settings: EvalSettings, options: RunOptions) -> dict[str, Any]:
    """Score this process's share of the split's images not scored yet, then (process 0,
    once every process is done) write the report; returns it in every process.

    Raises DatasetLayoutError (missing / malformed dataset folder), EvaluationError (output
    folder holding another run), ValueError (settings that fit no image)."""
    start = time.perf_counter()
    check_output_dir(options.out)
    source = _load_source(settings, options)
    space = None if settings.kind == "bsds" else label_space(dataset_hierarchy(settings))
    _check_size(settings)
    records = _open_out(options, recorded_settings(settings, options))
    done = {r["index"] for r in records}
    stop = len(source) if options.limit is None else min(options.limit, len(source))
    todo = [i for i in process_share(range(stop)) if i not in done]
    if todo:
        _score_all(source, todo, settings, space, options)
    barrier("evaluate-scored")
    if jax.process_index() == 0:
        records = read_records(options.out)
        wall = time.perf_counter() - start
        report = _finish(settings, options, records, len(source), space, wall)
    barrier("evaluate-reported")
    if jax.process_index() != 0:
        report = json.loads((options.out / "report.json").read_text(encoding="utf-8"))
    return report


def _load_source(settings: EvalSettings, options: RunOptions) -> Sequence[dict[str, Any]]:
    """The split's source (`datasets.load`); process 0 loads first, preparing the dataset if
    needed, then the others (so that they never prepare the same files at once). Raises in
    every process when process 0 could not load it."""
    args = (settings.dataset, settings.data_dir, settings.split, options.prepared_dir)
    first = jax.process_index() == 0
    source = None
    try:
        if first:
            source = load(*args)
    finally:
        failed = gather(np.int32(first and source is None))[0]
    if failed:
        raise EvaluationError("process 0 could not load the dataset; see its message")
    return source if first else load(*args)


def _score_all(
    source: Sequence[dict[str, Any]],
    todo: list[int],
    settings: EvalSettings,
    space: LabelSpace | None,
    options: RunOptions,
) -> None:
    """Segment and score the images `todo` through the engine (decoding and GT preparation
    in its prefetch thread) on this process's devices, writing each batch's records as one
    file as soon as it is scored (`result_files.write_batch`)."""
    model = load_backbone(settings.backbone)
    step = make_step(
        model, settings.size, settings.partition, features=settings.features, mesh=local_mesh()
    )
    patch = model.config.patch_size
    grid = tuple(s // patch for s in step.image_size) if settings.resolution == "patch" else None
    items = (_read_item(source, index, space, grid) for index in todo)
    desc = f"{settings.dataset} {settings.split}"
    if jax.process_count() > 1:
        desc += f" [process {jax.process_index()}/{jax.process_count()}]"
    bar = tqdm(
        total=len(todo),
        unit="img",
        desc=desc,
        disable=not options.progress,
        dynamic_ncols=True,
    )
    results = stream(
        step,
        items,
        batch_size=options.batch_size,
        key=jax.random.key(settings.seed),
        with_features=settings.refine is not None,
        notify=bar.set_postfix_str,
    )
    last = time.perf_counter()
    with bar, contextlib.closing(results):
        for result in results:
            failures = [failure.payload for failure in result.failures]
            scored = score_batch(result, settings, space, options.out, options.batch_size)
            now = time.perf_counter()
            for record in scored:  # the wall time since the previous batch, shared out
                record["seconds"] = (now - last) / len(scored)
            last = now
            new = sorted(failures + scored, key=lambda r: r["index"])
            if new:
                write_batch(options.out, jax.process_index(), new)
            for failure in failures:
                bar.write(f"skipped {failure['name']}: {failure['error']}", file=sys.stderr)
            bar.update(len(new))


def _check_size(settings: EvalSettings) -> None:
    """ValueError unless the size fits the backbone's patch size and gives at least n_parts
    patches (read from the checkpoint's metadata: no weights loaded)."""
    variant = read_metadata(resolve_checkpoint(settings.backbone))["variant"]
    patch = get_config(variant).patch_size
    height, width = image_size(settings.size, patch)
    check_grid((height // patch, width // patch), settings.partition)


def _open_out(options: RunOptions, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Prepare the output folder; returns the records already there (resume).

    Every process checks the folder before any of them changes it; process 0 then clears
    it and writes `settings.json` unless the run continues (`resume`). The logs of earlier
    versions (`OLD_LOGS`) are not read: such a folder is refused unless `overwrite`."""
    out = options.out
    old = sorted(out.glob(OLD_LOGS), key=lambda path: path.name)
    if old and not options.overwrite:
        raise EvaluationError(
            f"{out} holds {old[0].name}, results of an earlier hiseg-jax that this one does "
            "not read: use another --out, or --overwrite to discard them"
        )
    held = bool(batch_files(out)) and not options.overwrite
    if held and not options.resume:
        count = len(read_records(out))
        raise EvaluationError(
            f"{out} already holds the results of {count} images ({out / RESULTS}); "
            "pass --resume to continue that run or --overwrite to discard it"
        )
    saved = out / SETTINGS
    if held and not saved.exists():
        raise EvaluationError(f"{out} has results but no {SETTINGS}: cannot check their settings")
    if held:
        previous = json.loads(saved.read_text(encoding="utf-8"))
        differ = differences_text(previous, settings)
        if differ:
            raise EvaluationError(
                f"{out} holds a run with other settings: {differ}. "
                "Use another --out, or --overwrite to discard it"
            )
    barrier("evaluate-checked")
    if jax.process_index() == 0 and not held:
        names = (RESULTS, eval_hungarian.LEAVES, SETTINGS, ACCUMULATOR, *eval_report.REPORT_FILES)
        for path in (*old, *(out / name for name in names)):
            remove(path)
        out.mkdir(parents=True, exist_ok=True)
        write_text(saved, json.dumps(settings, indent=2) + "\n")
    barrier("evaluate-opened")
    return read_records(out)


class Example(NamedTuple):
    """The payload of an engine `Item`: the dataset index and the prepared GT
    (`scoring.region_targets` / `bsds_targets`)."""

    index: int
    target: np.ndarray


def _read_item(
    source: Sequence[dict[str, Any]],
    index: int,
    space: LabelSpace | None,
    grid: tuple[int, int] | None,
) -> Item | Failure:
    """Item `index` (payload: its `Example`), or a Failure whose payload is the record of
    why it is skipped."""
    item = source[index]
    try:
        name, image, labels = read_example(item)
        target = (
            eval_scoring.bsds_targets(labels, grid)
            if space is None
            else eval_scoring.region_targets(labels, space, grid)
        )
    except ValueError as err:  # ImageLoadError, or GT values outside the hierarchy
        what = "unreadable image" if isinstance(err, ImageLoadError) else "ground truth"
        name = item.get("name", f"#{index}")
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        error = f"{what}: {err}"
        return Failure(name, error, dict(index=index, name=name, error=error))
    return Item(name, image, payload=Example(index, target))


def score_batch(
    result: BatchResult,
    settings: EvalSettings,
    space: LabelSpace | None,
    out_dir: AnyPath,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Score one batch of trees; records of its real images (with Hungarian matching, their
    leaf data are saved under `out_dir` first). With `settings.refine` the
    real images' maps are refined. The trees, sizes and GT are padded to a multiple of `batch_size`
    with copies of the last image (as the device batch was), so that the scoring programs
    keep one shape per bucket."""
    if result.output is None:
        return []
    out, count = result.output, len(result.items)
    rows = -(-count // batch_size) * batch_size
    indices = [item.payload.index for item in result.items]
    sizes = [item.image.shape[:2] for item in result.items]
    padded = lambda x: x + x[-1:] * (rows - len(x))
    targets = padded([item.payload.target for item in result.items])
    tree = jax.tree.map(lambda a: pad_batch(np.asarray(a), rows), out.tree)
    pred, slot_ids = eval_scoring.compact_tree(tree)
    refined = [
        refine_level_labels(item.image, out.features[b], pred.level_labels[b], settings.refine)
        for b, item in enumerate(result.items)
        if settings.refine is not None
    ]
    at_image = settings.resolution == "image"
    pred = eval_scoring.at_resolution(pred, padded(sizes) if at_image else None, refined)
    hw = eval_scoring.padded_shape(padded(sizes)) if at_image else targets[0].shape[-2:]
    depth = None
    if space is None:
        depth = max(eval_scoring.BSDS_ANNOTATORS, *(t.shape[0] for t in targets))
    gt = eval_scoring.pad_maps(targets, hw, depth)
    if space is None:
        scores = eval_scoring.score_bsds(pred, gt, count)
    else:
        scores = eval_scoring.score_regions(pred, slot_ids, gt, space, count)
    if settings.matching == "hungarian":
        leaves = eval_hungarian.leaf_data(
            out.descriptors, pred, slot_ids, gt, space.num_nodes, count
        )
        for index, (descriptors, counts) in zip(indices, leaves, strict=True):
            eval_hungarian.save_leaf_data(out_dir, index, descriptors, counts)
    return [
        dict(index=i, name=item.name, height=s[0], width=s[1], seconds=0.0) | r
        for i, item, s, r in zip(indices, result.items, sizes, scores, strict=True)
    ]


def _finish(
    settings: EvalSettings,
    options: RunOptions,
    records: list[dict[str, Any]],
    split_size: int,
    space: LabelSpace | None,
    wall: float,
) -> dict[str, Any]:
    """Totals from every record, the report written beside them; returns the report."""
    scored = [r for r in records if "error" not in r]
    skipped = [
        dict(index=r["index"], name=r["name"], error=r["error"]) for r in records if "error" in r
    ]
    if space is None:
        acc = eval_scoring.bsds_accumulator(scored)
        results = acc.summary() | {"nm": eval_scoring.bsds_nm_covering(scored)} if scored else {}
    else:
        acc = eval_scoring.region_accumulator(scored, space)
        results = acc.summary() if scored else {}
    if scored:
        with atomic_path(options.out / ACCUMULATOR) as partial:
            acc.save(partial)
    run = dict(
        split_images=split_size,
        limit=options.limit,
        scored=len(scored),
        skipped=len(skipped),
        skipped_images=sorted(skipped, key=lambda r: r["index"]),
        complete=len(records) == split_size,
        batch_size=options.batch_size,
        wall_seconds=wall,
        image_seconds=sum(r["seconds"] for r in scored),
    )
    if settings.matching == "hungarian" and scored:
        leaves = eval_hungarian.load_leaf_data(options.out, [r["index"] for r in scored])
        results["hungarian"] = eval_hungarian.hungarian_results(*leaves, space, settings.seed)
    report = dict(
        kind=settings.kind,
        command=options.command,
        settings=recorded_settings(settings, options),
        run=run,
        results=results,
        **eval_report.environment(),
    )
    eval_report.write_report(options.out, report)
    return report
