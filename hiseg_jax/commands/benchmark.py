"""`hiseg benchmark NAME [ARGS...]`: run one of the repository's `benchmarks/NAME.py` scripts.

The benchmarks live beside the package in a source checkout (they compare against PyTorch and
NumPy/SciPy references that an installed package does not need); this command finds them and
forwards the remaining arguments, so `hiseg benchmark throughput --quick` equals
`python benchmarks/throughput.py --quick`.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

HELP = "run a benchmark script of benchmarks/ (throughput, partition, backbone_throughput, ...)"
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    """Names of the benchmark scripts found beside the package."""
    return sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`NAME` then the script's own arguments."""
    parser.add_argument("name", help="benchmark name; 'list' shows them")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")


def run(args: argparse.Namespace) -> int:
    """Runs `benchmarks/<name>.py` in this process with `args` as its argv."""
    names = available()
    if args.name == "list":
        print("\n".join(names) if names else f"no benchmark scripts under {BENCHMARKS}")
        return 0
    if args.name not in names:
        where = f"valid: {', '.join(names)}" if names else f"no scripts found under {BENCHMARKS}"
        print(f"hiseg benchmark: unknown benchmark {args.name!r}; {where}", file=sys.stderr)
        return 2
    script = BENCHMARKS / f"{args.name}.py"
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0
