"""The local console on the cloud backend: ``serve --backend cloud``, its queues in the Cloud Tasks emulator.

One ``python -m taskutils serve console_app:app --backend cloud`` subprocess for the module
starts the Google Cloud CLI's Datastore emulator and the Cloud Tasks emulator on loopback.
The console's queue pages read the emulator's queues and tasks, its buttons act there, and
its handle pages read Cloud Datastore. Without a queue.yaml the emulator makes the queue a
task names; tasks added with a countdown of an hour wait there. Outside CI a machine without
the Google Cloud CLI skips; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import html
import http.cookiejar
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.serving import ServeProcess

REPO = Path(__file__).resolve().parents[1]
EMULATOR_VENV = Path(os.environ.get("TASKUTILS_EMULATOR_VENV") or REPO / ".cache" / "cloudtasks-emulator-venv")
IN_CI = os.environ.get("CI", "").lower() == "true"
PROJECT = "cloud-console-test"
SECRET = "cloud-console-test-signing-key-0123456789"
CONSOLE = "/_ah/taskutils"
CHROMIUM = os.environ.get("TASKUTILS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TASKUTILS_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """serve --backend cloud with the emulators it starts, a known signing key and no queue.yaml."""
    if shutil.which("gcloud") is None:
        if IN_CI:
            pytest.fail("CI=true and the Google Cloud CLI (the Datastore emulator) is missing")
        pytest.skip("no Google Cloud CLI here: the Datastore emulator cannot run")
    folder = tmp_path_factory.mktemp("cloud-console")
    env = {
        "TASKUTILS_EMULATOR_VENV": str(EMULATOR_VENV),
        "TASKUTILS_SECRET_KEYS": SECRET,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "DATASTORE_EMULATOR_HOST": "",
        "CLOUD_TASKS_EMULATOR_HOST": "",
    }
    proc = ServeProcess("console_app:app", folder / "serve.log", "--backend", "cloud", env=env)
    try:
        yield proc.wait_ready("/ran", timeout=120)
    finally:
        proc.stop()


class Session:
    """A browser-like client of the console: its cookie, and the forms of the last page it read."""

    def __init__(self, server: ServeProcess) -> None:
        self.server = server
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.page = ""

    def open(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(self.server.base + CONSOLE + path, timeout=30) as answer:
                status, self.page = answer.status, answer.read().decode()
        except urllib.error.HTTPError as e:
            status, self.page = e.code, e.read().decode()
        return status, self.page

    def press(self, action: str) -> str:
        """Submit the form of the last page whose action ends with action; the page it leads to."""
        forms = re.findall(r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', self.page, re.S)
        found = [(a, body) for a, body in forms if html.unescape(a).endswith(action)]
        assert found, f"no form for {action} on the page:\n{self.page}"
        target, body = found[0]
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body))
        data = urllib.parse.urlencode({k: html.unescape(v) for k, v in fields.items()}).encode()
        with self.opener.open(self.server.base + html.unescape(target), data=data, timeout=30) as answer:
            self.page = answer.read().decode()  # the 303 is followed to the queue's page
        return self.page


def _enqueue(server: ServeProcess, kind: str, key: str, **query: object) -> str:
    params = urllib.parse.urlencode({"key": key, **query})
    return str(server.post(f"/enqueue/{kind}?{params}")["name"])


def _listed(page: str) -> str:
    """The table of a queue's tasks on its page ("" when it lists none)."""
    found = re.search(r'<table class="tasks">.*?</table>', page, re.S)
    return found.group(0) if found else ""


def _ran(server: ServeProcess, key: str) -> int:
    return int(server.get("/ran").get(key, 0))


def test_the_queue_page_lists_a_task_waiting_in_cloud_tasks_with_its_decoded_call_and_runs_none_of_its_code(
    server: ServeProcess, tmp_path: Path
) -> None:
    loaded, shown = tmp_path / "loaded", tmp_path / "shown"
    name = _enqueue(server, "canaries", "canaries", queue="parked", countdown=3600, loaded=loaded, shown=shown)
    console = Session(server)

    status, listing = console.open("/queues/parked")
    assert status == 200, listing
    assert name in _listed(listing) and "console_app.hold" in _listed(listing)
    assert "Tasks are queued in the Cloud Tasks emulator at 127.0.0.1:" in console.open("/")[1]

    status, detail = console.open(f"/queues/parked/tasks/{name}")
    assert status == 200, detail
    assert "console_app.hold" in detail
    assert "&lt;console_app.OpensWhenShown object&gt;" in detail and "42, &#x27;plain&#x27;" in detail
    assert "signed" in detail and SECRET not in detail
    assert not loaded.exists() and not shown.exists()


def test_run_now_runs_the_emulators_task_before_its_eta_and_it_leaves_the_queue(server: ServeProcess) -> None:
    name = _enqueue(server, "record", "run-now", queue="parked", countdown=3600)
    console = Session(server)
    console.open("/queues/parked")
    assert name in _listed(console.page) and _ran(server, "run-now") == 0

    after = console.press(f"/queues/parked/tasks/{name}/run")

    assert f"Task {name} will run now." in after
    server.wait_for(lambda: _ran(server, "run-now") == 1, f"{name} to run after Run now")
    server.wait_for(lambda: name not in _listed(console.open("/queues/parked")[1]), f"{name} to leave the queue")


