"""The drawing page end to end in a real headless browser (Debian's chromium through chromium-driver):
digits drawn with real pointer events on `mnistlab serve` running a model trained on real MNIST.

Needs real MNIST (../shared/data/mnist), chromium and chromium-driver (`apt-get install -y chromium
chromium-driver`) and selenium; without them it is skipped, with the reason shown. Set
MNISTLAB_SERVE_SCREENSHOT=docs/figures/serve.png to also write the screenshot there.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]

# Strokes in fractions of the canvas side: (x, y) corners, drawn as straight segments or arcs.
ONE = [[(0.52, 0.18), (0.50, 0.82)]]
SEVEN = [[(0.30, 0.22), (0.72, 0.22), (0.44, 0.84)]]


def three() -> list[list[tuple[float, float]]]:
    """A 3 as one stroke: two bowls opening to the left."""
    upper = [(0.50 + 0.17 * math.sin(t), 0.35 - 0.15 * math.cos(t)) for t in
             (math.radians(a) for a in range(-70, 181, 15))]
    lower = [(0.50 + 0.19 * math.sin(t), 0.66 - 0.16 * math.cos(t)) for t in
             (math.radians(a) for a in range(0, 251, 15))]
    return [upper + lower]


# ---------------------------------------------------------------------------
# Fixtures: a model, the server, the browser


@pytest.fixture(scope="module")
def mnist_run(real_mnist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "fast-mnist"
    r = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--recipe", "fast", "--data-dir",
                        str(real_mnist), "--out", str(out), "--no-plots"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    return out


def serving(mnist_run: Path, *flags: str):
    """`mnistlab serve RUN --port 0 FLAGS` until the generator is closed: yields the address it printed
    for this machine (with its token, if any); stopped with Ctrl-C, which must end it cleanly."""
    process = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(mnist_run), "--port", "0", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        match = re.search(r"http://127\.0\.0\.1:\d+/(\?token=[A-Za-z0-9_-]+)?", "".join(lines))
        assert match, f"no address printed: {lines!r} {process.stderr.read() if process.poll() else ''}"
        yield match.group(0)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def server(mnist_run):
    """`mnistlab serve` on 127.0.0.1, on a free port chosen by the system; its address."""
    for url in serving(mnist_run):
        with urllib.request.urlopen(url + "api/health", timeout=30) as r:
            assert r.status == 200
        yield url


@pytest.fixture(scope="module")
def classroom(mnist_run):
    """`mnistlab serve --host 0.0.0.0`: the token address it prints for this machine."""
    for url in serving(mnist_run, "--host", "0.0.0.0"):
        assert "?token=" in url
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromedriver not found: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.common.exceptions import WebDriverException

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    except WebDriverException as e:
        pytest.skip(f"chromium cannot be launched: {str(e.msg or e).strip().splitlines()[0]}")
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def open_page(driver, url: str, width: int, height: int, scale: float, mobile: bool = False) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile})
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": mobile, "maxTouchPoints": 5})
    driver.get(url)
    wait_for(driver, "document.body.dataset.state === 'empty' && document.querySelectorAll('.bar-row').length")


# ---------------------------------------------------------------------------
# Driving the page


def wait_for(driver, condition: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(f"return {condition};"), message=f"waited {timeout} s for {condition}")


def canvas_rect(driver) -> dict:
    return driver.execute_script(
        "const r = document.getElementById('canvas').getBoundingClientRect();"
        "return {left: r.left, top: r.top, width: r.width, height: r.height};")


def draw(driver, strokes, pointer: str = "mouse") -> None:
    """Each stroke as real pointer events (down, many moves, up) at the canvas's place on the screen."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    kind = {"mouse": interaction.POINTER_MOUSE, "touch": interaction.POINTER_TOUCH,
            "pen": interaction.POINTER_PEN}[pointer]
    rect = canvas_rect(driver)
    actions = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=15)

    def at(x: float, y: float) -> tuple[int, int]:
        return round(rect["left"] + x * rect["width"]), round(rect["top"] + y * rect["height"])

    for stroke in strokes:
        points = []
        for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
            steps = max(1, round(math.dist((x0, y0), (x1, y1)) / 0.02))  # a move every 2% of the side
            points += [(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps) for i in range(steps)]
        points.append(stroke[-1])
        actions.pointer_action.move_to_location(*at(*points[0]))
        actions.pointer_action.pointer_down()
        for point in points[1:]:
            actions.pointer_action.move_to_location(*at(*point))
        actions.pointer_action.pointer_up()
    actions.perform()


