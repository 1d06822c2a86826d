"""`hiseg benchmark NAME [ARGS...]`: run one of the checkout's `benchmarks/NAME.py` scripts.

The benchmarks ship with the source, not the package (they compare against PyTorch and
NumPy/SciPy references that an installed package does not need): this command finds them in
`./benchmarks` or `$HISEG_BENCHMARKS` (`paths.benchmarks_dir`) and forwards the remaining
arguments, so `hiseg benchmark throughput --quick` equals `python benchmarks/throughput.py
--quick`.
"""

from __future__ import annotations

import argparse
import runpy
import sys

from hiseg_jax.paths import benchmarks_dir

HELP = "run a benchmark script of a source checkout's benchmarks/ (throughput, partition, ...)"


def available() -> list[str]:
    """Names of the benchmark scripts found (ValueError outside a source checkout)."""
    return sorted(p.stem for p in benchmarks_dir().glob("*.py") if not p.stem.startswith("_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`NAME` then the script's own arguments."""
    parser.add_argument("name", help="benchmark name; 'list' shows them")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")


def run(args: argparse.Namespace) -> int:
    """Runs `benchmarks/<name>.py` in this process with `args` as its argv."""
    try:
        names = available()
    except ValueError as err:
        print(f"hiseg benchmark: {err}", file=sys.stderr)
        return 2
    if args.name == "list":
        print("\n".join(names) if names else f"no benchmark scripts in {benchmarks_dir()}")
        return 0
    if args.name not in names:
        where = f"valid: {', '.join(names)}" if names else f"no scripts in {benchmarks_dir()}"
        print(f"hiseg benchmark: unknown benchmark {args.name!r}; {where}", file=sys.stderr)
        return 2
    script = benchmarks_dir() / f"{args.name}.py"
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0
