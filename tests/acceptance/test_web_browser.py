"""The status page in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by selenium): it loads, shows a task that just ran, a trigger from the page makes
the task run, and it fits a phone's screen.

Skipped without a browser, except under `CRONLOOP_REQUIRE_BROWSER=1` (CI), where a
missing browser fails. Every wait is bounded (WebDriverWait, the worker's log lines).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.acceptance.conftest import Cli
from tests.acceptance.test_web import TOKEN, start_web
from tests.support.http import browser_gate, browser_required

PAGE_WAIT_S = 15.0


@pytest.fixture
def browser() -> Iterator[Any]:
    gate = browser_gate()
    if isinstance(gate, str):
        if browser_required():
            pytest.fail(f"CRONLOOP_REQUIRE_BROWSER=1 but {gate}")
        pytest.skip(gate)
    chromium, driver_path = gate
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(PAGE_WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _cell(driver: Any, task: str, label: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(
        By.CSS_SELECTOR, f'tr[data-task="{task}"] td[data-label="{label}"]'
    )
    return str(found[0].text) if found else ""


def test_the_page_shows_a_run_and_triggers_a_task(sqlite_cli: Cli, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    worker, listen = start_web(sqlite_cli, "quick,boom")
    worker.wait_for("run finished", task="quick")
    browser.set_window_size(390, 844)  # a phone
    browser.get(f"http://{listen}/")
    wait = WebDriverWait(browser, PAGE_WAIT_S)
    wait.until(lambda d: _cell(d, "quick", "Last outcome") == "success")
    assert _cell(browser, "boom", "Last outcome") == "failed"
    assert browser.find_elements(By.CSS_SELECTOR, "#history tr"), "the recent runs are shown"
    width = browser.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert width[0] <= width[1], f"wider than the phone's screen: {width}"
    assert not browser.find_elements(By.CSS_SELECTOR, "button[data-action]"), "no token yet"

    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#tokenform button").click()
    trigger = wait.until(
        lambda d: d.find_elements(
            By.CSS_SELECTOR, 'tr[data-task="quick"] button[data-action="trigger"]'
        )
    )
    mark = worker.mark()
    trigger[0].click()
    worker.wait_for("run finished", task="quick", since=mark)
    wait.until(lambda d: "quick: trigger done" in d.find_element(By.ID, "msg").text)
    wait.until(lambda d: _cell(d, "quick", "Running") == "no")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
