"""The `hiseg` command line: a thin dispatcher over `hiseg_jax.commands.<name>` modules.

Each command module exposes `HELP: str`, `add_arguments(parser)` and `run(args) -> int`, so a
subcommand is added by adding a module and its name to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hiseg_jax import __version__

COMMANDS = ("segment", "evaluate", "convert", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subparser per available command module."""
    parser = argparse.ArgumentParser(
        prog="hiseg", description="Unsupervised hierarchy-agnostic image segmentation in JAX."
    )
    parser.add_argument("--version", action="version", version=f"hiseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"hiseg_jax.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"hiseg_jax.commands.{name}":
                raise
            continue
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hiseg` console script."""
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
