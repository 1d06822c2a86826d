"""Command-line options shared by subcommands: how to run the backbone (`add_run_arguments`),
how the leaves are refined at pixel level (`add_refine_arguments`), how processes join a
multi-host run (`add_process_arguments`, `start_processes`) and one `--field-name` option
per `PartitionConfig` field (`add_partition_arguments`)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from hiseg_jax.crf.refine import METHODS
from hiseg_jax.engine.sharding import initialize_distributed
from hiseg_jax.engine.stream import DEFAULT_BATCH_SIZE
from hiseg_jax.features import DEFAULT_FEATURES, DEFAULT_SIZE, PAPER_FEATURES, feature_parts
from hiseg_jax.files import AnyPath, as_path
from hiseg_jax.paths import DEFAULT_BACKBONE
from hiseg_jax.spectral.config import PartitionConfig

# One line per PartitionConfig field: what it changes (docs/method.md has the details).
PARTITION_HELP = {
    "adjacency": "patch affinity: 'minmax' (the paper's, cosine-based) or 'exp' (Gaussian)",
    "sigma": "width of the 'exp' adjacency",
    "threshold": "affinities below this are set to 0 (0: keep all)",
    "eps": "floor of degrees, volumes and row norms (avoids division by zero)",
    "gram_min": "largest patch distance of the minmax graph: 'search' (farthest-pair "
    "search, O(N)) or 'exact' (all pairs, O(N^2))",
    "n_parts": "number of stage-A parts P the patches are first clustered into",
    "stage_a_solver": "stage-A eigensolver: 'block' (block Lanczos, low-rank, never forms "
    "the N x N graph), 'lanczos' (the same one vector a step), 'eigh' (dense; top k only on "
    "CPU) or 'eigh_full' (dense, all pairs)",
    "stage_a_k": "eigenvectors of the stage-A embedding (the paper: P)",
    "lanczos_iters": "Krylov vectors of the stage-A 'block' / 'lanczos' solvers",
    "stage_a_block": "vectors per step of the stage-A 'block' solver",
    "stage_a_coords": "weight of the patch coordinates in the stage-A embedding (0: none)",
    "stage_a_init": "stage-A k-means start: 'lattice' (patches spread over the image, "
    "deterministic) or 'kmeans++' (best of --stage-a-restarts)",
    "stage_a_restarts": "k-means++ restarts of stage A (the best inertia is kept)",
    "kmeans_restarts": "k-means restarts of every stage-B k-way cut",
    "kmeans_max_iter": "most Lloyd iterations of every k-means run",
    "kmeans_tol": "k-means stops when the centres move less than this times the data variance",
    "levels": "depth L of the tree: how many times a region may be split",
    "max_kways": "most children of one split (the eigengap picks k up to this)",
    "min_points": "a region of at most this many parts is not split",
    "mncut_th": "a split is accepted only if its mean normalised cut is below this",
    "max_perturb": "a k > 2 split is rejected when its perturbation ratio exceeds this",
    "perturb_fallback": "true: a rejected k > 2 split retries with k - 1, ..., 2 children "
    "instead of stopping the region (false: the paper's)",
    "merge_below": "after stage B, leaves of fewer than this many patches join their "
    "best-bordering sibling (0: off, the paper's)",
    "stage_b_solver": "stage-B eigensolver of each region's part graph: 'eigh' (dense) or "
    "'lanczos'",
    "stage_b_lanczos_steps": "Krylov steps of the stage-B Lanczos solver (at most P)",
    "node_chunk": "stage-B regions split at once (memory vs speed; results do not change)",
    "stage_b_node_sizes": "stage-B regions are split on their parts gathered into the "
    "smallest of these sizes that holds them, e.g. 64,16 (speed only)",
}


def parse_size(text: str) -> int | tuple[int, int]:
    """'448' -> 448, '840x1680' -> (840, 1680) (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be S or HxW, got {text!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"size must be S or HxW, got {text!r}")


def parse_features(text: str) -> str:
    """A `features.feature_parts` spec, checked: 'tokens', 'tokens+colour:0.5', ..."""
    try:
        feature_parts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def local_path(text: str) -> Path:
    """A local path option; object-store URLs are refused."""
    if "://" in text:
        raise argparse.ArgumentTypeError(f"{text}: only a local path here, not gs:// or s3://")
    return Path(text)


def location(text: str) -> AnyPath:
    """A path option that may also be `gs://...` or `s3://...` (`files.as_path`)."""
    try:
        return as_path(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def format_size(size: int | tuple[int, int]) -> str:
    """The inverse of `parse_size`."""
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"


def parse_ints(text: str) -> tuple[int, ...]:
    """'64,16' -> (64, 16)."""
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def parse_bool(text: str) -> bool:
    """'true' / 'false' (any case; also 1 / 0, yes / no) -> bool."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def format_value(value: object) -> str:
    """A `PartitionConfig` value as its option's text (the inverse of the option's type)."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--backbone, --size, --batch-size, --features, --seed: the backbone and the engine."""
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="converted checkpoint: a name in $HISEG_CHECKPOINTS or a "
        ".safetensors path (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=DEFAULT_SIZE,
        help="every image is resized to this backbone input size, S or HxW, "
        "multiples of the patch size (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="images per compiled batch; does not change results (default: %(default)s)",
    )
    parser.add_argument(
        "--features",
        type=parse_features,
        default=None,
        help="tokens (the paper's), keys (last block's), blockNN (block NN's output), colour "
        f"(patch mean CIELAB) or a weighted mix, e.g. tokens+colour:0.5 (default: "
        f"{DEFAULT_FEATURES}; with --paper: {PAPER_FEATURES})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random key of the eigensolvers and k-means (default: 0)",
    )


