"""The lab's page end to end in a real headless browser (Debian's chromium through chromium-driver):
digits drawn with real pointer events on `mnistlab serve` running a model trained on real MNIST, its
preparation and saliency map following the drawing, and its confusion matrix opened onto test images.

Needs real MNIST (../shared/data/mnist), chromium and chromium-driver (`apt-get install -y chromium
chromium-driver`) and selenium; without them it is skipped, with the reason shown. Set
MNISTLAB_SERVE_SCREENSHOT=docs/figures/serve.png to also write the screenshot there, and
MNISTLAB_LAB_FIGURES=docs/figures to write the whole Draw and Explore views there (lab-draw.png,
lab-explore.png).
"""

from __future__ import annotations

import base64
import json
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


def screenshot(driver, tmp_path: Path, name: str = "serve.png", whole: bool = False) -> None:
    """A screenshot at the page's CSS size (`whole`: the whole page, not only the window), in tmp_path and
    where MNISTLAB_SERVE_SCREENSHOT (serve.png) or MNISTLAB_LAB_FIGURES (the others) say."""
    from PIL import Image

    raw = tmp_path / f"raw-{name}"
    driver.execute_script("document.activeElement.blur()")
    if whole:
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        raw.write_bytes(base64.b64decode(shot["data"]))
    else:
        driver.save_screenshot(str(raw))
    width = driver.execute_script("return window.innerWidth")
    with Image.open(raw) as image:
        scaled = image.convert("RGB").resize((width, round(image.height * width / image.width)),
                                             Image.Resampling.LANCZOS)
    targets = [tmp_path / name]
    if name == "serve.png" and os.environ.get("MNISTLAB_SERVE_SCREENSHOT"):
        targets.append(Path(os.environ["MNISTLAB_SERVE_SCREENSHOT"]))
    elif name != "serve.png" and os.environ.get("MNISTLAB_LAB_FIGURES"):
        targets.append(Path(os.environ["MNISTLAB_LAB_FIGURES"]) / name)
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
        return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth, tabs: box('nav.views'),
                draw: box('.draw'), result: box('.result'), why: box('.why'), inside: box('.inside'),
                prep: box('.prep'), first: box('.first')};""")
    assert layout["scroll"] <= layout["inner"], "the page scrolls sideways"
    assert 0 < layout["tabs"]["right"] <= layout["inner"] and layout["tabs"]["bottom"] <= layout["draw"]["top"]
    assert layout["draw"]["right"] <= layout["inner"] and layout["draw"]["width"] > 0.8 * layout["inner"]
    order = ["draw", "result", "why", "inside", "prep", "first"]  # stacked, not side by side
    for above, below in zip(order, order[1:]):
        assert layout[below]["top"] >= layout[above]["bottom"] - 1, (above, below)
        assert layout[below]["right"] <= layout["inner"]
    assert browser.execute_script("return document.getElementById('canvas').width") == round(
        canvas_rect(browser)["width"] * 3)

    before = browser.execute_script("return window.scrollY")
    draw(browser, SEVEN, pointer="touch")
    assert answer(browser) == "7"
    assert browser.execute_script("return window.scrollY") == before
    assert canvas_pixel(browser, 0.5, 0.22) < 60
    steps = browser.execute_script(
        "return [...document.querySelectorAll('#steps .step')].map((s) => s.getBoundingClientRect().right)")
    assert len(steps) == 5 and max(steps) <= layout["inner"]

    # Explore: the whole matrix, its ten columns and the accuracy, within the phone's width
    browser.find_element("css selector", 'nav.views a[data-view="explore"]').click()
    wait_for(browser, "document.getElementById('examples').dataset.state === 'ready'", timeout=120)
    explore = browser.execute_script("""
        const box = (s) => document.querySelector(s).getBoundingClientRect();
        return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth, matrix: box('#matrix'),
                wrap: box('.matrix-wrap'), examples: box('#examples'), cells: document.querySelectorAll('#matrix button').length};""")
    assert explore["scroll"] <= explore["inner"], "the Explore view scrolls sideways"
    assert explore["matrix"]["right"] <= explore["wrap"]["right"] + 1, "the matrix needs scrolling"
    assert explore["cells"] == 100 and explore["examples"]["right"] <= explore["inner"]


SALIENCY = """
const c = document.getElementById('saliency');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let red = 0, blue = 0;
for (let i = 0; i < d.length; i += 4) { if (d[i] > d[i + 2] + 40) red++; else if (d[i + 2] > d[i] + 40) blue++; }
return {pixels: Array.from(d), red, blue, target: c.dataset.target,
        caption: document.getElementById('saliency-caption').textContent};
