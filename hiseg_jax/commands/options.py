"""Command-line options shared by subcommands: how to run the backbone (`add_run_arguments`)
and one `--field-name` option per `PartitionConfig` field (`add_partition_arguments`)."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from hiseg_jax.engine.stream import DEFAULT_BATCH_SIZE
from hiseg_jax.features import DEFAULT_SIZE, FEATURE_KINDS
from hiseg_jax.paths import DEFAULT_BACKBONE
from hiseg_jax.spectral.config import PartitionConfig

# One line per PartitionConfig field: what it changes (docs/method.md has the details).
PARTITION_HELP = {
    "adjacency": "patch affinity: 'minmax' (the paper's, cosine-based) or 'exp' (Gaussian)",
    "sigma": "width of the 'exp' adjacency",
    "threshold": "affinities below this are set to 0 (0: keep all)",
    "eps": "floor of degrees, volumes and row norms (avoids division by zero)",
    "n_parts": "number of stage-A parts P the patches are first clustered into",
    "stage_a_solver": "stage-A eigensolver: 'eigh' (dense; top P only on CPU), 'eigh_full' "
    "(dense, all pairs) or 'lanczos' (low-rank, never forms the N x N graph)",
    "lanczos_iters": "Krylov steps of the stage-A Lanczos solver",
    "stage_a_restarts": "k-means restarts of stage A (the best inertia is kept)",
    "kmeans_restarts": "k-means restarts of every stage-B k-way cut",
    "kmeans_max_iter": "most Lloyd iterations of every k-means run",
    "kmeans_tol": "k-means stops when the centres move less than this times the data variance",
    "levels": "depth L of the tree: how many times a region may be split",
    "max_kways": "most children of one split (the eigengap picks k up to this)",
    "min_points": "a region of at most this many parts is not split",
    "mncut_th": "a split is accepted only if its mean normalised cut is below this",
    "max_perturb": "a k > 2 split is rejected when its perturbation ratio exceeds this",
    "stage_b_solver": "stage-B eigensolver of each region's part graph: 'eigh' (dense) or "
    "'lanczos'",
    "stage_b_lanczos_steps": "Krylov steps of the stage-B Lanczos solver (at most P)",
    "node_chunk": "stage-B regions split at once (memory vs speed; results do not change)",
    "gram_min": "the minmax adjacency's largest patch distance on the low-rank path: 'search' "
    "(farthest-pair search, O(N E)) or 'exact' (all pairs in blocks, O(N^2 E))",
    "stage_b_node_sizes": "a region is split on its own parts, gathered into the smallest of "
    "these sizes that holds it, comma-separated (speed only; results do not change)",
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
        choices=FEATURE_KINDS,
        default="tokens",
        help="patch tokens (the paper's) or last-block keys (default: tokens)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random key of the eigensolvers and k-means (default: 0)",
    )


def add_partition_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--field-name` option per `PartitionConfig` field, defaulting to the field's."""
    group = parser.add_argument_group("partition parameters (docs/method.md)")
    hints = typing.get_type_hints(PartitionConfig)
    for field in dataclasses.fields(PartitionConfig):
        is_tuple = isinstance(field.default, tuple)
        choices = None if is_tuple else typing.get_args(hints[field.name]) or None
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=field.default,
            type=parse_ints if is_tuple else str if choices else type(field.default),
            choices=choices,
            help=f"{PARTITION_HELP[field.name]} (default: {format_value(field.default)})",
        )


def partition_config(args: argparse.Namespace) -> PartitionConfig:
    """The `PartitionConfig` of parsed arguments (ValueError for invalid values)."""
    return PartitionConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(PartitionConfig)}
    )


def partition_flags(config: PartitionConfig) -> list[str]:
    """The options that reproduce `config` (fields that differ from their default)."""
    flags = []
    for field in dataclasses.fields(PartitionConfig):
        value = getattr(config, field.name)
        if value != field.default:
            flags += ["--" + field.name.replace("_", "-"), format_value(value)]
    return flags