def answer(driver) -> str:
    """The predicted class on the page, once the answer is for the drawing as it is now."""
    wait_for(driver, "['done', 'error'].includes(document.body.dataset.state)")
    state = driver.execute_script("return document.body.dataset.state")
    status = driver.execute_script("return document.getElementById('status').textContent")
    assert state == "done", f"the page shows an error: {status}"
    return driver.execute_script("return document.getElementById('label').textContent")


def canvas_pixel(driver, x: float, y: float) -> int:
    """Grey level of the drawing canvas's backing store at (x, y) in fractions of its side."""
    return driver.execute_script(
        "const c = document.getElementById('canvas');"
        "const d = c.getContext('2d').getImageData(Math.round(arguments[0] * c.width),"
        " Math.round(arguments[1] * c.height), 1, 1).data; return d[0];", x, y)


PANEL_STATS = """
const prep = document.getElementById('prepared');
const p = prep.getContext('2d').getImageData(0, 0, 28, 28).data;
let bright = 0;
for (let i = 0; i < p.length; i += 4) if (p[i] > 100) bright++;
const layers = [...document.querySelectorAll('#layers canvas')].map((c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  for (let i = 0; i < d.length; i += 4) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return colours.size;
});
const bars = [...document.querySelectorAll('.bar-row')].map((r) => parseFloat(r.querySelector('.bar-value').textContent));
return {bright, layers, bars, best: document.querySelector('.bar-row.best')?.dataset.index};
"""


def screenshot(driver, tmp_path: Path) -> None:
    """A screenshot at the page's CSS size, in tmp_path and where MNISTLAB_SERVE_SCREENSHOT says."""
    from PIL import Image

    raw = tmp_path / "serve-raw.png"
    driver.execute_script("document.activeElement.blur()")
    driver.save_screenshot(str(raw))
    width = driver.execute_script("return window.innerWidth")
    with Image.open(raw) as image:
        scaled = image.convert("RGB").resize((width, round(image.height * width / image.width)),
                                             Image.Resampling.LANCZOS)
    targets = [tmp_path / "serve.png"]
    if os.environ.get("MNISTLAB_SERVE_SCREENSHOT"):
        targets.append(Path(os.environ["MNISTLAB_SERVE_SCREENSHOT"]))
    for target in targets:
        scaled.save(target, optimize=True)
        print(f"screenshot: {target}")


# ---------------------------------------------------------------------------
# The tests