"""

STEPS = """
return [...document.querySelectorAll('#steps .step')].map((s) => {
  const img = s.querySelector('img');
  return {name: s.dataset.step, loaded: img.complete && img.naturalWidth > 0, width: img.naturalWidth,
          height: img.naturalHeight, caption: s.querySelector('figcaption').textContent,
          crop: !!s.querySelector('.crop')};
});
"""


def test_the_preparation_steps_the_saliency_map_and_the_first_layer_follow_the_drawing(browser, server, tmp_path):
    open_page(browser, server, 1200, 860, scale=1)
    draw(browser, ONE)
    assert answer(browser) == "1"
    steps = browser.execute_script(STEPS)
    assert [s["name"] for s in steps] == ["drawn", "ink", "cropped", "fitted", "centred"]
    assert all(s["loaded"] for s in steps)
    assert (steps[-1]["width"], steps[-1]["height"]) == (28, 28) and steps[3]["height"] == 20  # a 1 is tall
    assert steps[2]["width"] < steps[2]["height"] / 3  # cropped to a thin stroke
    assert steps[1]["crop"] and "20x20" in steps[3]["caption"] and "centred by mass" in steps[4]["caption"]
    one = browser.execute_script(SALIENCY)
    assert one["target"] == "1" and one["red"] >= 10  # the stroke's pixels push the 1 up
    assert "Class 1 (the prediction)" in one["caption"]
    units = browser.execute_script("return document.querySelectorAll('#first-layer canvas').length")
    assert units == 8
    assert "most active of the 128 units" in browser.find_element("id", "first-layer-caption").text

    browser.find_element("id", "clear").click()
    wait_for(browser, "document.body.dataset.state === 'empty'")
    assert browser.execute_script(STEPS) == []
    browser.execute_script("window.asked = []; const fetch_ = window.fetch;"
                           "window.fetch = (url, options) => { window.asked.push(String(url)); return fetch_(url, options); };")
    draw(browser, SEVEN)
    assert answer(browser) == "7"
    asked = browser.execute_script("return window.asked")
    # while the stroke is drawn only the answer is asked for; when it ends, the explanations too
    assert asked and "saliency=1" in asked[-1] and "preparation=1" in asked[-1]
    assert all("saliency" not in url for url in asked[:-1]), asked
    seven = browser.execute_script(SALIENCY)
    assert seven["target"] == "7" and seven["red"] >= 10
    assert seven["pixels"] != one["pixels"], "the saliency map did not change with the drawing"

    # a class's name chooses the class explained: why not a 1?
    browser.find_element("css selector", '.bar-row[data-index="1"] .bar-name').click()
    wait_for(browser, "document.getElementById('saliency').dataset.target === '1'")
    assert answer(browser) == "7"
    why_not = browser.execute_script(SALIENCY)
    assert why_not["pixels"] != seven["pixels"] and "Class 1 (click the predicted" in why_not["caption"]
    assert browser.execute_script("return document.querySelector('.bar-row.explained').dataset.index") == "1"
    screenshot(browser, tmp_path, "lab-draw.png", whole=True)


def test_a_confusion_cell_opens_its_test_images_and_an_image_opens_in_the_draw_view(
        browser, server, mnist_run, real_mnist, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mnistlab", "evaluate", str(mnist_run), "--data-dir", str(real_mnist),
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    open_page(browser, server, 1200, 900, scale=1)
    browser.find_element("css selector", 'nav.views a[data-view="explore"]').click()
    wait_for(browser, "document.getElementById('examples').dataset.state === 'ready'", timeout=120)
    assert browser.current_url.endswith("#explore")
    assert not browser.find_element("id", "view-draw").is_displayed()
    counts = browser.execute_script("""
        const rows = [...document.querySelectorAll('#matrix tbody tr')];
        return rows.map((r) => [...r.querySelectorAll('button.count')].map((b) => Number(b.textContent)));""")
    assert counts == cli["confusion"]  # the page's numbers are the CLI's
    accuracy = browser.execute_script("return [...document.querySelectorAll('#matrix td.acc')].map((td) => td.textContent)")
    assert accuracy == [f"{100 * a:.1f}%" if a < 1 else "100%" for a in cli["per_class_accuracy"].values()]
    assert f"test accuracy {100 * cli['accuracy']:.1f}%" in browser.find_element("id", "explore-summary").text

    # the most common mistake is open at first; then choose another cell with mistakes
    off = sorted(((n, t, p) for t, row in enumerate(cli["confusion"]) for p, n in enumerate(row) if t != p),
                 reverse=True)
    chosen = browser.execute_script("const b = document.querySelector('#matrix button.chosen');"
                                    "return [Number(b.dataset.true), Number(b.dataset.predicted)];")
    assert cli["confusion"][chosen[0]][chosen[1]] == off[0][0]
    n, t, p = off[1]
    browser.find_element("css selector", f'#matrix button[data-true="{t}"][data-predicted="{p}"]').click()
    wait_for(browser, f"document.querySelector('#matrix button.chosen').dataset.true === '{t}' && "
                      "document.getElementById('examples').dataset.state === 'ready'")
    captions = browser.execute_script(
        "return [...document.querySelectorAll('#examples .example')].map((e) => e.textContent)")
    assert len(captions) == min(n, 24)
    shown = [float(c.rsplit(": ", 1)[1].rstrip("%")) for c in captions]
    assert shown == sorted(shown, reverse=True)  # the most confidently wrong first
    assert f"{n} test image" in browser.find_element("id", "cell-summary").text
    screenshot(browser, tmp_path, "lab-explore.png", whole=True)

    first = browser.find_element("css selector", "#examples .example")
    index = first.get_attribute("data-index")
    first.click()
    assert answer(browser) == str(p)  # the network's mistake, as in the matrix
    assert browser.current_url.endswith("#draw") and browser.find_element("id", "view-draw").is_displayed()
    assert f"Test image #{index} (true class {t})" in browser.find_element("id", "source").text
    assert "already MNIST-style" in browser.find_element("id", "steps").text
    assert browser.execute_script(SALIENCY)["target"] == str(p)
    assert browser.execute_script(PANEL_STATS)["bright"] >= 20  # the test image is the input
    ink = browser.execute_script(
        "const c = document.getElementById('canvas');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let dark = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) dark++; return dark / (d.length / 4);")
    assert 0.03 < ink < 0.5  # and it is on the pad, dark on the paper

    # the back button returns to the matrix, still open on the cell
    browser.back()
    wait_for(browser, "document.body.dataset.view === 'explore'")
    assert browser.execute_script("return document.querySelector('#matrix button.chosen').dataset.predicted") == str(p)




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


GREY_AND_RGBA = """
const done = arguments[arguments.length - 1];
const b64 = async (blob) => {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let s = ''; for (const b of bytes) s += String.fromCharCode(b); return btoa(s);
};
import('/static/png.js').then(async ({ greyPng }) => {
  const c = document.createElement('canvas'); c.width = c.height = 280;
  const g = c.getContext('2d');
  g.fillStyle = '#ffffff'; g.fillRect(0, 0, 280, 280);
  g.strokeStyle = '#111111'; g.lineWidth = 21; g.lineCap = 'round'; g.lineJoin = 'round';
  g.beginPath(); g.moveTo(84, 62); g.lineTo(201, 62); g.lineTo(123, 235); g.stroke();  // a 7, antialiased
  const rgba = await new Promise((resolve) => c.toBlob(resolve, 'image/png'));
  const grey = await greyPng(c);
  g.fillStyle = '#ff0000'; g.fillRect(0, 0, 2, 2);  // a colour: only toBlob's export keeps it
  done({rgba: await b64(rgba), grey: await b64(grey), coloured: await greyPng(c)});
}).catch((e) => done({error: String(e)}));
"""


def test_the_page_sends_a_drawing_as_a_grey_png_that_is_the_same_picture_to_the_server(browser, server):
    """png.js's one-channel PNG of a canvas holds exactly the grey levels of Chromium's own RGBA export, so
    the preparation (and so the answer) is the same to the bit; a coloured canvas is left to toBlob. And
    the Draw view sends it: the body of its /api/predict request is a grey PNG."""
    import io

    import numpy as np
    from PIL import Image

    from mnistlab.base.prepare import load_image, prepare_image

    open_page(browser, server, 1200, 860, scale=1)
    got = browser.execute_async_script(GREY_AND_RGBA)
    assert "error" not in got, got
    rgba_bytes, grey_bytes = base64.b64decode(got["rgba"]), base64.b64decode(got["grey"])
    with Image.open(io.BytesIO(rgba_bytes)) as rgba, Image.open(io.BytesIO(grey_bytes)) as grey:
        assert rgba.mode == "RGBA" and grey.mode == "L" and grey.size == rgba.size == (280, 280)
        channels = np.asarray(rgba)
        levels = np.unique(channels[..., 0])
        assert len(levels) > 10, "antialiased: many grey levels, not only ink and paper"
        assert (channels[..., 3] == 255).all() and np.array_equal(np.asarray(grey), channels[..., 0])
    assert got["coloured"] is None
    assert len(grey_bytes) < len(rgba_bytes)
    assert np.array_equal(prepare_image(load_image(io.BytesIO(grey_bytes))),
                          prepare_image(load_image(io.BytesIO(rgba_bytes))))

    browser.execute_script("""
      window.sentBodies = [];
      const send = window.fetch;
      window.fetch = async (url, init) => {
        if (String(url).includes('/api/predict') && init && init.body instanceof Blob) {
          window.sentBodies.push(Array.from(new Uint8Array(await init.body.arrayBuffer()).slice(0, 26)));
        }
        return send(url, init);
      };""")
    draw(browser, SEVEN)
    assert answer(browser) == "7"
    sent = browser.execute_script("return window.sentBodies")
    assert sent and all(bytes(b[1:4]) == b"PNG" and b[25] == 0 for b in sent)  # IHDR's colour type 0: grey