def add_refine_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """--refine guided|crf|none (dest "refine", None when not given) and --crf, the same as
    --refine crf (the paper's "w CRF"); `default` says in the help what None stands for."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--refine",
        choices=METHODS,
        default=None,
        help="how the leaves' borders go from the backbone's patch grid to the image's pixels: "
        "'guided' (guided filter of the leaves' soft assignments on the image's colours; "
        "under 1 s per image on a 2-core CPU), 'crf' (the dense CRF, the paper's 'w CRF'; several "
        f"times slower), 'none' (nearest upsampling of the patch labels) (default: {default})",
    )
    group.add_argument(
        "--crf",
        dest="refine",
        action="store_const",
        const="crf",
        help="the same as --refine crf",
    )


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """--coordinator-address, --num-processes, --process-id (`jax.distributed.initialize`'s
    arguments) and --distributed auto: one process per host, each taking its share."""
    group = parser.add_argument_group(
        "multi-process runs (README: one process per host, each takes its share)"
    )
    group.add_argument(
        "--coordinator-address",
        default=None,
        metavar="HOST:PORT",
        help="address of process 0, reachable from every process",
    )
    group.add_argument("--num-processes", type=int, default=None, help="processes in the run")
    group.add_argument(
        "--process-id", type=int, default=None, help="this process's index, 0 .. N - 1"
    )
    group.add_argument(
        "--distributed",
        choices=("auto",),
        default=None,
        help="'auto': read the three above from the cluster (Cloud TPU, SLURM, Open MPI, "
        "Kubernetes), as jax.distributed.initialize() does",
    )


def start_processes(args: argparse.Namespace) -> None:
    """Join the multi-process run the arguments ask for (nothing for a single process);
    must run before any JAX array exists. ValueError (one line) for incomplete flags or a
    coordinator that cannot be reached."""
    given = (args.coordinator_address, args.num_processes, args.process_id)
    auto = args.distributed == "auto"
    if auto and given != (None, None, None):
        raise ValueError("--distributed auto reads the process flags from the cluster: give none")
    if not auto and None in given and given != (None, None, None):
        raise ValueError(
            "give --coordinator-address, --num-processes and --process-id together "
            "(or --distributed auto)"
        )
    try:
        initialize_distributed(*given, auto_detect=auto)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"could not join the multi-process run: {first}") from None


def field_type(field: dataclasses.Field, hint: object) -> typing.Callable[[str], object]:
    """The argparse type of a `PartitionConfig` field."""
    if typing.get_origin(hint) is typing.Literal:
        return str
    if isinstance(field.default, tuple):
        return parse_ints
    if isinstance(field.default, bool):
        return parse_bool
    return type(field.default)


def add_partition_arguments(parser: argparse.ArgumentParser) -> None:
    """`--paper` and one `--field-name` option per `PartitionConfig` field."""
    group = parser.add_argument_group("partition parameters (docs/method.md)")
    group.add_argument(
        "--paper",
        action="store_true",
        help="the authors' method (PartitionConfig.paper(): dense top-P eigenvectors, "
        "10 k-means++ restarts, their stopping rule; the last tokens as features unless "
        "--features is given); the options below still apply on top",
    )
    hints = typing.get_type_hints(PartitionConfig)
    paper = PartitionConfig.paper()
    for field in dataclasses.fields(PartitionConfig):
        hint = hints[field.name]
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        other = getattr(paper, field.name)
        note = f"; --paper: {format_value(other)}" if other != field.default else ""
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=None,
            type=field_type(field, hint),
            choices=choices,
            help=f"{PARTITION_HELP[field.name]} (default: {format_value(field.default)}{note})",
        )


def features_of(args: argparse.Namespace) -> str:
    """The `--features` given, else the default's (`--paper`: the paper's tokens)."""
    if args.features is not None:
        return args.features
    return PAPER_FEATURES if args.paper else DEFAULT_FEATURES


def partition_config(args: argparse.Namespace) -> PartitionConfig:
    """The `PartitionConfig` of parsed arguments (ValueError for invalid values): the
    default, or with `--paper` the authors' stage A, with the options given replacing it."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(PartitionConfig)
        if getattr(args, f.name) is not None
    }
    return PartitionConfig.paper(**given) if args.paper else PartitionConfig(**given)


def partition_flags(config: PartitionConfig) -> list[str]:
    """The options that reproduce `config` (fields that differ from their default)."""
    flags = []
    for field in dataclasses.fields(PartitionConfig):
        value = getattr(config, field.name)
        if value != field.default:
            flags += ["--" + field.name.replace("_", "-"), format_value(value)]
    return flags
