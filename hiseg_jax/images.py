"""Image files in, `uint8 [H, W, 3]` RGB arrays out, as a user would expect them to look.

Every mode Pillow reads is brought to 8-bit RGB the way an image viewer shows it:
EXIF orientation applied; transparency (RGBA, LA, palette with a transparent index)
composited onto WHITE, because the colours hidden under transparent pixels are arbitrary
(often black) and would otherwise show up as spurious regions; 16-bit samples scaled
to 8 bits by `round(v / 257)` (65535 -> 255); CMYK and other colour spaces converted by
Pillow; multi-frame files (GIF, TIFF) give their first frame. A file that cannot be read
raises `ImageLoadError`, a `ValueError` whose message names the file and the problem.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hiseg_jax.files import AnyPath, absolute, as_path, files_below

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)
# The default sample images: scikit-image bundles them in its wheel (no download). Chosen
# for a visible hierarchy: a person with suit, flag and background; a cat with face parts;
# a cup on a saucer on a table; a rocket on its pad against sky and trees.
SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket")

_WHITE = (255, 255, 255)


class ImageLoadError(ValueError):
    """A file that is missing, empty, truncated, or not an image Pillow can decode."""


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """The image at `path` as `uint8 [H, W, 3]` RGB (see the module docstring for the rules).

    Raises `ImageLoadError` naming the file for a missing, empty, unrecognised or truncated
    file and for an image with a zero-length side.
    """
    path = as_path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise ImageLoadError(f"{path}: the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return pil_to_rgb(image, name=str(path))
    except ImageLoadError:
        raise
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{path}: not an image format Pillow recognises") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"{path}: cannot decode the image ({err})") from err


def pil_to_rgb(image: Image.Image, *, name: str = "image") -> np.ndarray:
    """A loaded Pillow image as `uint8 [H, W, 3]`: orientation, alpha, bit depth handled."""
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"{name}: the image has zero size ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        return _gray_to_rgb(_sixteen_to_eight(np.asarray(image)))
    elif mode == "F":
        return _gray_to_rgb(_float_to_eight(np.asarray(image)))
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        return _composite_on_white(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _composite_on_white(image: Image.Image) -> np.ndarray:
    """An RGBA image alpha-composited over an opaque white background, `uint8 [H, W, 3]`."""
    background = Image.new("RGBA", image.size, _WHITE + (255,))
    return np.asarray(Image.alpha_composite(background, image).convert("RGB"), dtype=np.uint8)


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """Integer samples to `uint8`: full 16-bit range (0..65535 -> 0..255) when they fit it,
    otherwise (32-bit data, negatives) a min-max stretch of their own range."""
    values = values.astype(np.int64)
    if values.min() >= 0 and values.max() <= 65535:
        return ((values + 128) // 257).astype(np.uint8)
    return _stretch(values.astype(np.float64))


def _float_to_eight(values: np.ndarray) -> np.ndarray:
    """Float samples to `uint8`: [0, 1] scaled by 255, any other range min-max stretched."""
    values = np.nan_to_num(values.astype(np.float64))
    if values.min() >= 0.0 and values.max() <= 1.0:
        return np.round(values * 255.0).astype(np.uint8)
    return _stretch(values)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Min-max stretch of float samples to `uint8` (a constant image becomes 0)."""
    low, span = values.min(), values.max() - values.min()
    scaled = (values - low) / span if span > 0 else np.zeros_like(values)
    return np.round(scaled * 255.0).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """`uint8 [H, W]` -> `uint8 [H, W, 3]` by repeating the channel."""
    return np.repeat(gray[:, :, None], 3, axis=2)


def iter_images(
    paths: Iterable[str | os.PathLike[str]],
) -> Iterator[tuple[AnyPath, AnyPath]]:
    """The image files named by `paths`, as `(file, folder_argument_or_file_parent)` pairs.

    A folder is searched recursively for files whose extension is in `IMAGE_EXTENSIONS`
    (case-insensitive), hidden files and folders (names starting with '.') skipped, in
    sorted order of their path inside the folder. A path that is not a folder is yielded
    as given, whatever its extension (so a missing or unreadable file the user named gets
    reported when it is loaded rather than silently dropped). Each file is yielded once.
    Paths may be local or on an object store (`files.as_path`).
    """
    seen: set[str] = set()
    for entry in map(as_path, paths):
        if entry.is_dir():
            files = sorted(
                (p for p in files_below(entry) if _is_visible_image(p, entry)),
                key=lambda p: p.relative_to(entry).parts,
            )
            pairs = [(p, entry) for p in files]
        else:
            pairs = [(entry, entry.parent)]
        for file, root in pairs:
            key = absolute(file)
            if key not in seen:
                seen.add(key)
                yield file, root


def _is_visible_image(path: AnyPath, root: AnyPath) -> bool:
    """True for a non-hidden regular file below `root` with an image extension."""
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return not hidden and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def sample_images() -> dict[str, np.ndarray]:
    """The default sample images, name -> `uint8 [H, W, 3]`, in `SAMPLE_NAMES` order."""
    import skimage.data

    return {name: np.ascontiguousarray(getattr(skimage.data, name)()) for name in SAMPLE_NAMES}
