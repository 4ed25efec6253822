"""The lab's Train and Runs views end to end in a real headless browser: `mnistlab serve FOLDER` on an
empty folder, a learner trains the notebook's network on real MNIST from the page and watches its loss
curve gain points live, compares two learning rates, draws on the new model, opens a confusion cell,
and reads the Runs view; every number the page shows is checked against the CLI's. At a phone's width,
nothing scrolls sideways.

Needs what test_browser.py needs (real MNIST, chromium, chromedriver, selenium). Set
MNISTLAB_LAB_FIGURES=docs/figures to write the Train and Runs views there (lab-train.png, lab-runs.png).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
from mnistlab.core import runs as runs_module
from test_browser import SEVEN, answer, browser, draw, screenshot, wait_for  # noqa: F401 (browser: a fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def server(folder, real_mnist):
    """`mnistlab serve FOLDER` on an empty folder, training on real MNIST; its address."""
    process = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(folder), "--port", "0", "--data-dir",
                                str(real_mnist), "--max-epochs", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        lines = []
        while not any("open http" in line for line in lines) and len(lines) < 10:
            lines.append(process.stdout.readline())
        match = re.search(r"http://127\.0\.0\.1:\d+/", "".join(lines))
        assert match, f"no address printed: {lines!r} {process.stderr.read() if process.poll() else ''}"
        assert "no model yet" in lines[0] and "training from the page" in "".join(lines)
        with urllib.request.urlopen(match.group(0) + "api/health", timeout=30) as r:
            assert r.status == 200
        yield match.group(0)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0 and "Traceback" not in err, err


def cli(*argv) -> object:
    r = subprocess.run([sys.executable, "-m", "mnistlab", *map(str, argv), "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def setting(driver, element_id: str, value) -> None:
    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(str(value))


def legend(driver) -> dict:
    """The Train view's legend: run name -> (state, its text)."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#legend li')].map((li) => "
        "[li.dataset.name, [li.dataset.state, li.textContent.replaceAll('\\u200b', '')]]));")


def points(driver, chart: str) -> int:
    return int(driver.execute_script(f"return document.getElementById('{chart}').dataset.points || 0"))


