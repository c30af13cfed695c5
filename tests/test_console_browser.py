"""The web console in a real headless Chromium, against the real server.

The console runs in uvicorn on 127.0.0.1 (a free port, in a thread) over a SQLite
store holding real runs (``console_flows.seed``); Selenium drives Debian's
``chromium`` through ``chromedriver``. Without them these tests skip on a
developer's machine and fail in CI (``CI`` set), where ``.ci/run`` installs them.

Set ``STEPFLOW_SCREENSHOTS`` to a directory to keep the pages' screenshots there
(the docs' images are made so: see docs/operating.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from console_flows import XSS, seed, shop
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

import stepflow
from stepflow.console import create_app
from stepflow.stores import SQLiteStore, Store

TOKEN = "browser-test-token"


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if chromium is None or driver_path is None:
        message = (
            "the browser tests need Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = Options()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """A console served by uvicorn in a thread, and the store under it."""

    def __init__(self, store: Store, *, token: str | None = None) -> None:
        self.store = store
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        app = create_app(store, [shop], token=token, allowed_hosts=["127.0.0.1"])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Console:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = SQLiteStore(tmp_path / "runs.db")
    yield opened
    opened.close()


@pytest.fixture
def console(store: Store) -> Iterator[Console]:
    seed(store)
    with Console(store) as served:
        yield served


@pytest.fixture
def guarded(store: Store, browser: WebDriver) -> Iterator[Console]:
    seed(store)
    with Console(store, token=TOKEN) as served:
        yield served
    browser.delete_all_cookies()


def _wait(browser: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 10) -> Any:
    # A page being replaced (a form posted, a live update swapping a table) can
    # leave a found element stale mid-condition: that is "not yet", not a failure.
    waiting = WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(condition)


def _rows(browser: WebDriver) -> list[str]:
    # One script, so that a live update swapping the table cannot interleave.
    return browser.execute_script(  # type: ignore[no-any-return]
        "return Array.from(document.querySelectorAll('#runs tbody tr'), r => r.dataset.run);"
    )


def _no_alert(browser: WebDriver) -> bool:
    try:
        browser.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return True
    return False


def _screenshot(browser: WebDriver, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("STEPFLOW_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / path.name)


def test_the_runs_page_lists_runs_and_filters_them(
    browser: WebDriver, console: Console, tmp_path: Path
) -> None:
    browser.get(f"{console.base}/runs")
    assert _rows(browser) == ["other-1", "wait-1", "fail-1", "done-2", "done-1"]
    _screenshot(browser, "console-runs", tmp_path)
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("failed")
    browser.find_element(By.ID, "filter-apply").click()
    _wait(browser, lambda b: _rows(b) == ["fail-1"])
    assert "status=failed" in browser.current_url
    browser.find_element(By.CSS_SELECTOR, '#counts a[data-status="completed"]').click()
    _wait(browser, lambda b: _rows(b) == ["done-2", "done-1"])
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("")
    browser.find_element(By.ID, "filter-prefix").send_keys("wait")
    browser.find_element(By.ID, "filter-apply").click()
    _wait(browser, lambda b: _rows(b) == ["wait-1"])
    Select(browser.find_element(By.ID, "filter-flow")).select_by_value("shop/v1")
    browser.find_element(By.ID, "filter-prefix").clear()
    browser.find_element(By.ID, "filter-apply").click()
    _wait(browser, lambda b: _rows(b) == ["wait-1", "fail-1", "done-2", "done-1"])


def test_the_runs_page_updates_live_without_a_reload(browser: WebDriver, console: Console) -> None:
    browser.get(f"{console.base}/runs?status=running")
    assert _rows(browser) == ["other-1", "wait-1"]
    browser.execute_script("window.stillThisPage = true;")
    stepflow.start_run(console.store, shop, {"app": "late"}, run_id="late-1")
    _wait(browser, lambda b: _rows(b) == ["late-1", "other-1", "wait-1"])
    assert browser.execute_script("return window.stillThisPage === true;")
    count = browser.find_element(By.CSS_SELECTOR, '#counts a[data-status="running"] .n')
    assert count.text == "3"


def _node_fill(browser: WebDriver, node_id: str) -> str | None:
    """The fill of the Graphviz node whose title is ``node_id``, as drawn."""
    return browser.execute_script(  # type: ignore[no-any-return]
        """
        for (const g of document.querySelectorAll('#diagram svg g.node')) {
          const title = g.querySelector('title');
          if (title && title.textContent === arguments[0]) {
            const shape = g.querySelector('path, polygon, ellipse');
            return shape ? shape.getAttribute('fill') : null;
          }
        }
        return null;
        """,
        node_id,
    )


def test_a_run_page_shows_the_diagram_with_its_position_and_the_timeline(
    browser: WebDriver, console: Console, tmp_path: Path
) -> None:
    browser.get(f"{console.base}/runs/fail-1")
    assert browser.find_element(By.ID, "position").text == "againRetry/flaky"
    assert _node_fill(browser, "step_againRetry_flaky") == "#fecaca"  # failed here
    assert _node_fill(browser, "step_fetch") in ("none", "#ffffff", "white", None)
    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline g.bar")
    assert [bar.get_attribute("data-outcome") for bar in bars] == ["returned", "raised", "raised"]
    assert all(bar.find_element(By.CSS_SELECTOR, "rect").size["width"] > 0 for bar in bars)
    steps = browser.find_elements(By.CSS_SELECTOR, "#steps tbody tr")
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in steps]
    assert [(c[0], c[4], c[5]) for c in cells] == [
        ("do fetch", "-", "returned"),
        ("do againRetry/flaky", "1", "raised"),
        ("do againRetry/flaky", "2", "raised"),
    ]
    assert "boom <b>not bold</b>" in cells[2][6]
    _screenshot(browser, "console-run", tmp_path)
    browser.get(f"{console.base}/runs/wait-1")
    assert _node_fill(browser, "step_fetch") == "#fde68a"  # running, waiting here


def test_an_xss_payload_in_an_output_stays_inert(browser: WebDriver, console: Console) -> None:
    for path in ("/runs/done-1", "/runs", "/flows"):
        browser.get(f"{console.base}{path}")
        _wait(browser, lambda b: b.execute_script("return document.readyState") == "complete")
        assert _no_alert(browser)
    browser.get(f"{console.base}/runs/done-1")
    time.sleep(0.5)  # time for an onerror handler to have fired, were there one
    assert _no_alert(browser)
    outputs = browser.find_element(By.ID, "outputs").text
    assert "<script>alert('xss')</script>" in outputs
    assert "onerror" in outputs
    injected = browser.execute_script(
        "return document.querySelectorAll('#outputs script, #outputs img, #steps img').length"
    )
    assert injected == 0
    assert XSS.split("<img")[0] in browser.find_element(By.ID, "steps").text


def test_an_action_works_with_the_token_and_is_refused_without_it(
    browser: WebDriver, guarded: Console
) -> None:
    browser.get(f"{guarded.base}/runs/wait-1")
    assert "Token required" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(f"{guarded.base}/runs/wait-1?token={TOKEN}")
    assert browser.current_url == f"{guarded.base}/runs/wait-1"  # the token left the URL
    browser.find_element(By.ID, "cancel-reason").send_keys("from the browser")
    browser.find_element(By.ID, "action-cancel").click()
    _wait(browser, lambda b: b.find_elements(By.ID, "done"))
    assert browser.find_element(By.ID, "done").text.startswith("Cancellation sent")
    (pending,) = guarded.store.pending_events("wait-1", limit=5)
    assert pending.payload == "from the browser"
    # The same form without the token: refused, and the run is left as it was.
    browser.get(f"{guarded.base}/runs/fail-1")
    browser.delete_cookie("stepflow_token")
    browser.find_element(By.ID, "action-cancel").click()
    _wait(browser, lambda b: "Token required" in b.find_element(By.TAG_NAME, "h1").text)
    assert guarded.store.load("fail-1").status == "failed"