def test_delete_removes_the_emulators_task_and_it_never_runs(server: ServeProcess) -> None:
    name = _enqueue(server, "record", "deleted", queue="doomed", countdown=3600)
    kept = _enqueue(server, "record", "kept", queue="doomed", countdown=3600)
    console = Session(server)
    console.open("/queues/doomed")

    after = console.press(f"/queues/doomed/tasks/{name}/delete")

    assert f"Task {name} was deleted: it will not run." in after
    assert name not in _listed(after) and kept in _listed(after)
    status, page = console.open(f"/queues/doomed/tasks/{name}")
    assert status == 404 and "No task named" in page
    console.open(f"/queues/doomed/tasks/{kept}")
    console.press(f"/queues/doomed/tasks/{kept}/run")  # the queue still posts: only the deleted task is gone
    server.wait_for(lambda: _ran(server, "kept") == 1, f"{kept} to run")
    assert _ran(server, "deleted") == 0


def test_purge_asks_first_then_empties_the_emulators_queue(server: ServeProcess) -> None:
    names = [_enqueue(server, "record", f"purged-{i}", queue="purged", countdown=3600) for i in range(2)]
    console = Session(server)
    status, confirm = console.open("/queues/purged/purge")
    assert status == 200 and "2 waiting tasks will be deleted" in confirm

    after = console.press("/queues/purged/purge")

    assert "Queue purged was purged" in after
    assert all(name not in _listed(after) for name in names)
    assert "No task waiting." in console.open("/queues/purged")[1]


def test_a_failing_task_shows_its_retries_and_error_line_and_delete_stops_its_retries(server: ServeProcess) -> None:
    name = _enqueue(server, "fail", "failing", queue="failing")
    console = Session(server)
    server.wait_for(lambda: _ran(server, "failing") >= 2, f"{name} to fail twice")

    def shown() -> str:
        table = _listed(console.open("/queues/failing")[1])
        return table if "RuntimeError: boom failing" in table else ""

    row = server.wait_for(shown, f"{name} with its error line")
    retries = re.search(r'<span class="num retries">(\d+)</span>', row)
    assert retries and int(retries.group(1)) >= 1, row
    assert "500" in row and "Retry" in row and "Run now" not in row

    console.press(f"/queues/failing/tasks/{name}/delete")

    settled = _ran(server, "failing")
    time.sleep(1.0)  # the emulator posts a failing task again about every 0.1 s
    assert _ran(server, "failing") <= settled + 1  # one attempt may have been in flight
    assert name not in _listed(console.open("/queues/failing")[1])


def test_a_handles_page_shows_its_state_and_result_from_cloud_datastore(server: ServeProcess) -> None:
    submitted = server.post("/handle?key=shown")
    console = Session(server)

    def finished() -> bool:
        status, page = console.open(f"/handles/run/{submitted['id']}")
        return status == 200 and "succeeded" in page

    server.wait_for(finished, "the handle to succeed", timeout=60)
    page = console.page
    assert "console_app.child" in page
    assert "&#x27;SHOWN&#x27;" in page  # child() returns its item in upper case
    assert submitted["then"] in page  # the callback that follows it
    listing = console.open("/handles")[1]
    assert submitted["id"] in listing
    for no_such in ("missing", "g" * 1501, "a.b.c", "%00"):
        assert console.open(f"/handles/run/{no_such}")[0] == 404, no_such
        assert console.open(f"/handles/{no_such}")[0] == 404, no_such


def test_a_groups_page_shows_its_children_and_progress_from_cloud_datastore(server: ServeProcess) -> None:
    group = server.post("/group?key=grouped&n=3")["id"]
    console = Session(server)

    def finished() -> bool:
        status, page = console.open(f"/handles/{group}")
        return status == 200 and "succeeded" in page and "3/3" in page

    server.wait_for(finished, "the group to finish", timeout=60)
    assert all(f"{group}.{i}" in console.page for i in range(3))


def test_the_cloud_queue_page_in_a_headless_browser_lists_the_task_and_deletes_it(
    server: ServeProcess, tmp_path: Path
) -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.isfile(path)]
    if missing:
        if IN_CI:
            pytest.fail(f"CI=true and the browser test cannot run: {', '.join(missing)} missing")
        pytest.skip(f"no browser to drive: {', '.join(missing)} missing")
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    name = _enqueue(server, "record", "browsed", queue="browsed", countdown=3600)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver: Any = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        driver.get(server.base + CONSOLE + "/")
        driver.find_element(By.LINK_TEXT, "browsed").click()
        # Each click loads a new page: read it only once it is there (an element of the old one goes stale).
        wait = WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Queue browsed")
        [row] = [r for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr") if name in r.text]
        assert "console_app.record" in row.text
        driver.save_screenshot(str(tmp_path / "cloud-queue.png"))

        [delete] = [b for b in row.find_elements(By.TAG_NAME, "button") if b.text == "Delete"]
        delete.click()
        wait.until(lambda d: "was deleted" in d.find_element(By.TAG_NAME, "main").text)
        assert name not in driver.find_element(By.TAG_NAME, "main").text.replace(f"Task {name} was deleted", "")
    finally:
        driver.quit()
    assert _ran(server, "browsed") == 0
