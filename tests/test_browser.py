"""The app as a person uses it: Playwright drives Debian's Chromium against the app on
loopback, visits every tab, runs one action per tab on the default model, checks that the
outputs and Plotly plots rendered, and saves a screenshot per tab under test-output/.

Needs the `playwright` Python package and a Chromium binary (`apt-get install chromium`,
or $WORKBENCH_CHROMIUM); skips with the reason when either is missing."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
OUT = Path(__file__).resolve().parents[1] / "test-output"
WAIT_MS = 420_000  # the default model on a busy 2-core CPU

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set WORKBENCH_CHROMIUM)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (test extra)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(smol, tmp_path_factory):
    from apps._common import Registry
    from apps.app import build_app, launch

    reg = Registry()
    reg.add("smollm2-135m", smol)
    demo = build_app("smollm2-135m", [tmp_path_factory.mktemp("allowed")], registry=reg)
    port = _free_port()
    launch(demo, "127.0.0.1", port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def page(url):
    OUT.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.set_default_timeout(WAIT_MS)
        pg.goto(url)
        pg.get_by_text("Latent Workbench").first.wait_for()
        yield pg
        browser.close()


def _tab(page, title: str) -> None:
    page.get_by_role("tab", name=title, exact=True).click()


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(value)
    box.press("Tab")


def _plot(page, elem_id: str) -> None:
    page.locator(f"#{elem_id} .js-plotly-plot").first.wait_for(state="visible")
    assert page.locator(f"#{elem_id} .js-plotly-plot .main-svg").count() >= 1


def _shot(page, name: str) -> None:
    page.screenshot(path=str(OUT / f"app-{name}.png"), full_page=True)


def test_model_tab(page):
    page.wait_for_function("document.querySelector('#model-summary') && document.querySelector('#model-summary').innerText.includes('576')")
    _fill(page, "model-max-new", "8")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function("document.querySelector('#model-generation textarea').value.length > 3")
    assert "full_attention" in page.locator("#model-layers").inner_text()
    _shot(page, "model")


def test_steering_tab(page):
    _tab(page, "Steering")
    page.get_by_role("button", name="Extract", exact=True).click()
    page.wait_for_function("document.querySelector('#steer-info').innerText.includes('layers [15]')")
    _fill(page, "steer-max-new", "8")
    page.get_by_role("button", name="Generate side by side").click()
    page.wait_for_function("document.querySelector('#steer-kl').innerText.includes('nats')")
    plain = page.locator("#steer-plain textarea").input_value()
    steered = page.locator("#steer-steered textarea").input_value()
    assert plain and steered and plain != steered
    _shot(page, "steering")


def test_sinks_tab(page):
    _tab(page, "Prefix & Sinks")
    page.get_by_role("button", name="Inspect sinks").click()
    for plot in ("sinks-heatmap", "sinks-rate", "sinks-norm", "sinks-prefix"):
        _plot(page, plot)
    assert "sink rate" in page.locator("#sinks-summary").inner_text()
    _shot(page, "sinks")


def test_latent_tab(page):
    _tab(page, "Latent reasoning")
    _fill(page, "latent-steps", "3")
    _fill(page, "latent-max-new", "8")
    page.get_by_role("button", name="Run", exact=True).click()
    _plot(page, "latent-trajectory")
    for plot in ("latent-entropy", "latent-bars"):
        _plot(page, plot)
    assert page.locator("#latent-cot textarea").input_value()
    _shot(page, "latent")


def test_training_tab(page):
    _tab(page, "Training")
    page.get_by_text("Training", exact=False).first.wait_for()
    _shot(page, "training")
