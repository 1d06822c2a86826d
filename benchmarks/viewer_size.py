"""Size of the viewer page (hiseg_jax.viewer) for real segmentations at two image sizes.

Segments, with the default settings (default backbone, size 448), a BSDS500 val image at its
own 481 x 321 and an ADE20K street photo centre-cropped to 16:9 and resized to 1920 x 1080
(scikit-image's astronaut stands in for either where ../shared/data is absent), then builds
each page and prints its size in bytes, split into the photo (JPEG, base64), the leaf map
(zlib, base64) and the rest (code, style, tree), and the seconds building it took. With
`--browser`, each page is also opened in headless Chromium (Debian's chromium and
chromedriver) and the script reports the seconds until the page is ready, and the
milliseconds the page's own code takes for a depth change and for a hover over a new region
(median of a few).

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/viewer_size.py [--refine guided|crf|none]
        [--browser] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import hiseg_jax
from hiseg_jax import viewer
from hiseg_jax.crf.refine import DEFAULT_REFINEMENT, METHODS, refinement_method, refinement_of

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def photos() -> dict[str, np.ndarray]:
    """name -> uint8 [H, W, 3]: a 481 x 321 and a 1920 x 1080 photo."""
    import skimage.data

    fallback = Image.fromarray(skimage.data.astronaut())
    bsds = sorted((DATA / "bsds500" / "images" / "val").glob("*.jpg"))
    small = Image.open(bsds[0]).convert("RGB") if bsds else fallback.resize((481, 321))
    ade = sorted(DATA.glob("ade20k_samples/**/*.jpg"), key=lambda p: -Image.open(p).size[0])
    large = Image.open(ade[0]).convert("RGB") if ade else fallback
    width, height = large.size
    crop = min(height, round(width * 9 / 16))
    top = (height - crop) // 2
    large = large.crop((0, top, round(crop * 16 / 9), top + crop)).resize(
        (1920, 1080), Image.Resampling.LANCZOS
    )
    return {
        f"{bsds[0].stem if bsds else 'astronaut'} 481x321": np.asarray(small),
        f"{ade[0].stem if ade else 'astronaut'} 1920x1080": np.asarray(large),
    }


_DEPTH_MS = """
const ms = [];
for (let i = 0; i < 6; i++) {
  const start = performance.now();
  const key = i % 2 ? "ArrowUp" : "ArrowDown";
  document.dispatchEvent(new KeyboardEvent("keydown", {key, bubbles: true}));
  ms.push(performance.now() - start);
}
return ms;
"""
_HOVER_MS = """
const stage = document.getElementById("stage"), box = stage.getBoundingClientRect(), ms = [];
for (let i = 0; i < 8; i++) {
  const start = performance.now();
  const at = {clientX: box.left + (i + 0.5) * box.width / 8, clientY: box.top + box.height / 2};
  stage.dispatchEvent(new MouseEvent("mousemove", {...at, bubbles: true}));
  ms.push(performance.now() - start);
}
return ms;
"""


def browser_timings(pages: list[Path]) -> list[tuple[float, float, float]]:
    """(seconds to ready, median ms of a depth change, median ms of a hover) per page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    out = []
    try:
        for page in pages:
            start = time.perf_counter()
            driver.get(page.as_uri())
            while driver.execute_script("return document.documentElement.dataset.ready") is None:
                time.sleep(0.005)
            ready = time.perf_counter() - start
            depth_ms = statistics.median(driver.execute_script(_DEPTH_MS))
            hover = [t for t in driver.execute_script(_HOVER_MS) if t > 0.5]  # new regions only
            out.append((ready, depth_ms, statistics.median(hover) if hover else 0.0))
    finally:
        driver.quit()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--refine",
        choices=METHODS,
        default=refinement_method(DEFAULT_REFINEMENT),
        help="how the leaves reach the pixels, as hiseg segment --refine (default: %(default)s)",
    )
    parser.add_argument("--browser", action="store_true", help="time the pages in Chromium")
    parser.add_argument("--out", type=Path, help="also write the pages into this folder")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="viewer_size_"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    refine = refinement_of(args.refine)
    print(
        f"{'image':>32} {'nodes':>5} {'leaves':>6} {'page B':>9} {'photo B':>9} "
        f"{'leaves B':>8} {'other B':>8} {'build s':>7}"
    )
    for name, image in photos().items():
        result = hiseg_jax.segment([image], refine=refine)
        rows = [
            np.asarray(r[0]) for r in (result.tree.parent, result.tree.depth, result.tree.valid)
        ]
        start = time.perf_counter()
        data = viewer.page_data(image, result.level_labels[0], *rows, title=name)
        page = viewer.page_html(data)
        seconds = time.perf_counter() - start
        total, photo, leaves = len(page.encode()), len(data["image"]), len(data["leaves"])
        print(
            f"{name:>32} {int(rows[2].sum()):>5} {len(data['leafIds']):>6} {total:>9} "
            f"{photo:>9} {leaves:>8} {total - photo - leaves:>8} {seconds:>7.2f}"
        )
        written.append(out / f"{name.replace(' ', '_')}.html")
        written[-1].write_text(page, encoding="utf-8")
    if args.browser:
        print(f"\n{'page':>40} {'ready s':>7} {'depth ms':>8} {'hover ms':>8}")
        for path, (ready, depth_ms, hover_ms) in zip(
            written, browser_timings(written), strict=True
        ):
            print(f"{path.name:>40} {ready:>7.2f} {depth_ms:>8.1f} {hover_ms:>8.1f}")


if __name__ == "__main__":
    main()
