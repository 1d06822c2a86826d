"""The viewer page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): what it draws and lists equals the label maps, and every control works.

One browser for the module; pointer input goes through the DevTools protocol
(`Input.dispatchMouseEvent`) at exact coordinates, keys through WebDriver. Skips only where
no Chromium, chromedriver or Selenium can be found (`.ci/run` installs them).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from viewer_cases import page_text, random_hierarchy

from hiseg_jax import pictures

HEIGHT, WIDTH = 321, 481
SHADE = (16, 19, 26, 165)  # viewer.js: pixels outside the open region


def _browser_paths() -> tuple[str, str]:
    binary = next(
        (p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None
    )
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run does)"
        )
    return binary, driver


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _browser_paths()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    """A 481 x 321 page of a random 4-level tree (irregular leaves, unused slots)."""
    import skimage.data

    image = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((WIDTH, HEIGHT)))
    tree = random_hierarchy(HEIGHT, WIDTH, seed=4)
    path = tmp_path_factory.mktemp("page") / "viewer.html"
    args = (image, tree["levels"], tree["parent"], tree["depth"], tree["valid"])
    path.write_text(page_text(*args, title="test page"), encoding="utf-8")
    colors = pictures.node_colors(tree["levels"])
    for level in tree["levels"]:
        shown = np.unique(level)
        assert len({tuple(c) for c in colors[shown]}) == len(shown), (
            "colours must tell each depth's regions apart"
        )
    return {**tree, "path": path, "colors": colors, "image": image}


def _open(driver, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    WebDriverWait(driver, 10, poll_frequency=0.02).until(
        lambda d: d.execute_script("return document.documentElement.dataset.ready") == "true",
        "the page never became ready",
    )


@pytest.fixture
def page(browser, case):
    """The test page freshly loaded (whole image, depth 1, overlay)."""
    _open(browser, case["path"])
    return browser


def _canvas(driver, name: str) -> np.ndarray:
    """uint8 [H, W, 4]: the pixels of canvas `name`, read back through a PNG data URL."""
    url = driver.execute_script(f"return document.getElementById('{name}').toDataURL()")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def _cut(driver) -> list[int]:
    chips = driver.execute_script(
        "return [...document.querySelectorAll('#cut .chip')].map(c => Number(c.dataset.node))"
    )
    return sorted(chips)


def _mouse(driver, kind: str, x: float, y: float) -> None:
    event = {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
    if kind == "mouseMoved":
        event["button"] = "none"
    driver.execute_cdp_cmd("Input.dispatchMouseEvent", event)


def _at_pixel(driver, x: int, y: int) -> tuple[float, float]:
    """Viewport coordinates of the centre of image pixel (x, y)."""
    box = driver.execute_script("return document.getElementById('stage').getBoundingClientRect()")
    return (
        box["left"] + (x + 0.5) * box["width"] / WIDTH,
        box["top"] + (y + 0.5) * box["height"] / HEIGHT,
    )


def _hover_pixel(driver, x: int, y: int) -> None:
    _mouse(driver, "mouseMoved", *_at_pixel(driver, x, y))


def _click_pixel(driver, x: int, y: int) -> None:
    point = _at_pixel(driver, x, y)
    _mouse(driver, "mouseMoved", *point)
    _mouse(driver, "mousePressed", *point)
    _mouse(driver, "mouseReleased", *point)


def _keys(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    actions = ActionChains(driver)
    for key in keys:
        actions.send_keys(key)
    actions.perform()


def _info(driver) -> dict:
    return driver.execute_script(
        "const i = document.getElementById('info');"
        "const f = {node: Number(i.dataset.node)};"
        "i.querySelectorAll('dd').forEach(d => { f[d.dataset.field] = d.textContent; });"
        "return f;"
    )


def _expected_fill(case: dict, labels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4]: node colours, opaque; transparent where `labels` is -1."""
    colors = np.concatenate([case["colors"], np.full((len(case["colors"]), 1), 255)], 1)
    return np.where((labels >= 0)[..., None], colors[np.maximum(labels, 0)], 0).astype(np.uint8)


def _check_view(driver, case: dict, labels: np.ndarray) -> None:
    """The overlay and outline canvases show exactly `labels` (node ids; -1: outside)."""
    np.testing.assert_array_equal(_canvas(driver, "fill"), _expected_fill(case, labels))
    edges = _canvas(driver, "edges").astype(int)
    border = pictures.boundary_mask(labels, 1)
    shade = (labels < 0) & ~border
    np.testing.assert_array_equal(edges[border], 255)
    np.testing.assert_array_equal(edges[~border & ~shade], 0)
    # translucent pixels are stored premultiplied: their colour comes back within rounding
    np.testing.assert_array_equal(edges[shade][:, 3], SHADE[3])
    np.testing.assert_allclose(
        edges[shade][:, :3], np.broadcast_to(SHADE[:3], (shade.sum(), 3)), atol=2
    )


