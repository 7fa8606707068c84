"""The console's Controls page (``/_ah/taskutils/controls``) in a real headless Chromium against a real ``serve``:
who holds which lease, until when, and the periodic jobs with their last and next slot."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.serving import ServeProcess

CHROMIUM = os.environ.get("TASKUTILS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TASKUTILS_CHROMEDRIVER", "/usr/bin/chromedriver")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing() -> list[str]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.isfile(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return missing


if _missing() and not IN_CI:
    pytest.skip(f"no browser to drive: {', '.join(_missing())} missing", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("console-controls")
    log = folder / "runs.jsonl"
    env = {"CONTROLS_LOG": str(log), "CONTROLS_HOLD": "1"}
    proc = ServeProcess("controls_app:app", folder / "serve.log", "--grace", "1", env=env)
    try:
        proc.wait_ready()
        proc.post("/call?fn=stuck&args=[0]")  # holds the "stuck" key until serve stops

        def holding() -> Any:
            lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            return [r for r in lines if r["fn"] == "stuck"] and [r for r in lines if r["fn"] == "tick"]

        proc.wait_for(holding, "the holder starts and the periodic job runs", 30)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _missing()
    if missing:
        pytest.fail(f"CI=true and the browser tests cannot run: {', '.join(missing)} missing")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def row(driver: Any, text: str) -> list[str]:
    rows = [r for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr") if text in r.text]
    assert rows, f"no row with {text!r}:\n{driver.find_element(By.TAG_NAME, 'main').text}"
    return [cell.text for cell in rows[0].find_elements(By.TAG_NAME, "td")]


def test_the_controls_page_shows_who_holds_which_lease_and_the_periodic_jobs(browser, server, tmp_path: Path):
    browser.get(server.base + "/_ah/taskutils/")
    browser.find_element(By.LINK_TEXT, "Controls").click()
    browser.save_screenshot(str(tmp_path / "controls.png"))

    assert browser.find_element(By.TAG_NAME, "h1").text == "Leases and periodic jobs"
    key, holder, limit, since, until = row(browser, "stuck")
    assert key == "stuck" and holder.startswith("task") and limit == "1"
    assert "UTC" in since and "in " in until  # held now, until its deadline plus margin
    job, schedule, last, upcoming = row(browser, "controls_app/tick")
    assert schedule == "every 1 minutes"
    assert "UTC" in last and ("in " in upcoming or "(now)" in upcoming)  # "now": read at the slot's turn