def test_drawing_a_one_a_seven_and_a_three_shows_the_right_class_the_input_and_the_hidden_layers(
        browser, server, tmp_path):
    open_page(browser, server, 1200, 860, scale=2)
    rect = canvas_rect(browser)
    # the backing store is in device pixels, so strokes land under the pointer
    assert browser.execute_script("return document.getElementById('canvas').width") == round(rect["width"] * 2)
    assert canvas_pixel(browser, 0.5, 0.5) == 255  # white paper, painted

    draw(browser, ONE)
    assert answer(browser) == "1"
    assert canvas_pixel(browser, 0.51, 0.5) < 60  # ink right under the pointer's path
    assert canvas_pixel(browser, 0.7, 0.5) == 255
    stats = browser.execute_script(PANEL_STATS)
    assert stats["best"] == "1" and max(stats["bars"]) == stats["bars"][1] and 99 <= sum(stats["bars"]) <= 101
    assert stats["bright"] >= 20  # the 28x28 input is drawn
    assert len(stats["layers"]) == 2 and min(stats["layers"]) >= 8  # both hidden layers, in many shades

    browser.find_element("id", "clear").click()
    wait_for(browser, "document.body.dataset.state === 'empty'")
    draw(browser, SEVEN)
    assert answer(browser) == "7"
    assert browser.execute_script(PANEL_STATS)["bright"] >= 20

    # Undo from the keyboard takes the last stroke away; Clear from the keyboard empties everything.
    from selenium.webdriver.common.keys import Keys

    draw(browser, [[(0.1, 0.9), (0.2, 0.9)]])
    assert canvas_pixel(browser, 0.15, 0.9) < 60
    browser.find_element("id", "undo").send_keys(Keys.SPACE)
    assert canvas_pixel(browser, 0.15, 0.9) == 255
    assert answer(browser) == "7"

    browser.execute_script("document.getElementById('clear').focus()")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(browser, "document.body.dataset.state === 'empty'")
    assert browser.find_element("id", "label").text == "–"
    blank = browser.execute_script(
        "const c = document.getElementById('canvas');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "return d.every((v) => v === 255);")
    assert blank, "Clear left ink on the canvas"
    assert browser.execute_script(PANEL_STATS)["bright"] == 0

    # A photo through "Open picture...": dark ink on uneven paper, the size of a phone's picture.
    from PIL import Image, ImageDraw

    photo = Image.linear_gradient("L").resize((1200, 1600)).point(lambda v: 150 + v // 3).convert("RGB")
    ImageDraw.Draw(photo).line([(380, 420), (820, 420), (520, 1180)], fill=(40, 40, 60), width=45)
    photo.save(tmp_path / "seven.jpg", quality=90)
    browser.find_element("id", "file").send_keys(str(tmp_path / "seven.jpg"))
    assert answer(browser) == "7"
    assert canvas_pixel(browser, 0.5, 0.5) < 250  # the photo is shown on the canvas

    browser.find_element("id", "clear").click()
    draw(browser, three())
    assert answer(browser) == "3"
    screenshot(browser, tmp_path)


def test_on_a_phone_the_page_is_one_column_and_a_finger_draws_instead_of_scrolling(browser, server):
    open_page(browser, server, 390, 844, scale=3, mobile=True)
    layout = browser.execute_script("""
        const box = (s) => document.querySelector(s).getBoundingClientRect();
        return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
                draw: box('.draw'), result: box('.result'), inside: box('.inside')};""")
    assert layout["scroll"] <= layout["inner"], "the page scrolls sideways"
    assert layout["draw"]["right"] <= layout["inner"] and layout["draw"]["width"] > 0.8 * layout["inner"]
    assert layout["result"]["top"] >= layout["draw"]["bottom"] - 1  # stacked, not side by side
    assert layout["inside"]["top"] >= layout["result"]["bottom"] - 1
    assert browser.execute_script("return document.getElementById('canvas').width") == round(
        canvas_rect(browser)["width"] * 3)

    before = browser.execute_script("return window.scrollY")
    draw(browser, SEVEN, pointer="touch")
    assert answer(browser) == "7"
    assert browser.execute_script("return window.scrollY") == before
    assert canvas_pixel(browser, 0.5, 0.22) < 60


def test_a_classroom_server_refuses_the_page_without_its_token_and_works_from_the_token_address(
        browser, classroom):
    plain = classroom.split("?")[0]
    browser.delete_all_cookies()
    browser.get(plain)  # the address without its token: the page loads, its API calls are refused
    wait_for(browser, "document.body.dataset.state === 'error'")
    assert "needs its token" in browser.find_element("id", "status").text

    open_page(browser, classroom, 1200, 860, scale=1)  # the printed address: the page keeps the token
    assert browser.current_url == plain  # redirected: the token is not left in the address bar
    draw(browser, SEVEN)
    assert answer(browser) == "7"
    browser.refresh()  # and it still works when reloaded from the plain address
    wait_for(browser, "document.body.dataset.state === 'empty' && document.querySelectorAll('.bar-row').length")
    draw(browser, ONE)
    assert answer(browser) == "1"