def _interior_pixels(
    labels: np.ndarray, count: int, seed: int = 0, only: int | None = None
) -> list[tuple[int, int]]:
    """(x, y) of `count` random pixels whose 5 x 5 neighbourhood has a single label (`only`,
    if given)."""
    calm = ndimage.minimum_filter(labels, 5) == ndimage.maximum_filter(labels, 5)
    if only is not None:
        calm &= labels == only
    ys, xs = np.nonzero(calm)
    pick = np.random.default_rng(seed).choice(len(ys), count, replace=False)
    return [(int(xs[i]), int(ys[i])) for i in pick]


def _children(case: dict, m: int) -> list[int]:
    return sorted(np.flatnonzero(case["valid"] & (case["parent"] == m)).tolist())


def _inside(case: dict, m: int) -> np.ndarray:
    return case["levels"][case["depth"][m]] == m


def _depth_cut(case: dict, d: int) -> list[int]:
    """Nodes of depth d, and leaves above d: the cut of the whole image at depth d."""
    valid, depth, parent = case["valid"], case["depth"], case["parent"]
    has_children = np.isin(np.arange(len(valid)), parent[valid])
    return sorted(np.flatnonzero(valid & ((depth == d) | ((depth < d) & ~has_children))).tolist())


def test_every_depth_shows_exactly_its_label_map(page, case):
    levels = case["levels"]
    deepest = int(case["depth"][case["valid"]].max())
    for d in range(1, deepest + 1):
        if d > 1:
            _keys(page, "\ue015")  # ArrowDown: one level finer
        assert page.execute_script("return Number(document.getElementById('depth').value)") == d
        _check_view(page, case, levels[d])
        assert _cut(page) == _depth_cut(case, d)
        assert set(np.unique(levels[d])) <= set(_cut(page))
        for x, y in _interior_pixels(levels[d], 6, seed=d):
            _hover_pixel(page, x, y)
            info = _info(page)
            m = int(levels[d][y, x])
            assert info["node"] == m
            assert info["depth"] == str(case["depth"][m])
            assert info["area"].endswith(f"{int(_inside(case, m).sum()):,} px")
            n_children = len(_children(case, m))
            assert info["children"] == (str(n_children) if n_children else "none (leaf)")


def test_click_opens_a_region_and_back_restores_the_cut(page, case):
    levels, depth = case["levels"], case["depth"]
    opened = max(_children(case, 0), key=lambda m: _inside(case, m).sum())
    x, y = _interior_pixels(levels[1], 1, only=opened)[0]
    _click_pixel(page, x, y)
    assert _cut(page) == _children(case, opened)
    inside = _inside(case, opened)
    _check_view(page, case, np.where(inside, levels[depth[opened] + 1], -1))
    crumbs = page.execute_script(
        "return [...document.querySelectorAll('#crumbs [data-node]')].map(c => c.dataset.node)"
    )
    assert crumbs == ["0", str(opened)]

    _keys(page, "\ue00c")  # Escape
    assert _cut(page) == _depth_cut(case, 1)
    _check_view(page, case, levels[1])

    _click_pixel(page, x, y)  # open again, then one more level, then the breadcrumb's root
    inner = next(m for m in _children(case, opened) if _children(case, m))
    ix, iy = _interior_pixels(levels[depth[inner]], 1, only=inner)[0]
    _click_pixel(page, ix, iy)
    assert _cut(page) == _children(case, inner)
    page.find_element("css selector", "#crumbs button.crumb[data-node='0']").click()
    assert _cut(page) == _depth_cut(case, 1)
    _check_view(page, case, levels[1])


def test_clicking_outside_the_open_region_goes_back(page, case):
    levels = case["levels"]
    opened = _children(case, 0)[0]
    x, y = _interior_pixels(levels[1], 1, only=opened)[0]
    _click_pixel(page, x, y)
    assert _cut(page) == _children(case, opened)
    ox, oy = _interior_pixels(np.where(levels[1] == opened, -1, levels[1]), 1)[0]
    _click_pixel(page, ox, oy)
    assert _cut(page) == _depth_cut(case, 1)


def test_slider_changes_the_cut(page, case):
    page.execute_script("document.getElementById('depth').focus()")
    _keys(page, "\ue014")  # ArrowRight on the focused slider: its native step
    assert page.execute_script("return Number(document.getElementById('depth').value)") == 2
    assert _cut(page) == _depth_cut(case, 2)
    _check_view(page, case, case["levels"][2])
    box = page.execute_script("return document.getElementById('depth').getBoundingClientRect()")
    end = (box["right"] - 2, box["top"] + box["height"] / 2)  # a click at the track's end
    _mouse(page, "mousePressed", *end)
    _mouse(page, "mouseReleased", *end)
    deepest = int(case["depth"][case["valid"]].max())
    assert _cut(page) == _depth_cut(case, deepest)
    _check_view(page, case, case["levels"][deepest])


