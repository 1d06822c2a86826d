"""`hiseg evaluate`: score the trees of a dataset split against its ground truth.

    hiseg evaluate --dataset NAME --data-dir DIR [--split val] [--backbone NAME_OR_PATH]
                   [--size S] [--resolution image|patch] [--matching max-overlap|hungarian]
                   [--limit N] [--batch-size B] [--out DIR] [--resume | --overwrite]
                   [--seed N] [--hierarchy FILE] [--refine guided|crf|none | --crf]
                   [--levels L --n-parts P --stage-b-solver S ... (every PartitionConfig field)]

Prints the dataset's rows in the paper's format and writes `DIR/report.md`, `report.json`
(settings, software, machine), `results/` (the per-image records, one file per batch,
written as each batch is scored), `settings.json` and `accumulator.npz` (the dataset
totals, mergeable). An interrupted run continues with `--resume`. The dataset folder, DIR
and the hierarchy file may be local, `gs://` or `s3://` (`files.as_path`); the prepared
dataset (`--prepared-dir`) is local. At image resolution every image's leaves are refined
at the image's own size (`--refine`, `crf.refine`): by the guided filter (the default), the
dense CRF (`--crf`: the paper's "w CRF" rows) or not at all (`--refine none`: the paper's
plain rows, nearest upsampling); at patch resolution there are no pixels to refine and the
default is `none`.
Exit status: 0, 1 when images were skipped (unreadable, or ground truth outside the
hierarchy), 2 for bad input (missing or malformed dataset folder, bad settings, an output
folder holding another run), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import jax

from hiseg_jax.commands.options import (
    add_partition_arguments,
    add_process_arguments,
    add_refine_arguments,
    add_run_arguments,
    features_of,
    format_size,
    local_path,
    location,
    partition_config,
    partition_flags,
    start_processes,
)
from hiseg_jax.crf.refine import DEFAULT_REFINEMENT, refinement_method, refinement_of
from hiseg_jax.datasets import BUILDERS
from hiseg_jax.engine.stream import DEFAULT_BATCH_SIZE
from hiseg_jax.evaluation.report import REFINED, results_table
from hiseg_jax.evaluation.result_files import read_records
from hiseg_jax.evaluation.runner import MATCHINGS, RESOLUTIONS, EvalSettings, RunOptions, evaluate
from hiseg_jax.features import DEFAULT_FEATURES, DEFAULT_SIZE
from hiseg_jax.paths import DEFAULT_BACKBONE

HELP = "evaluate on a benchmark dataset: the paper's table rows, a report, resumable results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `hiseg evaluate`."""
    parser.add_argument(
        "--dataset", required=True, choices=sorted(BUILDERS), help="dataset builder name"
    )
    parser.add_argument(
        "--data-dir",
        required=True,
        type=location,
        help="the dataset's folder, as its official download unpacks, local, gs:// or "
        "s3:// (a folder that does not fit gets an error naming what is missing)",
    )
    parser.add_argument("--split", default="val", help="split to score (default: %(default)s)")
    parser.add_argument(
        "--resolution",
        choices=RESOLUTIONS,
        default="image",
        help="compare at every image's size (prediction upsampled) or at the "
        "patch grid (GT sampled at patch centres) (default: %(default)s)",
    )
    parser.add_argument(
        "--matching",
        choices=MATCHINGS,
        default="max-overlap",
        help="semantic scores: the paper's per-image maximum overlap, or also "
        "the peers' dataset-level Hungarian matching (default: %(default)s)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="score only the first N images of the split"
    )
    parser.add_argument(
        "--out",
        type=location,
        default=None,
        help="output folder, local, gs:// or s3:// (default: runs/DATASET-SPLIT)",
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out, scoring only images without a result",
    )
    again.add_argument(
        "--overwrite", action="store_true", help="discard the results already in --out"
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--hierarchy",
        type=location,
        default=None,
        help="a label hierarchy file replacing the dataset's own, one node a "
        "line as 'parent/child | pixel value | foreground|background|ignore' "
        "(docs/metrics.md), e.g. one built over the ADE20K images scored",
    )
    parser.add_argument(
        "--prepared-dir",
        type=local_path,
        default=None,
        help="where the dataset's ArrayRecord files are prepared (default: "
        "$HISEG_TFDS_DIR, else $HISEG_HOME/tfds)",
    )
    add_refine_arguments(parser, f"{default_refine('image')}; none with --resolution patch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_process_arguments(parser)
    add_partition_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The settings the parsed arguments ask for (ValueError for bad ones)."""
    return EvalSettings(
        dataset=args.dataset,
        data_dir=str(args.data_dir),
        split=args.split,
        backbone=args.backbone,
        size=args.size,
        resolution=args.resolution,
        matching=args.matching,
        features=features_of(args),
        seed=args.seed,
        partition=partition_config(args),
        hierarchy=None if args.hierarchy is None else str(args.hierarchy),
        refine=refinement_of(args.refine or default_refine(args.resolution)),
    )


def default_refine(resolution: str) -> str:
    """The refinement without --refine: the guided filter at image resolution, none at the
    patch grid (no pixels to refine)."""
    return refinement_method(DEFAULT_REFINEMENT) if resolution == "image" else "none"


def command_line(settings: EvalSettings, options: RunOptions) -> str:
    """A `hiseg evaluate` command that reproduces `settings` (defaults left out);
    ValueError for CRF or guided-filter settings other than their defaults, which have no
    flags."""
    method = refinement_method(settings.refine)
    if settings.refine != refinement_of(method):
        raise ValueError(
            f"no command line gives the refinement settings {settings.refine}: --refine "
            "guided and --refine crf take the GuidedConfig and CRFConfig defaults"
        )
    words = [
        "hiseg",
        "evaluate",
        "--dataset",
        settings.dataset,
        "--data-dir",
        str(settings.data_dir),
        "--split",
        settings.split,
    ]
    optional = (
        ("--backbone", settings.backbone, DEFAULT_BACKBONE),
        ("--size", format_size(settings.size), format_size(DEFAULT_SIZE)),
        ("--resolution", settings.resolution, "image"),
        ("--matching", settings.matching, "max-overlap"),
        ("--features", settings.features, DEFAULT_FEATURES),
        ("--seed", settings.seed, 0),
        ("--hierarchy", settings.hierarchy, None),
        ("--limit", options.limit, None),
        ("--batch-size", options.batch_size, DEFAULT_BATCH_SIZE),
        ("--refine", method, default_refine(settings.resolution)),
    )
    for flag, value, default in optional:
        if value != default:
            words += [flag, str(value)]
    words += partition_flags(settings.partition) + ["--out", str(options.out)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table; see the module docstring for the exit status."""
    out = args.out or Path("runs") / f"{args.dataset}-{args.split}"
    try:
        start_processes(args)
        settings = settings_from_args(args)
        options = RunOptions(
            out=out,
            limit=args.limit,
            batch_size=args.batch_size,
            resume=args.resume,
            overwrite=args.overwrite,
            prepared_dir=args.prepared_dir,
            progress=not args.no_progress,
        )
        options = dataclasses.replace(options, command=command_line(settings, options))
        report = evaluate(settings, options)
    except KeyboardInterrupt:
        count = len(read_records(out))
        print(
            f"\nhiseg evaluate: interrupted; {count} images recorded in {out}. "
            "Continue with the same command and --resume.",
            file=sys.stderr,
        )
        return 130
    except (ValueError, OSError) as err:  # DatasetLayoutError, EvaluationError, bad settings
        print(f"hiseg evaluate: error: {err}", file=sys.stderr)
        return 2
    run_info = report["run"]
    if jax.process_index() != 0:  # process 0 prints the run's table
        return 1 if run_info["skipped"] else 0
    refined = REFINED.get(refinement_method(settings.refine))
    print(
        f"\n{settings.dataset} {settings.split}: {run_info['scored']} images scored, "
        f"{run_info['skipped']} skipped ({settings.resolution} resolution"
        f"{f', {refined}' if refined else ''})"
    )
    print(results_table(report))
    for skipped in run_info["skipped_images"]:
        print(f"  skipped {skipped['name']}: {skipped['error']}")
    print(f"report: {out / 'report.md'}")
    return 1 if run_info["skipped"] else 0
