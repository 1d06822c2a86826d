"""Command-line options shared by subcommands: the backbone input size and one
`--field-name` option per `PartitionConfig` field."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from hiseg_jax.spectral.config import PartitionConfig


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


def add_partition_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--field-name` option per `PartitionConfig` field, defaulting to the field's."""
    group = parser.add_argument_group("partition parameters (PartitionConfig)")
    hints = typing.get_type_hints(PartitionConfig)
    for field in dataclasses.fields(PartitionConfig):
        choices = typing.get_args(hints[field.name]) or None
        group.add_argument(
            "--" + field.name.replace("_", "-"), dest=field.name, default=field.default,
            type=str if choices else type(field.default), choices=choices,
            help="default: %(default)s",
        )


def partition_config(args: argparse.Namespace) -> PartitionConfig:
    """The `PartitionConfig` of parsed arguments (ValueError for invalid values)."""
    return PartitionConfig(**{f.name: getattr(args, f.name)
                              for f in dataclasses.fields(PartitionConfig)})


def partition_flags(config: PartitionConfig) -> list[str]:
    """The options that reproduce `config` (fields that differ from their default)."""
    flags = []
    for field in dataclasses.fields(PartitionConfig):
        value = getattr(config, field.name)
        if value != field.default:
            flags += ["--" + field.name.replace("_", "-"), str(value)]
    return flags