def test_a_learner_trains_watches_it_learn_compares_rates_draws_on_it_and_opens_its_mistakes(
        browser, server, folder, real_mnist, tmp_path):  # noqa: F811
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
    browser.get(server)
    # No model yet: the page opens on Train.
    wait_for(browser, "document.body.dataset.view === 'train' && document.querySelectorAll('#t-recipe option').length")
    assert browser.execute_script("return document.getElementById('t-recipe').value") == "seed"
    assert browser.execute_script("return document.getElementById('t-lr').value") == "0.003"  # the notebook's

    # The notebook's network, with a livelier rate, three epochs on all of MNIST.
    setting(browser, "t-lr", "0.05")
    setting(browser, "t-epochs", "3")
    browser.find_element("id", "t-start").click()
    wait_for(browser, "document.querySelector('#legend li[data-name=\"seed-mnist\"]')?.dataset.state === 'running'",
             timeout=120)
    seen = [points(browser, "loss-chart")]
    while legend(browser)["seed-mnist"][0] == "running":  # the curve gains points while it trains
        wait_for(browser, f"document.getElementById('loss-chart').dataset.points > {seen[-1]} || "
                          "document.querySelector('#legend li[data-name=\"seed-mnist\"]').dataset.state !== 'running'",
                 timeout=120)
        seen.append(points(browser, "loss-chart"))
    assert len(set(seen)) >= 3, seen  # it grew several times, live
    wait_for(browser, "document.querySelector('#legend li[data-name=\"seed-mnist\"]').dataset.state === 'finished'")
    assert points(browser, "loss-chart") > 3  # the running loss within epochs, not only their ends
    assert points(browser, "acc-chart") == 3
    runs = {r["name"]: r for r in cli("runs", folder)}
    shown = legend(browser)["seed-mnist"][1]
    assert f"test {100 * runs['seed-mnist']['test_accuracy']:.2f}%" in shown, shown  # the CLI's numbers
    last = runs_module.read_metrics(folder / "seed-mnist")[-1]
    assert f"epoch 3/3 · loss {last['train_loss']:.4f}" in shown, shown  # as `train` prints it
    assert "lr 0.05 · batch 64 · 128-64 · sgd · shifts off" in shown

    # Two learning rates side by side, as one batched group.
    browser.find_element("id", "t-compare").click()
    setting(browser, "t-lrs", "0.01, 0.1")
    setting(browser, "t-epochs", "2")
    browser.find_element("id", "t-start").click()
    members = ["seed-mnist-lrs/runs/lr0.01", "seed-mnist-lrs/runs/lr0.1"]
    for name in members:
        wait_for(browser, f"document.querySelector('#legend li[data-name=\"{name}\"]')?.dataset.state === 'finished'",
                 timeout=300)
    assert points(browser, "acc-chart") == 3 + 2 + 2
    runs = {r["name"]: r for r in cli("runs", folder)}
    for name in members:
        assert f"test {100 * runs[name]['test_accuracy']:.2f}%" in legend(browser)[name][1]
    screenshot(browser, tmp_path, "lab-train.png", whole=True)

    # Draw on the first run, without restarting the server.
    browser.find_element("css selector", '#legend li[data-name="seed-mnist"] .actions button:nth-of-type(1)').click()
    wait_for(browser, "document.body.dataset.view === 'draw'")
    assert browser.execute_script("return document.getElementById('model').value") == "seed-mnist"
    draw(browser, SEVEN)
    assert answer(browser) == "7"

    # Its mistakes: the confusion matrix is evaluate's, and a cell opens onto its test images.
    evaluated = cli("evaluate", folder / "seed-mnist", "--data-dir", real_mnist)
    browser.find_element("css selector", 'nav.views a[data-view="explore"]').click()
    wait_for(browser, "document.getElementById('examples').dataset.state === 'ready'", timeout=120)
    counts = browser.execute_script("""
        return [...document.querySelectorAll('#matrix tbody tr')].map((r) =>
            [...r.querySelectorAll('button.count')].map((b) => Number(b.textContent)));""")
    assert counts == evaluated["confusion"]
    assert browser.execute_script("return document.querySelectorAll('#examples .example').length") > 0

    # The Runs view: every run, with mnistlab runs' numbers, and their curves.
    browser.find_element("css selector", 'nav.views a[data-view="runs"]').click()
    wait_for(browser, "document.querySelectorAll('#runs-table tbody tr[data-name]').length === 3")
    table = browser.execute_script("""
        return [...document.querySelectorAll('#runs-table tbody tr[data-name]')].map((tr) => ({
            name: tr.dataset.name, state: tr.querySelector('.state').textContent,
            epochs: tr.querySelector('.epochs').textContent, acc: tr.querySelector('.acc').textContent,
            time: tr.querySelector('.time').textContent}));""")
    assert table == [{"name": n, "state": r["state"], "epochs": f"{r['epochs']}/{r['total_epochs']}",
                      "acc": f"{100 * r['test_accuracy']:.2f}%", "time": f"{r['train_seconds']:.1f} s"}
                     for n, r in sorted(runs.items())]
    assert points(browser, "runs-acc-chart") == 7
    screenshot(browser, tmp_path, "lab-runs.png", whole=True)


def test_at_a_phones_width_train_and_runs_are_one_column_without_sideways_scrolling(browser, server):  # noqa: F811
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})
    browser.get(server + "#train")
    wait_for(browser, "document.querySelectorAll('#t-recipe option').length > 0")
    wait_for(browser, "document.getElementById('loss-chart').dataset.points !== undefined")
    layout = browser.execute_script("""
        const box = (s) => document.querySelector(s).getBoundingClientRect();
        return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth, settings: box('.settings-card'),
                curves: box('.curves-card'), start: box('#t-start'), chart: box('#loss-chart')};""")
    assert layout["scroll"] <= layout["inner"], "the Train view scrolls sideways"
    assert layout["curves"]["top"] >= layout["settings"]["bottom"] - 1  # stacked
    assert layout["start"]["height"] >= 44 and layout["chart"]["right"] <= layout["inner"]
    browser.find_element("css selector", 'nav.views a[data-view="runs"]').click()
    wait_for(browser, "document.getElementById('runs-summary').textContent.length > 0")
    runs = browser.execute_script("""
        return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
                table: document.getElementById('runs-table').getBoundingClientRect().right};""")
    assert runs["scroll"] <= runs["inner"] and runs["table"] <= runs["inner"], "the Runs view scrolls sideways"
