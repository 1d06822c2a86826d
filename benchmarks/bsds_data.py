"""BSDS500 images, human segmentations and cached default-backbone features for benchmarks.

Features are computed once per (split, size, kind, stride) and stored as one .npz each:
`<cache_dir>/bsds500_<split>_<size>px_<backbone>_<kind>[_s<stride>].npz` holding `x` float32
[B, h, h, E] (h = (size - 14) / stride + 1) and `ids` (image ids, sorted by name, the first
`count` of the split). Kinds (`features.feature_parts`, one per cache): "tokens", "keys",
"blockNN" (the patch tokens output by block NN, 0-based, before any norm) and "colour"
(`features.patch_colour`: each patch's mean CIELAB colour, centred and scaled per image); the
`_s<stride>` suffix only for a patch-embedding stride other than the patch size 14
(`features.extract_features(..., stride=)`). Exact preprocessing: `images.load_image`, then
`features.preprocess`
(antialiased bilinear resize to size x size, aspect ratio not kept, ImageNet normalisation),
then `features.extract_features(model, x, kind, stride)` of the default backbone
(`dinov2_vits14_imgfocus`), always in batches of `BATCH` images (a short last batch is
padded with copies), so an image's features do not depend on how many images were cached.
A cache with fewer images than asked is extended; one with other ids is recomputed.

    .venv/bin/python benchmarks/bsds_data.py --split train --count 200 --size 448
        [--stride 7] [--cache-dir DIR (default $HISEG_FEATURE_CACHE, else $HISEG_HOME/features)]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hiseg_jax.paths import home

SHARED = Path(
    os.environ.get("HISEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
CACHE_DIR = Path(os.environ.get("HISEG_FEATURE_CACHE", home() / "features"))
BATCH = 4
BACKBONE = "dinov2_vits14_imgfocus"
PATCH = 14  # the backbone's patch size: the default stride


def split_ids(split: str, count: int | None = None, shared: Path = SHARED) -> list[str]:
    """The first `count` image ids of a BSDS500 split, sorted by name."""
    folder = shared / "bsds500" / "images" / split
    ids = sorted(p.stem for p in folder.glob("*.jpg"))
    if not ids:
        raise FileNotFoundError(f"no BSDS500 images in {folder} (set HISEG_SHARED_DATA)")
    return ids[:count]


def segmentations(split: str, ids: Sequence[str], shared: Path = SHARED) -> list[np.ndarray]:
    """Human segmentations int32 [A, H, W] (ids from 1) of the images."""
    from hiseg_jax.datasets.bsds500 import read_bsds_mat

    root = shared / "bsds500" / "groundTruth" / split
    return [read_bsds_mat(root / f"{i}.mat") for i in ids]


def load_images(split: str, ids: Sequence[str], shared: Path = SHARED) -> list[np.ndarray]:
    """The images uint8 [H, W, 3] at their own size."""
    from hiseg_jax.images import load_image

    folder = shared / "bsds500" / "images" / split
    return [load_image(folder / f"{i}.jpg") for i in ids]


def cache_path(
    split: str,
    size: int,
    cache_dir: Path = CACHE_DIR,
    kind: str = "tokens",
    stride: int | None = None,
) -> Path:
    suffix = "" if stride in (None, PATCH) else f"_s{stride}"
    return cache_dir / f"bsds500_{split}_{size}px_{BACKBONE}_{kind}{suffix}.npz"


def check_kind(kind: str) -> str:
    """`kind` if it names one cached feature kind (`features.feature_parts`), else ValueError."""
    from hiseg_jax.features import feature_parts

    if len(feature_parts(kind)) != 1 or ":" in kind:
        raise ValueError(f"one feature kind per cache, got {kind!r}")
    return kind


def compute_features(
    split: str,
    ids: Sequence[str],
    size: int,
    shared: Path = SHARED,
    kind: str = "tokens",
    stride: int | None = None,
) -> np.ndarray:
    """float32 [B, h, h, E] features of the images (h = (size - 14) / stride + 1), BATCH at
    a time."""
    from hiseg_jax import features
    from hiseg_jax.paths import default_checkpoint_path
    from hiseg_jax.weights.checkpoint import load_backbone

    model = load_backbone(default_checkpoint_path())
    out = []
    for start in range(0, len(ids), BATCH):
        chunk = load_images(split, ids[start : start + BATCH], shared)
        count = len(chunk)
        chunk += chunk[-1:] * (BATCH - count)
        x = features.preprocess(chunk, size, model.config)
        x = features.extract_features(model, x, kind, stride)
        out.append(np.asarray(x)[:count])
    return np.concatenate(out)


def bsds_features(
    split: str,
    count: int | None,
    size: int,
    cache_dir: Path | None = CACHE_DIR,
    shared: Path = SHARED,
    kind: str = "tokens",
    stride: int | None = None,
) -> tuple[list[str], np.ndarray]:
    """(ids, features) of the first `count` images of a split, from the cache when it has
    them (the cache is written or extended otherwise; `cache_dir=None`: no cache). `kind`:
    one of the module docstring's kinds, `stride`: the patch embedding's
    (`features.extract_features`)."""
    check_kind(kind)
    ids = split_ids(split, count, shared)
    path = None if cache_dir is None else cache_path(split, size, cache_dir, kind, stride)
    have_ids, have = [], None
    if path is not None and path.is_file():
        data = np.load(path)
        have_ids, have = list(data["ids"]), data["x"]
        if have_ids[: min(len(ids), len(have_ids))] != ids[: len(have_ids)]:
            have_ids, have = [], None
        if len(have_ids) >= len(ids):
            return ids, have[: len(ids)]
    start = len(have_ids) - len(have_ids) % BATCH  # recompute a partial last batch
    new = compute_features(split, ids[start:], size, shared, kind, stride)
    x = new if have is None else np.concatenate([have[:start], new])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            x=x,
            ids=np.asarray(ids),
            size=size,
            backbone=BACKBONE,
            kind=kind,
            stride=stride or PATCH,
        )
        tmp.replace(path)
    return ids, x


def spec_features(
    split: str,
    count: int | None,
    size: int,
    spec: str,
    cache_dir: Path | None = CACHE_DIR,
    stride: int | None = None,
) -> tuple[list[str], np.ndarray]:
    """(ids, features) of a `features.feature_parts` spec ("tokens+block09", ...): each kind
    from its cache (`bsds_features`), joined as the engine joins them (`join_features`)."""
    from hiseg_jax.features import feature_parts, join_features

    parts = []
    for kind, weight in feature_parts(spec):
        ids, x = bsds_features(split, count, size, cache_dir, kind=kind, stride=stride)
        parts.append((x, kind, weight))
    return ids, np.asarray(join_features(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--features", default="tokens", type=check_kind)
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    args = parser.parse_args()
    start = time.perf_counter()
    ids, x = bsds_features(
        args.split, args.count, args.size, args.cache_dir, kind=args.features, stride=args.stride
    )
    path = cache_path(args.split, args.size, args.cache_dir, args.features, args.stride)
    print(
        f"{args.split} {args.size} px: {len(ids)} images {x.shape} -> {path} "
        f"({time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