def test_keyboard_drives_every_action(page, case):
    _keys(page, "\ue014")  # ArrowRight: select the largest region
    first = page.execute_script("return Number(document.querySelector('#cut .chip').dataset.node)")
    selected = page.execute_script(
        "return document.querySelector('#cut .chip[aria-selected=\"true\"]').dataset.node"
    )
    assert selected == str(first) and _info(page)["node"] == first
    hl = _canvas(page, "hl")
    assert (hl[..., 3] > 0)[_inside(case, first)].all()
    _keys(page, "\ue014", "\ue012")  # right then left: back on the first
    assert _info(page)["node"] == first
    _keys(page, "\ue007")  # Enter: open it
    assert _cut(page) == _children(case, first)
    _keys(page, "\ue003")  # Backspace: back
    assert _cut(page) == _depth_cut(case, 1)
    _keys(page, "\ue015", "\ue015", "\ue013")  # down, down, up: depth 2
    assert _cut(page) == _depth_cut(case, 2)
    _keys(page, "o")
    assert (
        page.execute_script("return getComputedStyle(document.getElementById('fill')).visibility")
        == "hidden"
    )
    assert page.find_element("id", "mode-outline").get_attribute("aria-pressed") == "true"
    _keys(page, "o")
    assert (
        page.execute_script("return getComputedStyle(document.getElementById('fill')).visibility")
        == "visible"
    )


def test_mode_buttons_toggle_overlay_and_outlines(page):
    page.find_element("id", "mode-outline").click()
    assert page.execute_script("return document.body.classList.contains('outline')")
    page.find_element("id", "mode-fill").click()
    assert not page.execute_script("return document.body.classList.contains('outline')")


def test_tree_nodes_highlight_their_region(page, case):
    for m in (_children(case, 0)[-1], int(np.flatnonzero(case["valid"])[-1])):
        box = page.execute_script(
            f"return document.querySelector('#tree .node[data-node=\"{m}\"] circle')"
            ".getBoundingClientRect()"
        )
        _mouse(page, "mouseMoved", box["left"] + box["width"] / 2, box["top"] + box["height"] / 2)
        assert _info(page)["node"] == m
        lit = _canvas(page, "hl")[..., 3] > 0
        inside = _inside(case, m)
        assert lit[inside].all()
        assert not (lit & ~ndimage.binary_dilation(inside, iterations=2)).any()
        assert page.execute_script(
            f"return document.querySelector('#tree .node[data-node=\"{m}\"]')"
            ".classList.contains('hover')"
        )


def test_no_console_error_and_no_network_request(browser, case):
    browser.get_log("browser")
    browser.get_log("performance")
    _open(browser, case["path"])
    _keys(browser, "\ue014", "\ue007", "\ue00c", "\ue015")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls and all(u == case["path"].as_uri() or u.startswith("data:") for u in urls), urls
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def test_large_page_thick_outlines_and_many_leaves(browser, tmp_path):
    """1024 x 683 (outlines 2 px, as render_level) with 300 leaves (16-bit leaf map)."""
    height, width = 683, 1024
    rows = ((2 * np.arange(height) + 1) * 15) // (2 * height)
    cols = ((2 * np.arange(width) + 1) * 20) // (2 * width)
    leaf = (rows[:, None] * 20 + cols[None, :]).astype(np.int32)  # 300 blocks
    slots = 1 + 2 * 300
    parent = np.full(slots, -1, np.int32)
    depth = np.zeros(slots, np.int32)
    parent[1:6], depth[1:6] = 0, 1
    parent[301:], depth[301:] = 1 + (np.arange(300) % 5), 2
    valid = parent >= 0
    valid[0] = True
    levels = np.stack([np.zeros_like(leaf), 1 + leaf % 5, 301 + leaf])
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    path = tmp_path / "large.html"
    path.write_text(page_text(image, levels, parent, depth, valid, title="large"))
    _open(browser, path)
    case = {"colors": pictures.node_colors(levels)}
    for d in (1, 2):
        if d == 2:
            _keys(browser, "\ue015")
        np.testing.assert_array_equal(_canvas(browser, "fill"), _expected_fill(case, levels[d]))
        edge = _canvas(browser, "edges")[..., 3] == 255
        np.testing.assert_array_equal(edge, pictures.boundary_mask(levels[d], 2))


def test_a_tree_that_never_split(browser, tmp_path):
    """Only the root: one region, the slider disabled, clicking explains it is a leaf."""
    image = np.full((30, 40, 3), 200, np.uint8)
    levels = np.zeros((3, 30, 40), np.int32)
    valid = np.zeros(5, bool)
    valid[0] = True
    path = tmp_path / "root.html"
    path.write_text(page_text(image, levels, np.full(5, -1), np.zeros(5), valid, title="r"))
    browser.get_log("browser")
    _open(browser, path)
    assert _cut(browser) == [0]
    assert browser.execute_script("return document.getElementById('depth').disabled")
    _keys(browser, "\ue014", "\ue007")
    assert "leaf" in browser.find_element("css selector", "#info .hint").text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
