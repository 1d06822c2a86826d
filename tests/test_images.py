"""Image loading: every Pillow mode to the RGB a viewer shows, clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from segment_cases import write_bad_files

from hiseg_jax.images import (
    SAMPLE_NAMES,
    ImageLoadError,
    iter_images,
    load_image,
    sample_images,
)


def _gradient(height: int = 12, width: int = 20) -> np.ndarray:
    """An RGB image whose every pixel differs from its mirror images (no symmetry)."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x * 12, y * 20, (x * y) % 256], axis=-1).astype(np.uint8)


def test_rgb_png_round_trips(tmp_path):
    image = _gradient()
    Image.fromarray(image).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, image)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _gradient()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.shape == gray.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(loaded[:, :, c], gray)


def test_bilevel_image(tmp_path):
    bits = _gradient()[:, :, 0] > 100
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    loaded = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(loaded[:, :, 1], np.where(bits, 255, 0))


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 0, 0)  # red underneath everywhere
    rgba[:2, :, 3] = 255  # top half opaque
    rgba[2:, :2, 3] = 0  # bottom-left fully transparent
    rgba[2:, 2:, 3] = 128  # bottom-right half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    loaded = load_image(tmp_path / "t.png").astype(int)
    np.testing.assert_array_equal(loaded[0, 0], (200, 0, 0))
    np.testing.assert_array_equal(loaded[3, 0], (255, 255, 255))
    np.testing.assert_allclose(loaded[3, 3], (227.5, 127.5, 127.5), atol=1.5)


def test_gray_with_alpha_is_composited_on_white(tmp_path):
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 1] = [[255, 0], [255, 0]]
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    loaded = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(loaded[:, 0], 0)
    np.testing.assert_array_equal(loaded[:, 1], 255)


def test_palette_image_with_and_without_transparency(tmp_path):
    index = np.array([[0, 1], [2, 1]], np.uint8)
    palette = [10, 20, 30, 200, 100, 0, 0, 0, 250] + [0] * (256 * 3 - 9)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette)
    image.save(tmp_path / "p.png")
    image.save(tmp_path / "pt.png", transparency=1)
    opaque, transparent = load_image(tmp_path / "p.png"), load_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(opaque[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(opaque[0, 1], (200, 100, 0))
    np.testing.assert_array_equal(opaque[1, 0], (0, 0, 250))
    np.testing.assert_array_equal(transparent[0, 1], (255, 255, 255))
    np.testing.assert_array_equal(transparent[1, 0], (0, 0, 250))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768], [65535, 1000, 65280]], np.uint16)
    Image.fromarray(values).save(tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as check:
        assert check.mode.startswith("I")
    loaded = load_image(tmp_path / "s.png")
    expected = np.array([[0, 1, 128], [255, 4, 254]], np.uint8)
    np.testing.assert_array_equal(loaded[:, :, 0], expected)
    np.testing.assert_array_equal(loaded[:, :, 2], expected)


def test_float_tiff_in_unit_range(tmp_path):
    values = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    loaded = load_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(loaded[:, :, 0], [[0, 128], [255, 64]])


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "c.jpg", quality=95)
    loaded = load_image(tmp_path / "c.jpg").astype(int)
    assert loaded.shape == (8, 8, 3)
    assert loaded[..., 0].min() > 200 and loaded[..., 1:].max() < 60


@pytest.mark.parametrize(
    ("orientation", "transform"),
    [
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored rotated: display turns it 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, transform):
    """A camera stores pixels unrotated plus an EXIF tag; the user expects the turned image."""
    stored = np.kron(_gradient(6, 10), np.ones((4, 4, 1), np.uint8))  # blocks survive JPEG
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=98)
    loaded = load_image(tmp_path / "r.jpg").astype(int)
    expected = transform(stored).astype(int)
    assert loaded.shape == expected.shape
    assert np.abs(loaded - expected).mean() < 4.0


def test_first_frame_of_animated_gif(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    loaded = load_image(tmp_path / "a.gif")
    assert loaded[0, 0, 0] > 200 and loaded[0, 0, 2] < 50


def test_bad_files_raise_clear_errors(tmp_path):
    expected = write_bad_files(tmp_path)
    for name, phrase in expected.items():
        with pytest.raises(ImageLoadError, match=phrase) as info:
            load_image(tmp_path / name)
        assert name in str(info.value)
        assert isinstance(info.value, ValueError)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_iter_images_recurses_sorted_and_filters(tmp_path):
    for rel in [
        "b.png",
        "a.JPG",
        "sub/z.tif",
        "sub/deeper/c.jpeg",
        "notes.txt",
        ".hidden/x.png",
        "._junk.png",
        "sub/readme.md",
    ]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    extra = tmp_path / "notes.txt"
    found = list(iter_images([tmp_path, extra, tmp_path / "b.png"]))
    relative = [file.relative_to(tmp_path).as_posix() for file, _ in found]
    assert relative == ["a.JPG", "b.png", "sub/deeper/c.jpeg", "sub/z.tif", "notes.txt"]
    assert all(root == tmp_path for _, root in found)
    assert list(iter_images([tmp_path])) == list(iter_images([tmp_path]))


def test_sample_images():
    samples = sample_images()
    assert tuple(samples) == SAMPLE_NAMES
    for image in samples.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 256
